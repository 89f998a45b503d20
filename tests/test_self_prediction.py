"""SimMIM and Models Genesis restoration: references in numpy, then a few real
steps on a fixed BreastMNIST batch through the pretrain job's step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import models, objectives
from ssl_jax.models.unet import resnet_feature_maps, resnet_map_channels
from ssl_jax.models.vit import patchify, sincos_2d
from ssl_jax.objectives import self_prediction as sp
from tests.tiny import bind, tiny_config

TINY_VIT = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                num_heads=2, mlp_dim=64)


class Info:
  num_channels, image_size, num_classes, multi_label = 1, 28, 2, False


def tiny_resnet_config():
  return tiny_config(**{"model.stage_sizes": (1, 1, 1, 1)})


def simmim_config():
  c = tiny_resnet_config()
  c.model = TINY_VIT
  c.objective = dict(name="simmim", mask_ratio=0.6)
  return c


def restoration_config():
  from configs import restoration
  c = tiny_resnet_config()
  c.objective = restoration.get_config().objective
  return c


# ------------------------------------------------------------------ SimMIM --

def test_simmim_loss_matches_numpy_and_ignores_visible_patches():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 5, 12)), rng.normal(size=(2, 5, 12))
  mask = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], np.float32)
  # L1 over every pixel and channel of the masked patches, nothing else.
  expected = np.abs(pred - target)[mask == 1].mean()
  got = sp.simmim_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  pred[mask == 0] += 100.0
  got2 = sp.simmim_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(float(got2), expected, rtol=1e-5)


def test_simmim_replaces_masked_tokens_before_the_encoder():
  model = bind(simmim_config(), Info, objectives.get("simmim")).build_model(nnx.Rngs(0))
  enc = model.encoder
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 28, 28, 1)), jnp.float32)
  mask = jnp.asarray(rng.random((2, enc.num_patches)) < 0.5, jnp.float32)
  pred = model(x, mask, train=True)
  assert pred.shape == (2, enc.num_patches, 7 * 7 * 1)

  # The paper's order, written out: patch embedding, masked ones replaced by
  # the mask token, then positions; the whole ViT; one linear per token.
  embed = np.asarray(enc.patch_embed(x)).reshape(2, enc.num_patches, -1)
  token = np.asarray(model.mask_token[...])[0]
  tokens = np.where(np.asarray(mask)[..., None] > 0, token, embed)
  tokens = tokens + sincos_2d(enc.grid_size, enc.grid_size, enc.hidden_dim)
  latent = enc.encode_tokens(jnp.asarray(tokens, jnp.float32))[:, 1:]
  np.testing.assert_allclose(pred, model.decoder(latent), rtol=1e-5, atol=1e-5)

  # The pixels of masked patches cannot reach the output at all.
  noise = jnp.asarray(rng.normal(size=(2, enc.num_patches, 49)), jnp.float32)
  x_masked_changed = x + models.unpatchify(noise * mask[..., None], 7, 28, 28, 1)
  np.testing.assert_allclose(model(x_masked_changed, mask, train=True), pred,
                             rtol=1e-5, atol=1e-6)
  x_visible_changed = x + models.unpatchify(noise * (1 - mask[..., None]), 7,
                                            28, 28, 1)
  assert not np.allclose(model(x_visible_changed, mask, train=True), pred)


def test_simmim_and_restoration_name_the_backbone_they_need():
  c = simmim_config()
  c.model = tiny_resnet_config().model
  with pytest.raises(ValueError, match="SimMIM needs a ViT"):
    bind(c, Info).build_model(nnx.Rngs(0))
  c = restoration_config()
  c.model = TINY_VIT
  with pytest.raises(ValueError, match="restoration decodes a ResNet"):
    bind(c, Info, objectives.get("restoration")).build_model(nnx.Rngs(0))


# ------------------------------------------- Models Genesis transforms --

def numpy_bezier(p1, p2, t):
  """Bernstein form of the cubic with ends (0, 0), (1, 1)."""
  pts = np.stack([np.zeros(2), p1, p2, np.ones(2)])
  w = np.stack([(1 - t)**3, 3 * (1 - t)**2 * t, 3 * (1 - t) * t**2, t**3], 1)
  return w @ pts


def test_bezier_intensity_is_monotone_with_fixed_ends_and_matches_numpy():
  x = jnp.linspace(0.0, 1.0, 101).reshape(1, 101, 1)
  curve_fn = jax.jit(functools.partial(sp.nonlinear_intensity, num_samples=200))
  rng = np.random.default_rng(2)
  for _ in range(5):
    p1, p2 = rng.random(2), rng.random(2)
    y = np.asarray(curve_fn(x, p1, p2, False)).ravel()
    assert np.all(np.diff(y) >= -1e-6)
    np.testing.assert_allclose([y[0], y[-1]], [0.0, 1.0], atol=1e-6)
    curve = numpy_bezier(p1, p2, np.linspace(0, 1, 200))
    expected = np.interp(np.asarray(x).ravel(), np.sort(curve[:, 0]),
                         np.sort(curve[:, 1]))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    inverted = np.asarray(curve_fn(x, p1, p2, True)).ravel()
    assert np.all(np.diff(inverted) <= 1e-6)
    np.testing.assert_allclose([inverted[0], inverted[-1]], [1.0, 0.0], atol=1e-6)
  # Control points on the diagonal: the identity.
  identity = curve_fn(x, np.array([1 / 3, 1 / 3]), np.array([0.8, 0.8]), False)
  np.testing.assert_allclose(identity, x, atol=1e-6)


def numpy_shuffle_windows(image, corners, sizes, keys, m):
  """Reference: each window's pixels, read from the original in ascending key
  order, written in row-major order; later windows overwrite."""
  out = image.copy()
  for (r, c), (h, w), k in zip(corners, sizes, keys):
    pos = [(i, j) for i in range(h) for j in range(w)]  # row-major
    order = sorted(range(len(pos)), key=lambda n: k[pos[n][0] * m + pos[n][1]])
    for dst, src in zip(pos, (pos[n] for n in order)):
      out[r + dst[0], c + dst[1]] = image[r + src[0], c + src[1]]
  return out


def test_local_pixel_shuffle_matches_numpy_and_stays_inside_windows():
  rng = np.random.default_rng(3)
  image = rng.random((9, 8, 2)).astype(np.float32)
  m = 3
  corners = np.array([[0, 0], [5, 4], [1, 1], [6, 0]])  # windows 0, 2 overlap
  sizes = np.array([[3, 2], [3, 3], [2, 3], [1, 3]])
  keys = rng.random((4, m * m)).astype(np.float32)
  got = np.asarray(sp.shuffle_windows(jnp.asarray(image), jnp.asarray(corners),
                                      jnp.asarray(sizes), jnp.asarray(keys),
                                      max_window=m))
  np.testing.assert_array_equal(got, numpy_shuffle_windows(image, corners, sizes,
                                                           keys, m))
  # Non-overlapping windows: each holds a permutation of its own pixels (whole
  # pixels: channels move together); outside them nothing changes.
  got = np.asarray(sp.shuffle_windows(
      jnp.asarray(image), jnp.asarray(corners[:2]), jnp.asarray(sizes[:2]),
      jnp.asarray(keys[:2]), max_window=m))
  inside = np.zeros((9, 8), bool)
  for (r, c), (h, w) in zip(corners[:2], sizes[:2]):
    inside[r:r + h, c:c + w] = True
    before = sorted(map(tuple, image[r:r + h, c:c + w].reshape(-1, 2)))
    after = sorted(map(tuple, got[r:r + h, c:c + w].reshape(-1, 2)))
    assert before == after
  np.testing.assert_array_equal(got[~inside], image[~inside])
  assert not np.array_equal(got[inside], image[inside])


def test_random_local_shuffle_keeps_windows_inside_and_respects_prob():
  image = jnp.asarray(np.random.default_rng(4).random((12, 12, 1)), jnp.float32)
  shuffle = jax.jit(functools.partial(sp.random_local_shuffle, num_blocks=30,
                                      max_window=3))
  out = shuffle(image, jax.random.PRNGKey(0), prob=1.0)
  assert out.shape == image.shape
  # Every value still comes from the image (windows are read from it).
  assert set(np.asarray(out).ravel()) <= set(np.asarray(image).ravel())
  assert not np.array_equal(out, image)
  off = shuffle(image, jax.random.PRNGKey(0), prob=0.0)
  np.testing.assert_array_equal(off, image)


def test_box_masks_and_painting_match_numpy():
  boxes = np.array([[0, 1, 2, 3], [3, 3, 2, 2], [1, 0, 4, 4]])
  active = np.array([True, True, False])
  expected = np.zeros((6, 7), bool)
  for (t, l, h, w), on in zip(boxes, active):
    if on:
      expected[t:t + h, l:l + w] = True
  mask = np.asarray(sp.box_mask(6, 7, jnp.asarray(boxes), jnp.asarray(active)))
  np.testing.assert_array_equal(mask, expected)
  rng = np.random.default_rng(5)
  image, noise = (rng.random((6, 7, 2)).astype(np.float32) for _ in range(2))
  inpainted = np.asarray(sp.inpaint(image, jnp.asarray(mask), noise))
  np.testing.assert_array_equal(inpainted[mask], noise[mask])
  np.testing.assert_array_equal(inpainted[~mask], image[~mask])
  outpainted = np.asarray(sp.outpaint(image, jnp.asarray(mask), noise))
  np.testing.assert_array_equal(outpainted[mask], image[mask])
  np.testing.assert_array_equal(outpainted[~mask], noise[~mask])


def test_random_boxes_fit_the_image_and_the_size_range():
  u = np.random.default_rng(8).random((500, 4))
  u[:3] = [[0.0] * 4, [0.9999] * 4, [0.0, 0.9999, 0.9999, 0.0]]  # extremes
  boxes = np.asarray(sp.random_boxes(jnp.asarray(u, jnp.float32), 28, 28,
                                     (1 / 6, 1 / 3)))
  top, left, h, w = boxes.T
  # round(28 / 6) = 5 .. round(28 / 3) = 9 pixels, every size reachable.
  assert set(h) == set(w) == set(range(5, 10))
  assert top.min() >= 0 and (top + h).max() <= 28
  assert left.min() >= 0 and (left + w).max() <= 28


@pytest.mark.parametrize("inpaint_prob", [1.0, 0.0])
def test_random_paint_changes_only_box_or_background_pixels(inpaint_prob):
  image = jnp.full((28, 28, 1), 2.0)  # outside the noise range [0, 1)
  paint = jax.jit(functools.partial(
      sp.random_paint, box_prob=1.0, inpaint_boxes=2, inpaint_size=(0.2, 0.3),
      outpaint_boxes=2, outpaint_size=(0.3, 0.4)))
  out = np.asarray(paint(image, jax.random.PRNGKey(2), prob=1.0,
                         inpaint_prob=inpaint_prob))
  noised = out[..., 0] < 1.0
  assert np.all((out == 2.0) | (out < 1.0))
  # In-painting noises at most 2 boxes of <= 30%; out-painting keeps <= 2 of
  # <= 40% and noises the rest.
  fraction = noised.mean()
  assert (0 < fraction <= 2 * 0.3**2 + 0.01 if inpaint_prob
          else fraction >= 1 - 2 * 0.4**2 - 0.01)


def test_models_genesis_with_every_probability_zero_is_the_identity():
  from configs import restoration
  kwargs = sp.genesis_kwargs(restoration.get_config().objective)
  kwargs.update(shuffle_prob=0.0, nonlinear_prob=0.0, paint_prob=0.0)
  image = jnp.asarray(np.random.default_rng(6).random((28, 28, 1)), jnp.float32)
  corrupt = jax.jit(functools.partial(sp.models_genesis, **kwargs))
  np.testing.assert_array_equal(corrupt(image, jax.random.PRNGKey(0)), image)


def test_restoration_loss_targets_the_clean_view_and_matches_numpy():
  """Stub models (zeros, identity, affine) make the loss known from the
  pixels: the target is the clean standardised view, the input the
  corrupted one, and `identity_mse` what returning the input scores."""
  pixels = np.random.default_rng(8).integers(0, 256, (4, 28, 28, 1), np.uint8)
  clean = (pixels / 255.0 - 0.5) / 0.5
  batch, rng = {"image": jnp.asarray(pixels)}, jax.random.PRNGKey(0)
  c = restoration_config()
  c.augment.policy = "none"
  loss_fn = bind(c, objective=objectives.get("restoration")).make_loss()
  zero, _, _ = loss_fn(lambda x, train: jnp.zeros_like(x), batch, rng, {})
  np.testing.assert_allclose(float(zero), np.mean(clean ** 2), rtol=1e-5)
  ident, metrics, _ = loss_fn(lambda x, train: x, batch, rng, {})
  assert float(ident) > 0.01  # the input is corrupted
  np.testing.assert_allclose(float(metrics["identity_mse"]), float(ident),
                             rtol=1e-6)
  # With no corruption the input is the clean view: an affine stub's error.
  c.objective.update(shuffle_prob=0.0, nonlinear_prob=0.0, paint_prob=0.0)
  loss, metrics, _ = bind(c, objective=objectives.get("restoration")).make_loss()(
      lambda x, train: 0.5 * x + 0.25, batch, rng, {})
  np.testing.assert_allclose(float(loss), np.mean((0.25 - 0.5 * clean) ** 2),
                             rtol=1e-5)
  assert float(metrics["identity_mse"]) == 0.0


# ------------------------------------------------------------- U-Net --

@pytest.mark.parametrize("image_size", [28, 72])  # small and ImageNet stems
def test_resnet_feature_maps_mirror_the_encoder(image_size):
  encoder = models.get("resnet18")(in_channels=1, image_size=image_size,
                                   width_multiplier=1 / 16,
                                   stage_sizes=(1, 1, 1, 1), rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(7).normal(
      size=(2, image_size, image_size, 1)), jnp.float32)
  maps = resnet_feature_maps(encoder, x, train=False)
  assert [m.shape[-1] for m in maps] == resnet_map_channels(encoder)
  np.testing.assert_allclose(maps[-1].mean(axis=(1, 2)),
                             encoder(x, train=False), rtol=1e-5, atol=1e-6)


# --------------------------------------------------- real steps, real data --

def train_a_few_steps(config, medmnist_dir, steps=5):
  """Losses of each step and the pretext loss at step 0's rng after training.

  Resetting the step counter replays step 0's augmentations and masks, so
  the two pretext losses differ only by what the parameters learned.
  """
  from tests.tiny import compiled_on_fixed_batch
  _, state, step_fn, batch = compiled_on_fixed_batch(
      config, data_dir=str(medmnist_dir))
  history = []
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
    history.append(jax.device_get(metrics))
  _, replay = step_fn(state.replace(step=jnp.zeros_like(state.step)), batch)
  return history, float(replay["loss"])


@pytest.mark.parametrize("make_config", [simmim_config, restoration_config],
                         ids=["simmim", "restoration"])
def test_a_few_real_steps_lower_the_loss(make_config, medmnist_dir):
  config = make_config()
  config.train.steps = 5
  config.online_probe = False  # its eval-mode forward would double compile time
  history, replayed = train_a_few_steps(config, medmnist_dir)
  losses = [float(m["loss"]) for m in history]
  assert np.all(np.isfinite(losses)), losses
  assert replayed < losses[0], (losses, replayed)
  if config.objective.name == "simmim":
    np.testing.assert_allclose(history[0]["mask_fraction"], 10 / 16)  # 16 patches
  else:  # the corruption really corrupts: copying the input is not free
    assert float(history[0]["identity_mse"]) > 0.01
