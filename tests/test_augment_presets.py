"""Medical presets, HED stain jitter, CT windows and the masking floor."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base as base_config
from ssl_jax import augment
from ssl_jax.jobs import common
from ssl_jax.objectives import self_prediction as sp

MEDICAL = ("xray_safe", "histology", "fundus", "ct_window", "dermatology")
# Eager on purpose: XLA caches each op per shape, so every preset reuses the
# kernels of the others (one jit compile per preset costs more on CPU).
# Hence one batch shape, [64, 16, 16, C], throughout.
_apply = augment.apply
B, S = 64, 16


def _images(b=B, h=S, w=S, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, w, c), np.uint8)


def _key(i=0):
  return jax.random.PRNGKey(i)


# ----------------------------------------------------------------- presets --

def test_presets_registered_described_and_floors_consistent():
  for name in MEDICAL:
    p = augment.get(name)
    assert "Avoids" in p.description, name
    assert 0 < p.min_visible <= p.crop_min_area, name
  assert augment.get("xray_safe").crop_min_area >= 0.7
  assert augment.get("dermatology").crop_min_area >= 0.5
  for name in ("xray_safe", "ct_window"):  # canonical up
    p = augment.get(name)
    assert p.vflip_prob == 0 and not p.rot90
  for name in ("xray_safe", "ct_window", "fundus", "dermatology"):
    p = augment.get(name)  # colour is absent or diagnostic
    assert p.hue == 0 and p.grayscale_prob == 0 and p.hed_sigma == 0
  assert augment.get("xray_safe").saturation == 0
  assert augment.get("histology").hed_sigma > 0


def test_the_strong_medical_view_keeps_the_safe_geometry():
  safe, strong = augment.get("medical_safe"), augment.get("medical_strong")
  geometry = ("crop_min_area", "crop_max_area", "crop_aspect", "hflip_prob",
              "vflip_prob", "rot90")
  assert [getattr(strong, f) for f in geometry] == [getattr(safe, f) for f in geometry]
  assert strong.brightness > safe.brightness and strong.contrast > safe.contrast
  assert strong.blur_prob > safe.blur_prob
  assert strong.hue == strong.saturation == strong.grayscale_prob == 0
  assert "Avoids" in strong.description


@pytest.mark.parametrize("name", MEDICAL + ("medical_strong",))
def test_preset_runs_on_gray_and_rgb(name):
  p = augment.get(name)
  for c in (1, 3):
    y = _apply(p, _key(), _images(c=c))
    assert y.shape == (B, S, S, c) and y.dtype == jnp.float32
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


@pytest.mark.parametrize("name,colour", [
    ("histology", dict(hed_sigma=0.0, hed_bias=0.0)),
    ("fundus", dict(saturation=0.0)),
    ("dermatology", dict(saturation=0.0))])
def test_colour_ops_are_skipped_on_one_channel(name, colour):
  """Colour ops draw their own numbers, so switching them off leaves every
  other op's draw (and a 1-channel view) exactly as it was."""
  with_colour, without = augment.get(name), augment.get(name, **colour)
  gray, rgb = _images(c=1), _images(c=3)
  np.testing.assert_array_equal(_apply(with_colour, _key(3), gray),
                                _apply(without, _key(3), gray))
  assert not np.allclose(_apply(with_colour, _key(3), rgb),
                         _apply(without, _key(3), rgb), atol=1e-4)


def _vertical_ramp(b=B, size=S):
  """Bright top, dark bottom, and a bright left column block (asymmetric)."""
  x = np.repeat(np.linspace(255, 0, size)[:, None], size, axis=1)
  x[:, : size // 4] = np.minimum(255, x[:, : size // 4] + 60)
  return np.broadcast_to(x[None, :, :, None], (b, size, size, 1)).astype(np.uint8)


def test_xray_safe_never_flips_vertically_or_rotates():
  x = _vertical_ramp()
  y = np.asarray(_apply(augment.get("xray_safe"), _key(5), x))
  top, bottom = y[:, :5].mean(axis=(1, 2, 3)), y[:, -5:].mean(axis=(1, 2, 3))
  assert np.all(top - bottom > 0.3)
  # Left-right flips still happen (p=0.5), and only when configured.
  left, right = y[:, :, :3].mean(axis=(1, 2, 3)), y[:, :, -3:].mean(axis=(1, 2, 3))
  assert 0.3 < np.mean(right > left) < 0.7
  y = np.asarray(_apply(augment.get("xray_safe", hflip_prob=0.0), _key(5), x))
  assert np.all(y[:, :, :3].mean(axis=(1, 2, 3)) > y[:, :, -3:].mean(axis=(1, 2, 3)))
  # The check can fail: a vertical flip is caught.
  y = np.asarray(_apply(augment.get("xray_safe", vflip_prob=0.5), _key(5), x))
  assert np.any(y[:, :5].mean(axis=(1, 2, 3)) < y[:, -5:].mean(axis=(1, 2, 3)))


def test_histology_geometry_is_exactly_the_dihedral_group():
  p = augment.get("histology", crop_min_area=1.0, hed_sigma=0.0, hed_bias=0.0,
                  jitter_prob=0.0, blur_prob=0.0)
  image = np.random.default_rng(1).integers(0, 256, (S, S, 3), np.uint8)
  y = np.asarray(_apply(p, _key(7), np.broadcast_to(image, (B, S, S, 3))))
  xf = np.asarray(augment.to_float(image))
  group = [np.rot90(f, k) for f in (xf, xf[:, ::-1]) for k in range(4)]
  hits = [[j for j, g in enumerate(group) if np.array_equal(v, g)] for v in y]
  assert all(len(h) == 1 for h in hits)  # each view is one of the 8, exactly
  assert {h[0] for h in hits} == set(range(8))


# ------------------------------------------------------------- HED jitter --

_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11],
                          [0.27, 0.57, 0.78]])


def _hed_reference(x, scale, shift):
  """Ruifrok & Johnston deconvolution in float64 numpy, OD = -ln(x)."""
  od = -np.log(np.maximum(x.astype(np.float64), 1e-6))
  stains = od.reshape(-1, 3) @ np.linalg.inv(_RGB_FROM_HED)
  rgb = np.exp(-((stains * scale + shift) @ _RGB_FROM_HED))
  return np.clip(rgb, 0, 1).reshape(x.shape)


def test_hed_jitter_zero_is_identity():
  x = np.random.default_rng(2).random((6, 6, 3)).astype(np.float32)
  x[0, 0], x[0, 1] = 0.0, 1.0
  y = augment.random_hed_jitter(jnp.asarray(x), _key(), sigma=0.0, bias=0.0)
  np.testing.assert_allclose(y, x, atol=1e-5)


def test_hed_jitter_matches_numpy_deconvolution():
  x = np.random.default_rng(3).uniform(0.05, 1.0, (6, 6, 3)).astype(np.float32)
  scale, shift = np.array([1.04, 0.97, 1.01]), np.array([0.03, -0.02, 0.01])
  y = augment.hed_jitter(jnp.asarray(x), jnp.asarray(scale, jnp.float32),
                         jnp.asarray(shift, jnp.float32))
  np.testing.assert_allclose(y, _hed_reference(x, scale, shift), atol=2e-5)
  # A pure haematoxylin pixel: doubling the stain doubles its optical density.
  pure_h = np.exp(-0.4 * _RGB_FROM_HED[0]).astype(np.float32)
  y = augment.hed_jitter(jnp.asarray(pure_h), jnp.array([2.0, 1.0, 1.0]),
                         jnp.zeros(3))
  np.testing.assert_allclose(y, np.exp(-0.8 * _RGB_FROM_HED[0]), atol=1e-5)
  # The random wrapper draws scale in [1 -+ sigma] and shift in [-+ bias].
  u = 2 * np.asarray(jax.random.uniform(_key(4), (2, 3))) - 1
  y = augment.random_hed_jitter(jnp.asarray(x), _key(4), sigma=0.1, bias=0.05)
  np.testing.assert_allclose(y, _hed_reference(x, 1 + 0.1 * u[0], 0.05 * u[1]),
                             atol=2e-5)


# -------------------------------------------------------------- CT window --

def test_window_matches_numpy():
  x = np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10, 1)
  for c, w in [(0.5, 1.0), (0.4, 0.8), (0.6, 1.2)]:
    np.testing.assert_allclose(augment.window(jnp.asarray(x), c, w),
                               np.clip((x - c) / w + 0.5, 0, 1), atol=1e-6)
  np.testing.assert_allclose(augment.window(jnp.asarray(x), 0.5, 1.0), x,
                             atol=1e-6)


def test_ct_window_preset_draws_windows_in_range():
  """Fits y = (x - c) / w + 0.5 on each view's unclipped pixels: the map is
  exactly a window, with c in [0.5 -+ 0.1] and w in [1 -+ 0.25]."""
  p = augment.get("ct_window", crop_min_area=1.0)
  x = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(S, S, 1),
                      (B, S, S, 1))
  y = np.asarray(_apply(p, _key(9), x))
  xf = x[0, ..., 0].astype(np.float64) / 255
  centres, widths = [], []
  for v in y[..., 0]:
    inside = (v > 1e-4) & (v < 1 - 1e-4)
    slope, intercept = np.polyfit(xf[inside], v[inside], 1)
    np.testing.assert_allclose(v, np.clip(slope * xf + intercept, 0, 1),
                               atol=2e-5)
    widths.append(1 / slope)
    centres.append((0.5 - intercept) / slope)
  assert 0.4 - 1e-4 <= min(centres) and max(centres) <= 0.6 + 1e-4
  assert 0.75 - 1e-4 <= min(widths) and max(widths) <= 1.25 + 1e-4
  assert np.ptp(centres) > 0.1 and np.ptp(widths) > 0.25


def test_new_fields_validated():
  with pytest.raises(ValueError, match="window_width_jitter"):
    augment.Policy(window_width_jitter=1.0)
  with pytest.raises(ValueError, match="hed_sigma"):
    augment.Policy(hed_sigma=-0.1)
  with pytest.raises(ValueError, match="crop_min_area=0.08 is below "
                     "min_visible=0.25"):
    augment.get("simclr", min_visible=0.25)


# -------------------------------------------------------------- describe --

def test_describe_records_the_resolved_policy():
  overrides = base_config.augment_config("xray_safe").overrides
  d = augment.describe("xray_safe", overrides)  # all None: the bare preset
  assert d["policy"] == d["label"] == "xray_safe" and d["overrides"] == {}
  assert d["fields"]["crop_min_area"] == 0.7
  overrides.hflip_prob = 0.0
  d = augment.describe("xray_safe", overrides)
  assert d["label"] == "xray_safe[hflip_prob=0.0]"
  assert d["overrides"] == {"hflip_prob": 0.0}
  assert d["fields"]["hflip_prob"] == 0.0
  assert json.loads(json.dumps(d)) == d  # JSON-ready (tuples as lists)
  assert augment.resolve("xray_safe", overrides) == augment.get(
      "xray_safe", hflip_prob=0.0)


# ------------------------------------------------------- visibility floor --

def test_random_masking_keeps_the_floor():
  _, mask, _ = sp.random_masking(_key(), 8, 49, 0.9, min_visible=0.25)
  assert np.all(np.asarray(mask).sum(axis=1) == 49 - 13)  # ceil(49 / 4) kept
  _, mask, _ = sp.random_masking(_key(), 8, 49, 0.9)
  assert np.all(np.asarray(mask).sum(axis=1) == 44)  # no floor: 90%
  _, mask, _ = sp.random_masking(_key(), 4, 10, 0.5, min_visible=0.3)
  assert np.all(np.asarray(mask).sum(axis=1) == 5)  # floor not binding


def test_masked_view_uses_the_policy_floor():
  policy = augment.get("xray_safe", min_visible=0.5)
  x, (_, mask, _) = sp.masked_view(policy, _key(), _images(c=1), 16, 0.75)
  assert x.shape == (B, S, S, 1)
  assert np.all(np.asarray(mask).mean(axis=1) <= 0.5)


def _painted_fraction(min_visible, *, inpaint_prob, n=B, **sizes):
  image = jnp.full((20, 20, 1), 2.0)  # outside the noise range [0, 1)
  paint = jax.jit(jax.vmap(functools.partial(
      sp.random_paint, image, prob=1.0, inpaint_prob=inpaint_prob,
      box_prob=1.0, min_visible=min_visible, **sizes)))
  out = np.asarray(paint(jax.random.split(_key(11), n)))
  return (out[..., 0] < 1.0).mean(axis=(1, 2))


def test_inpainting_boxes_are_capped_by_the_floor():
  sizes = dict(inpaint_boxes=5, inpaint_size=(0.3, 0.5), outpaint_boxes=1,
               outpaint_size=(0.5, 0.6))
  assert _painted_fraction(0.0, inpaint_prob=1.0, **sizes).max() > 0.5
  hidden = _painted_fraction(0.5, inpaint_prob=1.0, **sizes)
  assert hidden.max() <= 0.5 and hidden.min() > 0


def test_outpainting_keeps_the_floor_visible():
  sizes = dict(inpaint_boxes=1, inpaint_size=(0.1, 0.2), outpaint_boxes=2,
               outpaint_size=(0.2, 0.3))
  assert _painted_fraction(0.0, inpaint_prob=0.0, **sizes).min() > 0.7
  hidden = _painted_fraction(0.3, inpaint_prob=0.0, **sizes)
  assert hidden.max() <= 0.7 and hidden.min() > 0


def _config(name, **objective):
  from configs import mae, restoration, simmim
  module = {"mae": mae, "simmim": simmim, "restoration": restoration}[name]
  c = module.get_config()
  c.objective.update(objective)
  return c


@pytest.mark.parametrize("policy", MEDICAL + ("medical_safe",))
def test_default_masking_configs_meet_every_preset(policy):
  for name in ("mae", "simmim", "restoration"):
    c = _config(name)
    c.augment = base_config.augment_config(policy)
    common.check_objective(c)


def test_config_validation_names_both_fields():

  c = _config("mae", mask_ratio=0.9)
  c.augment = base_config.augment_config("xray_safe")
  with pytest.raises(ValueError, match=(
      r"config\.objective\.mask_ratio=0\.9 leaves 10% visible, below "
      r"augment\.min_visible=0\.25; mask less")):
    common.check_objective(c)
  c.augment.overrides.min_visible = 0.1  # an explicit, recorded choice
  common.check_objective(c)
  c = _config("restoration", outpaint_size=(0.2, 0.4))
  c.augment = base_config.augment_config("dermatology")
  with pytest.raises(ValueError, match=r"objective\.outpaint_size=\(0\.2, 0\.4\) "
                     r"leaves 16% visible, below augment\.min_visible=0\.25"):
    common.check_objective(c)
  c = _config("restoration", inpaint_size=(0.5, 0.9))
  c.augment = base_config.augment_config("histology")
  with pytest.raises(ValueError, match=r"objective\.inpaint_size"):
    common.check_objective(c)
  c.objective.paint_prob = 0.0  # painting off: nothing to check
  common.check_objective(c)


def test_combined_parts_are_checked_with_their_own_augment():
  c = _config("mae")
  c.objective = dict(name="combined", parts=("rotation", "mae"),
                     weights=(1.0, 1.0), rotation=dict(),
                     mae=dict(mask_ratio=0.9, norm_pix_loss=True))
  c.augment = base_config.augment_config("fundus")
  with pytest.raises(ValueError, match=r"config\.objective\.mae\.mask_ratio="
                     r"0\.9 .* below augment\.min_visible=0\.25"):
    common.check_objective(c)
  c.objective.mae.augment = base_config.augment_config("medical_safe")
  common.check_objective(c)
