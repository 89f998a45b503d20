"""The backend-chosen conv and BatchNorm (ssl_jax/models/layers.py) compute
the same numbers as XLA's conv and flax's nnx.BatchNorm, with the same
params, so switching `model.conv_impl` / `model.norm_impl` changes speed,
not maths or checkpoints."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import runtime
from ssl_jax.models import layers, onednn, resnet, vit

# The oneDNN path needs libdnnl and a C++ compiler (.ci/run installs them;
# without them `auto` keeps XLA's convs and these cases skip).
ONEDNN = pytest.param('onednn', marks=pytest.mark.skipif(
    not onednn.available(),
    reason=f'oneDNN conv unavailable: {onednn.unavailable_reason()}'))


def _conv_pair(kernel, stride, c_in=3, c_out=5, spatial_dims=2, impl='cpu'):
  fast = layers.Conv(c_in, c_out, kernel, stride, spatial_dims=spatial_dims,
                     impl=impl, rngs=nnx.Rngs(0))
  ref = layers.Conv(c_in, c_out, kernel, stride, spatial_dims=spatial_dims,
                    impl='xla', rngs=nnx.Rngs(0))
  return fast, ref


@pytest.mark.parametrize('impl', ['matmul_1x1', 'cpu', ONEDNN])
@pytest.mark.parametrize('kernel,stride,size', [
    (1, 1, 9), (1, 2, 9), (1, 2, 8), (3, 1, 7), (3, 2, 9), (3, 2, 8),
    (7, 2, 11), (7, 2, 10)])
def test_conv_forward_and_both_gradients_equal_xla(kernel, stride, size, impl):
  fast, ref = _conv_pair(kernel, stride, impl=impl)
  np.testing.assert_array_equal(fast.kernel[...], ref.kernel[...])
  x = jax.random.normal(jax.random.PRNGKey(1), (7, size, size, 3))
  y_ref = ref(x)
  dy = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape)

  def grads(module):
    graphdef, params = nnx.split(module)
    def f(x, params):
      return jnp.vdot(nnx.merge(graphdef, params)(x), dy)
    dx, dparams = jax.grad(f, argnums=(0, 1))(x, params)
    return dx, dparams['kernel'][...]

  np.testing.assert_allclose(fast(x), y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(grads(fast), grads(ref)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_1x1_on_volumes_equals_xla():
  fast, ref = _conv_pair(1, 2, spatial_dims=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 5, 3))
  np.testing.assert_allclose(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_impl_names_are_checked_and_auto_resolves_by_backend():
  with pytest.raises(ValueError, match='model.conv_impl'):
    layers.resolve_conv_impl('im2col')
  with pytest.raises(ValueError, match='model.norm_impl'):
    layers.resolve_norm_impl('fast')
  assert jax.default_backend() == 'cpu'
  assert layers.resolve_conv_impl('auto') == (
      'onednn' if onednn.available() and jax.local_device_count() == 1
      else 'cpu')
  assert layers.resolve_norm_impl('auto') == 'matmul'
  assert layers.resolve_norm_impl('xla') == 'xla'


@pytest.mark.skipif(not os.path.exists('/usr/include/oneapi/dnnl/dnnl.hpp'),
                    reason='libdnnl-dev not installed')
def test_onednn_builds_where_its_headers_are_installed():
  assert onednn.available(), onednn.unavailable_reason()


def test_without_onednn_auto_keeps_xla_convs_and_onednn_says_why(monkeypatch):
  monkeypatch.setattr(onednn, 'available', lambda: False)
  monkeypatch.setattr(onednn, '_reason', ['libdnnl.so: not found'])
  assert layers.resolve_conv_impl('auto') == 'cpu'
  with pytest.raises(ValueError, match="conv_impl='onednn'.*libdnnl.so"):
    layers.resolve_conv_impl('onednn')


def test_auto_keeps_xla_convs_over_several_cpu_devices(monkeypatch):
  """The partitioner would gather the batch into every oneDNN custom call."""
  monkeypatch.setattr(onednn, 'available', lambda: True)
  monkeypatch.setattr(jax, 'local_device_count', lambda: 4)
  assert layers.resolve_conv_impl('auto') == 'cpu'
  monkeypatch.setattr(jax, 'local_device_count', lambda: 1)
  assert layers.resolve_conv_impl('auto') == 'onednn'


def test_onednn_build_failure_names_the_source(monkeypatch, tmp_path):
  monkeypatch.setenv('SSL_JAX_CACHE_DIR', str(tmp_path))
  monkeypatch.setenv('CXX', 'false')
  with pytest.raises(RuntimeError, match='compiling onednn_conv.cc failed'):
    onednn._build()
  assert not list(tmp_path.glob('*.so'))  # nothing half-written is left


@pytest.mark.parametrize('impl', [ONEDNN])
def test_onednn_gradients_run_concurrently_are_those_run_alone(impl):
  """XLA runs independent custom calls of one program at the same time from
  its own threads. Each conv must give the bits it gives alone: with
  oneDNN's shared scratchpad, concurrent weight gradients overwrote each
  other's partial sums (a resumed sweep then differed from the original)."""
  del impl
  shapes = [(64, 14, 16, 16), (64, 14, 16, 32), (64, 7, 32, 32), (32, 14, 8, 16)] * 2
  keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(shapes))
  xs = [jax.random.normal(k, (n, s, s, c)) for k, (n, s, c, _) in zip(keys, shapes)]
  ws = [0.1 * jax.random.normal(k, (3, 3, c, o))
        for k, (_, _, c, o) in zip(keys[len(shapes):], shapes)]

  def kernel_grad(x, w):
    return jax.grad(lambda w: jnp.sum(jnp.sin(onednn.conv2d(x, w, 1, 1))))(w)

  alone = [jax.jit(kernel_grad)(x, w) for x, w in zip(xs, ws)]
  together = jax.jit(lambda xs, ws: [kernel_grad(x, w) for x, w in zip(xs, ws)])
  for _ in range(5):
    for got, want in zip(together(xs, ws), alone):
      np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('impl', [ONEDNN])
def test_onednn_falls_back_where_it_has_no_kernel(impl):
  """bfloat16 (and 3D kernels) take the XLA path under conv_impl='onednn'."""
  conv = layers.Conv(4, 8, 3, impl=impl, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  ref = layers.Conv(4, 8, 3, impl='xla', dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
  assert 'custom_call' not in jax.jit(conv).lower(x).as_text()
  np.testing.assert_array_equal(conv(x), ref(x))


@pytest.mark.parametrize('impl', ['matmul', 'xla'])
def test_batch_norm_matches_flax_in_train_and_eval(impl):
  """Output, running statistics and gradients equal nnx.BatchNorm's."""
  ours = layers.BatchNorm(6, momentum=0.9, epsilon=1e-5, impl=impl,
                          rngs=nnx.Rngs(0))
  theirs = nnx.BatchNorm(6, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
  # Non-trivial affine params, so their gradients are checked too.
  for bn in (ours, theirs):
    bn.scale[...] = jnp.linspace(0.5, 2.0, 6)
    bn.bias[...] = jnp.linspace(-1.0, 1.0, 6)
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 6))
  dy = jax.random.normal(jax.random.PRNGKey(1), x.shape)

  def loss_and_grads(bn):
    graphdef, params, rest = nnx.split(bn, nnx.Param, ...)
    def f(x, params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      y = m(x, use_running_average=False)
      return jnp.vdot(y, dy), (y, nnx.state(m, nnx.BatchStat))
    (_, (y, stats)), g = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        x, params)
    return y, stats, g

  y1, s1, (dx1, dp1) = loss_and_grads(ours)
  y2, s2, (dx2, dp2) = loss_and_grads(theirs)
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s1['mean'][...], s2['mean'][...], rtol=1e-6)
  np.testing.assert_allclose(s1['var'][...], s2['var'][...], rtol=1e-5)
  np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-5)
  for k in ('scale', 'bias'):
    np.testing.assert_allclose(dp1[k][...], dp2[k][...], rtol=1e-4, atol=1e-4)
  # Eval mode reads the running averages.
  np.testing.assert_allclose(ours(x, use_running_average=True),
                             theirs(x, use_running_average=True),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', ['matmul', 'xla'])
def test_batch_norm_is_float32_accurate_at_realistic_row_counts(impl):
  """At 128 x 28 x 28 rows with a non-zero channel mean the statistics and
  gradients stay within ~1e-5 of float64 (one gemv over all rows lost
  ~4e-3 of dx here, which drifted fine-tuning away from PyTorch's)."""
  rng = np.random.default_rng(0)
  x = (3.0 + 0.5 * rng.normal(size=(128, 28, 28, 8))).astype(np.float32)
  dy = rng.normal(size=x.shape).astype(np.float32)
  scale = np.linspace(0.5, 1.5, 8).astype(np.float32)
  train_fn = (layers.batch_norm_train if impl == 'matmul'
              else layers.batch_norm_reference)

  def f(x, scale, bias):
    y, mean, var = train_fn(x, scale, bias, 1e-5)
    return jnp.vdot(y, dy), (mean, var)

  (_, (mean, var)), grads = jax.jit(jax.value_and_grad(
      f, argnums=(0, 1, 2), has_aux=True))(x, scale, np.zeros(8, np.float32))
  x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
  mu, sigma2 = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
  xhat = (x64 - mu) / np.sqrt(sigma2 + 1e-5)
  dbias, dscale = dy64.sum((0, 1, 2)), (dy64 * xhat).sum((0, 1, 2))
  dx = scale / np.sqrt(sigma2 + 1e-5) * (
      dy64 - dbias / xhat[..., 0].size - xhat * dscale / xhat[..., 0].size)
  rel = lambda a, b: np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)
  assert rel(mean, mu) < 1e-6 and rel(var, sigma2) < 1e-5
  assert rel(grads[0], dx) < 2e-5
  assert rel(grads[1], dscale) < 2e-5 and rel(grads[2], dbias) < 2e-5


def test_resnet_impls_share_params_and_agree():
  """Same init (same rng draws as nnx.Conv / nnx.BatchNorm), same tree, same
  features and gradients whichever implementation computes them."""
  def build(conv_impl, norm_impl):
    return resnet.resnet18(in_channels=1, image_size=16, width_multiplier=0.125,
                           conv_impl=conv_impl, norm_impl=norm_impl,
                           rngs=nnx.Rngs(0))
  fast, ref = build('auto', 'auto'), build('xla', 'xla')
  fast_state, ref_state = nnx.state(fast), nnx.state(ref)
  assert jax.tree.structure(fast_state) == jax.tree.structure(ref_state)
  for a, b in zip(jax.tree.leaves(fast_state), jax.tree.leaves(ref_state)):
    np.testing.assert_array_equal(a, b)
  x = jax.random.uniform(jax.random.PRNGKey(3), (4, 16, 16, 1))

  def loss(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    def f(params):
      return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(
          x, train=True) ** 2)
    return jax.jit(jax.value_and_grad(f))(params)

  (l1, g1), (l2, g2) = loss(fast), loss(ref)
  np.testing.assert_allclose(l1, l2, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_conv_models_compile_without_ynnpack_and_others_keep_defaults():
  """Programs of a model holding a conv get the Eigen-conv option (and it
  takes effect); a ViT's keep jaxlib's defaults."""
  conv_graph, _ = nnx.split(resnet.resnet18(
      in_channels=1, image_size=8, width_multiplier=0.125, rngs=nnx.Rngs(0)))
  mlp_graph, _ = nnx.split(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
  vit_graph, _ = nnx.split(vit.vit_tiny(in_channels=1, image_size=8,
                                        patch_size=4, depth=1,
                                        rngs=nnx.Rngs(0)))
  assert runtime.compiler_options(conv_graph) == runtime.CONV_CPU_OPTIONS
  assert runtime.compiler_options(mlp_graph) is None
  assert runtime.compiler_options(vit_graph) is None  # patch embed: dots
  assert runtime.compiler_options(mlp_graph, conv_graph) is not None
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  grad = jax.jit(jax.grad(lambda w: jnp.sum(layers.xla_conv(x, w, 1, 1))),
                 compiler_options=runtime.compiler_options(conv_graph))
  assert '__ynn_fusion' not in grad.lower(w).compile().as_text()


def test_token_linear_is_nnx_linear_in_params_output_and_gradients():
  fast = vit.TokenLinear(6, 5, rngs=nnx.Rngs(0))
  ref = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
  fast_state, ref_state = nnx.state(fast, nnx.Param), nnx.state(ref, nnx.Param)
  assert jax.tree.structure(fast_state) == jax.tree.structure(ref_state)
  x = jax.random.normal(jax.random.key(1), (3, 7, 6))

  def loss(model, x):
    return jnp.sum(jnp.sin(model(x)))

  np.testing.assert_allclose(fast(x), ref(x), rtol=1e-6, atol=1e-6)
  assert fast(x).shape == (3, 7, 5) and fast(x[0]).shape == (7, 5)
  (g_fast, gx_fast) = nnx.grad(loss, argnums=(0, 1))(fast, x)
  (g_ref, gx_ref) = nnx.grad(loss, argnums=(0, 1))(ref, x)
  np.testing.assert_allclose(gx_fast, gx_ref, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_token_linear_kernel_gradient_needs_no_transposed_copy_on_cpu():
  """The cause TokenLinear removes: nnx.Linear on [B, N, D] has a kernel
  gradient that XLA:CPU compiles with a transposed copy of an activation."""
  x = jnp.ones((4, 50, 128))
  transposed_copy = 'f32[512,200]'  # [D_out, B * N]: the output gradient

  def kernel_grad_hlo(model):
    graph, params = nnx.split(model)
    grad = jax.jit(jax.grad(
        lambda p: jnp.sum(nnx.merge(graph, p)(x) ** 2)))
    return grad.lower(params).compile().as_text()

  fast = vit.TokenLinear(128, 512, rngs=nnx.Rngs(0))
  ref = nnx.Linear(128, 512, rngs=nnx.Rngs(0))
  if jax.default_backend() == 'cpu':
    assert transposed_copy in kernel_grad_hlo(ref)
  assert transposed_copy not in kernel_grad_hlo(fast)


def _fusions_transposing_a_relu(impl: str) -> int:
  """How many fused computations of a ReLU -> conv weight gradient both
  recompute the ReLU and transpose (XLA:CPU, Eigen conv options)."""
  conv = layers.Conv(8, 8, 3, impl=impl, rngs=nnx.Rngs(0))
  graph, params = nnx.split(conv)
  z = jax.random.normal(jax.random.key(0), (16, 12, 12, 8))

  def loss(params, z):
    return jnp.sum(nnx.merge(graph, params)(jax.nn.relu(z * 2.0 + 1.0)) ** 2)

  hlo = jax.jit(jax.grad(loss), compiler_options=runtime.CONV_CPU_OPTIONS
                ).lower(params, z).compile().as_text()
  bodies = hlo.split('\n\n')
  return sum(' transpose(' in b and ' maximum(' in b for b in bodies)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU fusion')
def test_cpu_conv_weight_gradient_transposes_the_stored_activation():
  """The cause `conv_impl='cpu'` removes: XLA fuses the ReLU that produced
  a conv's input into the transpose its weight gradient needs, recomputing
  it in transposed order (docs/performance.md)."""
  assert _fusions_transposing_a_relu('matmul_1x1') >= 1
  assert _fusions_transposing_a_relu('cpu') == 0
