"""Tests for ssl_jax.models, on tiny variants (28 px, width 1/16, depth 2)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import models
from ssl_jax.models import heads, vit

TINY_RESNET = dict(image_size=28, width_multiplier=1 / 16)
TINY_VIT = dict(image_size=28, depth=2)
MINI_VIT = dict(image_size=28, depth=1, hidden_dim=32, num_heads=2)

# Eager init compiles every initializer shape; on a busy 2-core CPU that is
# the slow part of these tests, so tests that only read models share them.


@pytest.fixture(scope='module')
def resnet18():
  return models.get('resnet18')(in_channels=3, rngs=nnx.Rngs(0),
                                **TINY_RESNET)


@pytest.fixture(scope='module')
def mini_vit():
  return models.get('vit_tiny')(in_channels=3, rngs=nnx.Rngs(0), **MINI_VIT)


def _images(b=2, size=28, c=3, seed=0):
  return jax.random.normal(jax.random.key(seed), (b, size, size, c))


def test_registry_names_and_unknown_name():
  assert models.names() == [
      'resnet18', 'resnet18_3d', 'resnet50', 'vit_base', 'vit_small',
      'vit_tiny', 'vit_tiny_3d']
  with pytest.raises(KeyError, match='resnet18.*vit_tiny'):
    models.get('resnet19')


def test_models_do_not_import_tensorflow():
  # A fresh interpreter: other test files may import TF into this one.
  code = ('import sys, ssl_jax.models; '
          'assert "tensorflow" not in sys.modules, "TF imported"')
  subprocess.run([sys.executable, '-c', code], check=True,
                 cwd=pathlib.Path(__file__).resolve().parents[1])


@pytest.mark.parametrize('channels', [1, 3])
def test_resnet18_shapes_and_intermediates(channels, resnet18):
  m = resnet18 if channels == 3 else models.get('resnet18')(
      in_channels=channels, rngs=nnx.Rngs(0), **TINY_RESNET)
  assert m.small_stem and m.feature_dim == 32  # 512 / 16.
  out, inter = m(_images(c=channels), return_intermediates=True)
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  assert {k: v.shape for k, v in inter.items()} == {
      'stage1': (2, 4), 'stage2': (2, 8), 'stage3': (2, 16),
      'stage4': (2, 32)}
  np.testing.assert_allclose(inter['stage4'], out, rtol=1e-6)


def test_resnet50_shapes():
  # Built and called traced, not run: eager ops compile a program each.
  m = nnx.eval_shape(lambda: models.get('resnet50')(
      in_channels=3, rngs=nnx.Rngs(0), **TINY_RESNET))
  assert m.feature_dim == 128  # 2048 / 16.
  assert nnx.eval_shape(lambda m, x: m(x), m, _images()).shape == (2, 128)


def test_resnet_imagenet_stem_and_stage_sizes():
  m = models.get('resnet18')(in_channels=3, image_size=32, rngs=nnx.Rngs(0),
                             width_multiplier=1 / 16, small_stem=False,
                             stage_sizes=(1, 1))
  assert not m.small_stem and m.feature_dim == 8
  _, inter = m(_images(size=32), return_intermediates=True)
  assert sorted(inter) == ['stage1', 'stage2']


def test_resnet_stage_strides_keep_resolution_and_params(resnet18):
  # Strides hold no params: the same checkpoint runs at either; (1, 1, 2, 2)
  # leaves stage 4 at 7x7 on 28 px instead of 4x4.
  fine = nnx.eval_shape(lambda: models.get('resnet18')(
      in_channels=3, rngs=nnx.Rngs(0), stage_strides=(1, 1, 2, 2),
      **TINY_RESNET))
  shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
  assert shapes(fine) == shapes(resnet18)
  maps = lambda m: [x.shape[1] for x in nnx.eval_shape(
      lambda m, x: m.feature_maps(x), m, _images())]
  assert maps(resnet18) == [28, 28, 14, 7, 4]
  assert maps(fine) == [28, 28, 28, 14, 7]
  with pytest.raises(ValueError, match=r'stage_strides must be 4 ints'):
    models.get('resnet18')(in_channels=3, rngs=nnx.Rngs(0),
                           stage_strides=(1, 2), **TINY_RESNET)


def test_resnet_batchnorm_stats_update_only_in_train(resnet18):
  m = resnet18
  before = jax.tree.map(np.asarray, nnx.state(m, nnx.BatchStat))
  m(_images(), train=False)
  after_eval = nnx.state(m, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)
  m(_images(), train=True)
  after_train = nnx.state(m, nnx.BatchStat)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before,
                         after_train)
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize('patch_size', [4, 7])
def test_vit_shapes_and_token_api(patch_size):
  m = models.get('vit_tiny')(in_channels=1, rngs=nnx.Rngs(0),
                             patch_size=patch_size, **TINY_VIT)
  n = (28 // patch_size)**2
  assert (m.feature_dim, m.hidden_dim, m.num_patches, m.patch_size) == (
      192, 192, n, patch_size)
  x = _images(c=1)
  out, inter = m(x, return_intermediates=True)
  assert out.shape == (2, 192) and out.dtype == jnp.float32
  assert {k: v.shape for k, v in inter.items()} == {
      'block1': (2, 192), 'block2': (2, 192)}
  tokens = m.embed_patches(x)
  assert tokens.shape == (2, n, 192)
  # encode_tokens on all tokens reproduces the forward pass; on a subset too.
  np.testing.assert_allclose(m.encode_tokens(tokens)[:, 0], out, atol=1e-5)
  assert m.encode_tokens(tokens[:, :3], train=True).shape == (2, 4, 192)


def test_vit_mean_pool_bfloat16_and_default_probe_points():
  m = models.get('vit_tiny')(in_channels=3, rngs=nnx.Rngs(0), image_size=28,
                             depth=4, hidden_dim=32, num_heads=2, pool='mean',
                             dtype=jnp.bfloat16)
  assert m.probe_blocks == (1, 2, 3, 4)
  out = m(_images())
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(nnx.state(m))} == {
      jnp.dtype('float32')}
  full = models.get('vit_small')(in_channels=3, image_size=28,
                                 rngs=nnx.Rngs(0), hidden_dim=32,
                                 num_heads=2)
  assert full.probe_blocks == (3, 6, 9, 12) and full.patch_size == 4


def test_vit_rejects_indivisible_patch_size():
  with pytest.raises(ValueError, match='image_size=28.*patch_size=5'):
    models.get('vit_tiny')(in_channels=3, image_size=28, patch_size=5,
                           rngs=nnx.Rngs(0))


def test_patchify_unpatchify_round_trip():
  x = _images(b=2, size=28, c=3)
  p = vit.patchify(x, 7)
  assert p.shape == (2, 16, 7 * 7 * 3)
  # Row-major order: patch 1 is the second patch of the first row.
  np.testing.assert_array_equal(p[0, 1], x[0, :7, 7:14].reshape(-1))
  np.testing.assert_array_equal(vit.unpatchify(p, 7, 28, 28, 3), x)


def test_mae_decoder_shape(mini_vit):
  enc = mini_vit
  dec = heads.MAEDecoder(num_patches=enc.num_patches, encoder_dim=32,
                         decoder_dim=16, depth=1, num_heads=2,
                         patch_dim=4 * 4 * 3, rngs=nnx.Rngs(1))
  tokens = enc.embed_patches(_images())
  n, k = enc.num_patches, 12
  ids_shuffle = jax.vmap(lambda key: jax.random.permutation(key, n))(
      jax.random.split(jax.random.key(0), 2))
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  visible = jnp.take_along_axis(tokens, ids_shuffle[:, :k, None], axis=1)
  latent = nnx.eval_shape(lambda e, v: e.encode_tokens(v), enc, visible)
  assert latent.shape == (2, 1 + k, 32)
  assert nnx.eval_shape(lambda d, z, ids: d(z, ids), dec, latent,
                        ids_restore).shape == (2, n, 48)


def test_mlp_head_and_classifier(mini_vit):
  head = heads.MLPHead(8, 16, 4, num_layers=3, last_bn=True, rngs=nnx.Rngs(0))
  assert head(jnp.ones((5, 8)), train=True).shape == (5, 4)
  assert len(jax.tree.leaves(nnx.state(head, nnx.BatchStat))) == 6
  clf = heads.Classifier(mini_vit, 3, rngs=nnx.Rngs(1))
  assert clf.encoder is mini_vit
  assert clf(_images()).shape == (2, 3)


@pytest.mark.parametrize('name', ['resnet18', 'mini_vit'])
def test_functional_split_merge_grads(name, request):
  """The train-step pattern: split once, merge(copy=True) inside jax.jit."""
  encoder = request.getfixturevalue(name)
  model = heads.Classifier(encoder, 3, rngs=nnx.Rngs(1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x, y = _images(b=4), jnp.array([0, 1, 2, 0])

  @jax.jit
  def step(params, rest, x, y):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      logits = m(x, train=True)
      loss = -jnp.mean(jnp.take_along_axis(
          jax.nn.log_softmax(logits), y[:, None], axis=1))
      return loss, nnx.state(m, nnx.BatchStat)
    return jax.grad(loss_fn, has_aux=True)(params)

  grads, new_stats = step(params, rest, x, y)
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads['head']['linear']['kernel'][...]).sum()) > 0
  if name == 'resnet18':
    old = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert any(not np.array_equal(a, b)
               for a, b in zip(old, jax.tree.leaves(new_stats)))


@pytest.mark.parametrize("zero,expected", [(True, 0.0), (False, 1.0)])
def test_zero_init_residual_is_a_choice(zero, expected):
  """Goyal et al.'s zero-init of each block's last BN scale (the default) or
  PyTorch's ones (the MedMNIST v2 recipe's ResNet)."""
  net = models.get("resnet18")(in_channels=1, image_size=28, rngs=nnx.Rngs(0),
                               width_multiplier=1 / 16,
                               zero_init_residual=zero)
  for stage in net.stages:
    for block in stage:
      np.testing.assert_array_equal(np.asarray(block.bn2.scale[...]), expected)
  assert float(np.asarray(net.stem_bn.scale[...]).min()) == 1.0


@pytest.mark.parametrize("init,std_times_sqrt_fan", [
    ("kaiming_fan_out", None), ("torch_default", (1 / 3) ** 0.5)])
def test_conv_init_draws_the_named_distribution(init, std_times_sqrt_fan):
  """torchvision's Kaiming fan-out normal (default) or PyTorch's nn.Conv
  default U(+-1/sqrt(fan_in)) (the MedMNIST v2 reference ResNet)."""
  net = models.get("resnet18")(in_channels=1, image_size=28, rngs=nnx.Rngs(0),
                               width_multiplier=0.5, conv_init=init)
  kernel = np.asarray(net.stages[3][1].conv1.kernel[...])  # 3x3, 256 -> 256
  fan_in, fan_out = 9 * kernel.shape[2], 9 * kernel.shape[3]
  if std_times_sqrt_fan is None:  # normal, std sqrt(2 / fan_out)
    np.testing.assert_allclose(kernel.std(), (2 / fan_out) ** 0.5, rtol=0.02)
    assert np.abs(kernel).max() > 3 / fan_in ** 0.5  # unbounded tails
  else:
    np.testing.assert_allclose(kernel.std() * fan_in ** 0.5,
                               std_times_sqrt_fan, rtol=0.02)
    assert np.abs(kernel).max() <= 1 / fan_in ** 0.5


def test_conv_init_names_the_field_when_unknown():
  with pytest.raises(ValueError, match="model.conv_init"):
    models.get("resnet18")(in_channels=1, image_size=28, rngs=nnx.Rngs(0),
                           width_multiplier=1 / 16, conv_init="he")


@pytest.mark.parametrize("init", ["zeros", "torch_default"])
def test_classifier_head_init_is_a_choice(init):
  """big_vision's zero head (default) or PyTorch's nn.Linear default
  U(+-1/sqrt(fan_in)) for kernel and bias (the MedMNIST reference)."""
  from ssl_jax.models.heads import LinearHead  # noqa: PLC0415
  head = LinearHead(512, 2, rngs=nnx.Rngs(0), init=init)
  kernel = np.asarray(head.linear.kernel[...])
  bias = np.asarray(head.linear.bias[...])
  if init == "zeros":
    assert not kernel.any() and not bias.any()
  else:
    bound = 1 / 512 ** 0.5
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    np.testing.assert_allclose(kernel.std(), bound / 3 ** 0.5, rtol=0.1)
  with pytest.raises(ValueError, match="finetune.head_init"):
    LinearHead(512, 2, rngs=nnx.Rngs(0), init="he")
