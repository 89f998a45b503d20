"""3D volumes through the 2D pipeline: loading, 3D backbones, cubic patches,
3D views and their rank dispatch, and real SimCLR / MAE train steps on volumes."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

import data_pipelines
from data_pipelines import medmnist
from ssl_jax import augment, augment3d, models, views
from ssl_jax.models import vit

NAME = "adrenalmnist3d"


# ------------------------------------------------------------------ data --

def test_load_3d_split_shapes_and_values(medmnist_dir):
  images, labels = data_pipelines.load(NAME, "val", data_dir=medmnist_dir)
  assert images.shape == (98, 28, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (98,) and labels.dtype == np.int32
  with np.load(medmnist_dir / f"{NAME}.npz") as raw:
    np.testing.assert_array_equal(images[..., 0], raw["val_images"])
    np.testing.assert_array_equal(labels, raw["val_labels"][:, 0])
  assert set(np.unique(labels)) == {0, 1}
  info = data_pipelines.info(NAME)
  assert (info.spatial_dims, info.image_size, info.num_channels,
          info.num_classes) == (3, 28, 1, 2)
  assert data_pipelines.info("breastmnist").spatial_dims == 2


def test_3d_sizes_are_checked():
  with pytest.raises(ValueError, match=r"no size 128; allowed sizes: \(28, 64\)"):
    medmnist.info(NAME, 128)


# ---------------------------------------------------------------- models --

def _built(factory, **kwargs):
  """The module with real shapes but params drawn in numpy: skips compiling
  one RNG initialiser per param shape (most of a tiny model's build time)."""
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: factory(rngs=nnx.Rngs(0), **kwargs)))
  rng = np.random.default_rng(0)
  state = jax.tree.map(  # positive: BatchNorm's running variance stays valid
      lambda a: jnp.asarray(rng.uniform(0.5, 1.0, a.shape), a.dtype), state)
  return nnx.merge(graphdef, state)


def test_resnet18_3d_shapes_and_intermediates():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 10, 10, 1))
  net = _built(models.get("resnet18_3d"), in_channels=1, image_size=10,
               width_multiplier=1 / 16, stage_sizes=(1, 1, 1, 1))
  (pooled, inner), maps = nnx.jit(
      lambda m, x: (m(x, return_intermediates=True), m.feature_maps(x)))(net, x)
  assert pooled.shape == (2, 32) and net.feature_dim == 32
  assert {k: v.shape for k, v in inner.items()} == {
      "stage1": (2, 4), "stage2": (2, 8), "stage3": (2, 16), "stage4": (2, 32)}
  # Spatial maps: 10 -> 5 -> 3 -> 2 per axis (odd sizes exercise stride 2).
  assert [m.shape[1:4] for m in maps] == [(10,) * 3, (10,) * 3, (5,) * 3,
                                         (3,) * 3, (2,) * 3]
  np.testing.assert_allclose(pooled, maps[-1].mean(axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(inner["stage2"], maps[2].mean(axis=(1, 2, 3)),
                             rtol=1e-5)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 2)])
def test_depth_stacked_conv_equals_native_3d_conv(kernel, stride):
  from ssl_jax.models import resnet
  make = lambda impl: resnet._conv(  # noqa: E731
      3, 5, kernel, stride, dtype=jnp.float32, rngs=nnx.Rngs(0),
      spatial_dims=3, conv3d_impl=impl)
  native, stacked = make("native"), make("depth_stacked")
  assert isinstance(stacked, resnet.DepthStackedConv3d)
  # Same param path, shape and init: checkpoints are interchangeable.
  np.testing.assert_array_equal(stacked.kernel[...], native.kernel[...])
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6, 7, 3))  # odd, non-cubic
  np.testing.assert_allclose(stacked(x), native(x), atol=1e-5)


def test_vit_3d_tokens_and_patchify3d_round_trip():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 12, 4, 3)), jnp.float32)
  patches = vit.patchify3d(x, 4)
  assert patches.shape == (2, 2 * 3 * 1, 4 * 4 * 4 * 3)
  # Patch (d=1, h=2, w=0) is token 1 * 3 + 2 = 5, voxels in (d, h, w, c) order.
  np.testing.assert_array_equal(patches[1, 5],
                                np.asarray(x[1, 4:8, 8:12, 0:4]).reshape(-1))
  np.testing.assert_array_equal(vit.unpatchify3d(patches, 4, 8, 12, 4, 3), x)
  enc = _built(models.get("vit_tiny_3d"), in_channels=1, image_size=8,
               patch_size=4, depth=1, hidden_dim=12, num_heads=2)
  assert enc.num_patches == 8
  tokens, pooled = nnx.jit(lambda m, x: (m.embed_patches(x), m(x)))(
      enc, jnp.zeros((2, 8, 8, 8, 1)))
  assert tokens.shape == (2, 8, 12) and pooled.shape == (2, 12)


def test_sincos_3d_matches_its_formula_and_2d_is_unchanged():
  emb = vit.sincos((2, 3, 4), 12)
  omega = 1.0 / 10000 ** (np.arange(2) / 2)
  row = (1 * 3 + 2) * 4 + 3  # coordinate (1, 2, 3)
  expected = np.concatenate([f(c * omega) for c in (1, 2, 3)
                             for f in (np.sin, np.cos)])
  np.testing.assert_allclose(emb[row], expected, rtol=1e-6)
  with pytest.raises(ValueError, match="dim % 6 == 0, got dim=8"):
    vit.sincos((2, 2, 2), 8)
  # 2D: half the channels for rows, half for columns, as before.
  two = vit.sincos_2d(2, 3, 8)
  omega = 1.0 / 10000 ** (np.arange(2) / 2)
  np.testing.assert_allclose(two[1 * 3 + 2], np.concatenate(
      [np.sin(omega), np.cos(omega), np.sin(2 * omega), np.cos(2 * omega)]),
      rtol=1e-6)


# ----------------------------------------------------------------- views --

def _volumes(b=3, side=6, c=1, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, (b, side, side, side, c)), jnp.uint8)


def test_identity_policy_is_exact_and_flips_are_exact():
  x = _volumes()
  x01 = np.asarray(augment.to_float(x))  # the identity view, bit for bit
  rng = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(
      augment3d.apply(augment3d.Policy3D(), rng, x), x01)
  np.testing.assert_array_equal(
      augment3d.apply(augment3d.Policy3D(flip_probs=(1, 0, 0)), rng, x),
      x01[:, ::-1])
  np.testing.assert_array_equal(
      augment3d.apply(augment3d.Policy3D(flip_probs=(0, 1, 1)), rng, x),
      x01[:, :, ::-1, ::-1])
  # A 2D policy lifts: vflip -> H, hflip -> W, never D.
  lifted = augment3d.from_2d(augment.Policy(vflip_prob=1.0, jitter_prob=0.0))
  assert lifted.flip_probs == (0.0, 1.0, 0.0)
  np.testing.assert_array_equal(views.apply(lifted, rng, x), x01[:, :, ::-1])
  assert augment3d.from_2d(augment.get("medical_safe")).flip_probs == (
      0.0, 0.0, 0.5)


def test_resize_of_depth_constant_volume_matches_2d_resize():
  image = np.random.default_rng(1).random((2, 12, 12, 1)).astype(np.float32)
  volume = np.repeat(image[:, None], 12, axis=1)  # every slice the same
  out = augment3d.resize(jnp.asarray(volume), 5)
  ref = augment.resize(jnp.asarray(image), 5)
  for d in range(5):
    np.testing.assert_allclose(out[:, d], ref, atol=1e-6)


def test_crop_box_keeps_the_drawn_volume():
  corner, sides = augment3d.crop_box(jax.random.PRNGKey(0), min_volume=0.3,
                                     max_volume=0.3, aspect=(1.0, 1.0))
  np.testing.assert_allclose(sides, [0.3 ** (1 / 3)] * 3, rtol=1e-5)
  assert np.all(corner >= 0) and np.all(corner + sides <= 1 + 1e-6)
  policy = augment3d.Policy3D(crop_min_volume=0.4, brightness=0.2,
                              contrast=0.2, blur_prob=1.0, blur_sigma=(1, 1))
  v = jax.jit(lambda r, x: views.apply(policy, r, x, out_size=4))(
      jax.random.PRNGKey(1), _volumes(side=8))
  assert v.shape == (3, 4, 4, 4, 1) and 0.0 <= v.min() and v.max() <= 1.0


def test_views_dispatch_by_rank():
  images = _volumes()[:, 0]  # [B, H, W, C]
  policy = augment.Policy(hflip_prob=1.0, jitter_prob=0.0)
  rng = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(views.apply(policy, rng, images),
                                augment.apply(policy, rng, images))
  np.testing.assert_allclose(views.eval_view(_volumes()),
                             np.asarray(_volumes(), np.float32) / 127.5 - 1,
                             atol=1e-6)
  with pytest.raises(ValueError, match=r"expected \[B, H, W, C\] images or"):
    views.eval_view(jnp.zeros((2, 3, 4)))
  with pytest.raises(TypeError, match="Policy3D cannot augment inputs of shape"):
    views.apply(augment3d.Policy3D(), rng, images)


# ------------------------------------------------------------ objectives --

def _config(objective: dict, model: dict, data: str = NAME):
  from configs import base
  c = base.get_config()
  c.data.name = data
  c.model = model
  c.objective = objective
  c.train.batch_size = 8
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=0.0, warmup_steps=0)
  return c


TINY_RESNET = dict(name="resnet18_3d", width_multiplier=1 / 16,
                   stage_sizes=(1, 1, 1, 1))
SIMCLR = dict(name="simclr", temperature=0.1, proj_hidden_dim=16,
              proj_dim=8, proj_layers=2, view_size=8)
MAE = dict(name="mae", mask_ratio=0.75, norm_pix_loss=True, decoder_dim=12,
           decoder_depth=1, decoder_heads=2)


def test_volume_runs_name_the_wrong_field():
  """The 2D objectives run on volumes; the data's rank must fit the
  objective and the backbone, and every error names the field."""
  from ssl_jax import objectives

  def build(config, name):  # shapes only: nothing is computed
    bound = objectives.bind(config, data_pipelines.info(name))
    return nnx.eval_shape(lambda: bound.build_model(nnx.Rngs(0)))

  with pytest.raises(ValueError, match="'resnet18_3d' does not take the 2D "
                     "images of config.data.name='breastmnist'"):
    build(_config(SIMCLR, TINY_RESNET, data="breastmnist"), "breastmnist")
  with pytest.raises(ValueError, match="'resnet18' does not take the 3D volumes"):
    build(_config(SIMCLR, dict(TINY_RESNET, name="resnet18")), NAME)
  with pytest.raises(ValueError, match="'rotation' trains on 2D images, but "
                     f"config.data.name='{NAME}' has 3D volumes"):
    build(_config(dict(name="rotation"), TINY_RESNET), NAME)
  with pytest.raises(ValueError, match="MAE needs a ViT backbone"):
    build(_config(MAE, TINY_RESNET), NAME)
  assert build(_config(SIMCLR, TINY_RESNET), NAME).encoder.spatial_dims == 3
  # The jobs' mask-vs-policy check reads MAE's declaration, on volumes too.
  from ssl_jax.jobs import common
  c = _config(dict(MAE, mask_ratio=0.9), dict(name="vit_tiny_3d", patch_size=7))
  c.augment.policy = "ct_window"  # min_visible 0.25
  with pytest.raises(ValueError, match="mask_ratio=0.9 leaves 10% visible"):
    common.validate(c)


def test_one_real_simclr_3d_step(medmnist_dir):
  from tests.tiny import compiled_on_fixed_batch
  config = _config(SIMCLR, TINY_RESNET)  # online probe on: 5-D eval views too
  config.optim.lr = 1e-4  # one small step: first order, the loss must fall
  _, state, step_fn, batch = compiled_on_fixed_batch(
      config, batch_size=8, data_dir=medmnist_dir)
  assert batch["image"].shape == (8, 28, 28, 28, 1)
  state, metrics = step_fn(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["ssl_loss"]) > 0
  assert "probe_acc" in metrics
  # The step learns: replaying the same views (step reset to 0) after one
  # update scores a lower NT-Xent than before it.
  _, again = step_fn(state.replace(step=state.step * 0), batch)
  assert float(again["ssl_loss"]) < float(metrics["ssl_loss"]), (
      float(metrics["ssl_loss"]), float(again["ssl_loss"]))


def test_one_real_mae_3d_step(medmnist_dir):
  from tests.tiny import compiled_on_fixed_batch
  config = _config(MAE, dict(name="vit_tiny_3d", patch_size=7, depth=1,
                             hidden_dim=12, num_heads=2))
  config.online_probe = False
  _, state, step_fn, batch = compiled_on_fixed_batch(
      config, batch_size=8, data_dir=medmnist_dir)
  state, metrics = step_fn(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["mask_fraction"]) == 48 / 64  # 4^3 patches, 16 kept
