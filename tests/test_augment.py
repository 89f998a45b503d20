"""Tests for ssl_jax.augment: determinism, ranges, shapes, identities, jit."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import augment


def _images(b=4, h=16, w=16, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, w, c), np.uint8)


def _key(i=0):
  return jax.random.PRNGKey(i)


# Jitted once per (policy, shape): one compile beats many eager op dispatches.
_apply = jax.jit(augment.apply, static_argnums=0, static_argnames="out_size")


def test_presets_registered_and_default():
  assert {"medical_safe", "simclr", "none"} <= set(augment.names())
  assert augment.DEFAULT == "medical_safe"
  assert augment.get() == augment.POLICIES.get("medical_safe")
  assert augment.get("medical_safe").crop_min_area >= 0.5
  for name in augment.names():
    assert augment.get(name).description


def test_get_overrides():
  p = augment.get("simclr", hue=0.0, crop_aspect=[0.5, 2])
  assert p.hue == 0.0 and p.crop_aspect == (0.5, 2.0)
  assert augment.get("simclr").hue == 0.1  # preset untouched
  hash(p)


def test_unknown_preset_lists_allowed():
  with pytest.raises(KeyError, match="medical_safe.*none.*simclr"):
    augment.get("xray_unsafe")


def test_unknown_override_names_field_and_allowed():
  with pytest.raises(ValueError, match="crop_min_aera.*allowed:.*crop_min_area"):
    augment.get("medical_safe", crop_min_aera=0.3)


def test_invalid_values_rejected():
  with pytest.raises(ValueError):
    augment.Policy(crop_min_area=0.0)
  with pytest.raises(ValueError):
    augment.Policy(hflip_prob=1.5)


def test_determinism_and_key_dependence():
  x = _images()
  p = augment.get("simclr")
  a = _apply(p, _key(1), x)
  b = _apply(p, _key(1), x)
  c = _apply(p, _key(2), x)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_range_dtype_and_shapes():
  x = _images(b=3, h=20, w=24, c=3)
  y = _apply(augment.get("medical_safe"), _key(), x)
  assert y.dtype == jnp.float32 and y.shape == (3, 20, 24, 3)
  for name in augment.names():
    z = _apply(augment.get(name), _key(), x, out_size=12)
    assert z.dtype == jnp.float32 and z.shape == (3, 12, 12, 3)
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0


def test_grayscale_stays_grayscale():
  x = _images(c=1)
  y = _apply(augment.get("simclr"), _key(), x)
  assert y.shape == x.shape[:3] + (1,)
  colour_only = augment.Policy(saturation=0.9, hue=0.5, grayscale_prob=1.0)
  np.testing.assert_array_equal(_apply(colour_only, _key(), x),
                                augment.to_float(x))


def test_colour_ops_change_rgb():
  x = _images(c=3)
  colour_only = augment.Policy(saturation=0.9, hue=0.5)
  assert not np.allclose(_apply(colour_only, _key(), x),
                         augment.to_float(x), atol=1e-3)


def test_grayscale_prob_one_gives_equal_channels():
  y = _apply(augment.Policy(grayscale_prob=1.0), _key(), _images())
  np.testing.assert_allclose(y[..., 0], y[..., 2], atol=1e-6)


def test_none_is_exactly_to_float():
  x = _images(c=3)
  np.testing.assert_array_equal(
      _apply(augment.get("none"), _key(), x), augment.to_float(x))


def test_full_area_crop_is_identity():
  x = _images()
  p = augment.Policy(crop_min_area=1.0, crop_max_area=1.0)
  # Force the crop path: same size resample of a full-area box.
  y = jax.jit(jax.vmap(lambda im, k: augment.random_resized_crop(
      im, k, min_area=1.0, max_area=1.0, aspect=p.crop_aspect,
      out_hw=(16, 16))))(augment.to_float(x), jax.random.split(_key(), 4))
  np.testing.assert_allclose(y, augment.to_float(x), atol=1e-6)
  np.testing.assert_allclose(_apply(p, _key(), x), augment.to_float(x),
                             atol=1e-6)


def test_hflip_is_exact():
  x = _images()
  y = _apply(augment.Policy(hflip_prob=1.0), _key(), x)
  np.testing.assert_array_equal(y, augment.to_float(x)[:, :, ::-1])
  y = _apply(augment.Policy(vflip_prob=1.0), _key(), x)
  np.testing.assert_array_equal(y, augment.to_float(x)[:, ::-1])


def test_rot90_is_a_rotation():
  x = _images(b=16)
  y = np.asarray(_apply(augment.Policy(rot90=True), _key(), x))
  xf = np.asarray(augment.to_float(x))
  ks = []
  for yi, xi in zip(y, xf):
    match = [k for k in range(4) if np.array_equal(yi, np.rot90(xi, k))]
    assert match
    ks.append(match[0])
  assert len(set(ks)) > 1


def test_crop_box_respects_area_and_aspect():
  keys = jax.random.split(_key(), 2000)
  top, left, h, w = jax.jit(jax.vmap(lambda k: augment.crop_box(
      k, min_area=0.3, max_area=0.8, aspect=(3 / 4, 4 / 3))))(keys)
  area, ratio = h * w, w / h
  assert float(area.min()) >= 0.3 - 1e-5 and float(area.max()) <= 0.8 + 1e-5
  assert float(ratio.min()) >= 0.75 - 1e-5 and float(ratio.max()) <= 4 / 3 + 1e-5
  assert float(top.min()) >= 0 and float((top + h).max()) <= 1 + 1e-6
  assert float(left.min()) >= 0 and float((left + w).max()) <= 1 + 1e-6


def test_crop_keeps_most_of_a_half_bright_image():
  x = np.zeros((64, 32, 32, 1), np.uint8)
  x[:, :, :16] = 255
  y = _apply(augment.Policy(crop_min_area=0.9), _key(), x)
  means = np.asarray(y.mean(axis=(1, 2, 3)))
  # >= 90% area, crop in the image: at most ~5% of the width shifts.
  assert np.all(np.abs(means - 0.5) < 0.08)
  wide = _apply(augment.Policy(crop_min_area=0.08), _key(), x)
  assert np.abs(np.asarray(wide.mean(axis=(1, 2, 3))) - 0.5).max() > 0.2


def test_blur_keeps_constant_and_smooths_noise():
  p = augment.Policy(blur_prob=1.0, blur_sigma=(1.5, 2.0))
  const = np.full((2, 40, 40, 3), 100, np.uint8)
  np.testing.assert_allclose(_apply(p, _key(), const), 100 / 255,
                             atol=1e-5)
  noise = _images(b=2, h=40, w=40)
  y = _apply(p, _key(), noise)
  assert float(y.var()) < 0.5 * float(augment.to_float(noise).var())
  np.testing.assert_allclose(float(y.mean()),
                             float(augment.to_float(noise).mean()), atol=0.02)


def test_solarize_and_jitter_probabilities():
  x = _images()
  y = _apply(augment.Policy(solarize_prob=1.0), _key(), x)
  xf = augment.to_float(x)
  np.testing.assert_allclose(y, jnp.where(xf < 0.5, xf, 1 - xf))
  off = augment.Policy(brightness=0.5, contrast=0.5, jitter_prob=0.0)
  np.testing.assert_array_equal(_apply(off, _key(), x), xf)


def test_works_inside_jit():
  x = _images()
  p = augment.get("simclr")

  @jax.jit
  def step(rng, images):
    v1, v2 = augment.two_views(p, rng, images, out_size=8)
    return v1 - v2

  d = step(_key(), x)
  assert d.shape == (4, 8, 8, 3) and not np.allclose(d, 0)
  # The jitted two_views equals two jitted applies on the split keys.
  k1, _ = jax.random.split(_key())
  np.testing.assert_allclose(
      step(_key(), x) + _apply(p, jax.random.split(_key())[1], x, out_size=8),
      _apply(p, k1, x, out_size=8), atol=1e-5)


def test_scales_and_eval_view():
  x = np.array([[[[0], [255]]]], np.uint8)
  np.testing.assert_array_equal(augment.to_float(x)[..., 0], [[[0.0, 1.0]]])
  np.testing.assert_array_equal(augment.eval_view(x)[..., 0], [[[-1.0, 1.0]]])
  big = _images(h=32, w=32)
  assert augment.eval_view(big, out_size=16).shape == (4, 16, 16, 3)
  assert augment.eval_view(big).dtype == jnp.float32


def test_policy_is_static_hashable():
  p = augment.get("medical_safe")
  assert hash(p) == hash(dataclasses.replace(p))


def test_crop_resampling_matches_jax_image():
  img = jnp.asarray(np.random.default_rng(0).random((40, 40, 2)), jnp.float32)

  @jax.jit
  def both(start, length):
    out = 24
    taps = augment._linear_taps(start, length, 40, out)
    ours = augment._resample(img, taps, taps)
    s = out / length
    ref = jax.image.scale_and_translate(
        img, (out, out, 2), (0, 1), jnp.stack([s, s]),
        jnp.stack([-start * s, -start * s]), "linear", antialias=True)
    return ours, ref

  for start, length in [(5.3, 20.7), (3.0, 30.0), (0.0, 40.0)]:  # up, down
    ours, ref = both(jnp.float32(start), jnp.float32(length))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_hue_rotation_keeps_gray_and_identity_at_zero():
  np.testing.assert_allclose(augment._hue_matrix(0.0), np.eye(3), atol=1e-6)
  m = np.asarray(augment._hue_matrix(0.3))
  np.testing.assert_allclose(m @ np.ones(3), np.ones(3), atol=1e-5)
