"""Convolution and BatchNorm whose computation is chosen by backend.

The params are nnx.Conv's and nnx.BatchNorm's (`kernel`; `scale`, `bias`,
`mean`, `var`), so checkpoints, `init_from` and exports do not depend on the
choice; only how the numbers are computed changes:

- `norm_impl='matmul'`: the batch statistics and the backward's sums are
  matrix-vector products (ones @ x, per block of rows, then summed).
  XLA:CPU splits a reduction over B * H * W rows into a slow two-stage
  reduce-window; gemvs over the same rows run 2-6x faster there. Same
  maths, float32 statistics, a hand-written VJP (the standard BatchNorm
  backward) so autodiff adds no reductions of its own.
- `conv_impl='matmul_1x1'`: 1x1 convs (ResNet shortcuts, bottlenecks) are
  (strided) matmuls; larger kernels stay XLA's convolutions, which measured
  faster here than patches + matmul or per-tap matmul weight gradients
  (bench/conv_ops.py); their programs compile with XLA's Eigen convs
  (ssl_jax/runtime.py).
- `conv_impl='cpu'`: 'matmul_1x1', and the weight gradient of larger
  kernels reads operands that XLA cannot re-fuse (`unfused`): 1.24-1.36x
  the demo's whole step on this CPU.
- `conv_impl='onednn'`: 'cpu', with every float32 2D conv larger than 1x1
  (and the depth-stacked 3D conv's) by oneDNN, forward and both gradients,
  through XLA's FFI (ssl_jax/models/onednn.py): 1.35-1.5x the demo's whole
  step again.
- 'auto' picks 'matmul' BatchNorm on CPU and 'onednn' convs on one CPU
  device where oneDNN is built ('cpu' otherwise), and XLA's own ops
  (cuDNN, TPU) elsewhere.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models import onednn

Array = jax.Array

CONV_IMPLS = ('auto', 'xla', 'matmul_1x1', 'cpu', 'onednn')
NORM_IMPLS = ('auto', 'xla', 'matmul')

# How conv kernels are drawn (`model.conv_init`): torchvision's ResNet
# (Kaiming normal, fan-out) or PyTorch's plain nn.Conv default
# (Kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in))), which the
# MedMNIST v2 reference ResNet keeps.
CONV_INITS = {
    'kaiming_fan_out': nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    'torch_default': nnx.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
}


def conv_initializer(name: str):
  if name not in CONV_INITS:
    raise ValueError(f'model.conv_init must be one of {tuple(CONV_INITS)}, '
                     f'got {name!r}')
  return CONV_INITS[name]


def _resolve(impl: str, choices: tuple[str, ...], fast, field: str) -> str:
  if impl not in choices:
    raise ValueError(f'model.{field} must be one of {choices}, got {impl!r}')
  if impl == 'auto':
    return fast() if jax.default_backend() == 'cpu' else 'xla'
  return impl


def _fastest_cpu_conv() -> str:
  """oneDNN's convs on one CPU device where they are built. Over several
  (virtual) CPU devices XLA's partitioner gathers the batch into a custom
  call and every device runs it whole, each with all cores' threads: XLA's
  convs there."""
  if jax.local_device_count() == 1 and onednn.available():
    return 'onednn'
  return 'cpu'


def resolve_conv_impl(impl: str) -> str:
  impl = _resolve(impl, CONV_IMPLS, _fastest_cpu_conv, 'conv_impl')
  if impl == 'onednn' and not onednn.available():
    raise ValueError("model.conv_impl='onednn' needs oneDNN and a C++ "
                     f'compiler: {onednn.unavailable_reason()}')
  return impl


resolve_norm_impl = functools.partial(_resolve, choices=NORM_IMPLS,
                                      fast=lambda: 'matmul', field='norm_impl')


# ------------------------------------------------------------------ matmuls

def over_rows(fn, x: Array) -> Array:
  """fn (a matmul over the last axis) applied to x flattened to 2D rows,
  the result reshaped back: [..., C] -> [..., C'].

  Why: the kernel gradient of a matmul over [B, N, C] (or [B, H, W, C])
  contracts several axes, and XLA:CPU canonicalises that contraction with
  a transposed copy of an activation before a slower dot; over [rows, C]
  it is a plain 2D dot with no copy. On ViT-Ti MAE those copies took 17 %
  of the step (bench/op_profile.py).
  """
  y = fn(x.reshape(-1, x.shape[-1]))
  return y.reshape(*x.shape[:-1], y.shape[-1])


# ---------------------------------------------------------------- convolution

def xla_conv(x: Array, kernel: Array, stride: int, pad: int) -> Array:
  nd = x.ndim - 2
  spec = {1: ('NWC', 'WIO', 'NWC'), 2: ('NHWC', 'HWIO', 'NHWC'),
          3: ('NDHWC', 'DHWIO', 'NDHWC')}[nd]
  return jax.lax.conv_general_dilated(
      x, kernel, (stride,) * nd, ((pad, pad),) * nd, dimension_numbers=spec)


def unfused(fn, args: tuple, witness: Array):
  """fn(*args), computed from args as stored in memory.

  XLA fuses the elementwise ops that produced an activation (BatchNorm,
  ReLU, the residual add) into whatever consumes it, recomputing them. In
  a conv weight gradient the consumer is a transpose to batch-minor
  layout, and the fused loop then reads its inputs in transposed order: on
  XLA:CPU 5x slower than transposing the stored tensor (docs/performance.md).
  A conditional is a boundary fusion does not cross, so fn
  runs as both branches of one whose predicate XLA cannot fold (from
  `witness`, any small traced array, e.g. a replicated param); either
  branch gives the same result. XLA:CPU drops `lax.optimization_barrier`
  before fusion, so that is no substitute.
  """
  pred = jnp.isfinite(witness.reshape(-1)[0])
  return jax.lax.cond(pred, fn, fn, *args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_unfused_weight_grad(x: Array, kernel: Array, stride: int, pad: int
                             ) -> Array:
  """2D `xla_conv` whose weight gradient transposes x and dy unfused.

  Same maths as autodiff of `xla_conv`: the weight gradient is the conv
  JAX's transpose rule would emit, given its operands already in the
  layouts XLA:CPU's Eigen conv wants (x as [C, H, W, N], dy as
  [H', W', N, O]), so XLA adds no fused transposes of its own.
  """
  return xla_conv(x, kernel, stride, pad)


def _conv_uwg_fwd(x, kernel, stride, pad):
  return xla_conv(x, kernel, stride, pad), (x, kernel)


def _conv_uwg_bwd(stride, pad, res, dy):
  x, kernel = res
  dx = jax.vjp(lambda x: xla_conv(x, kernel, stride, pad), x)[1](dy)[0]
  x_t, dy_t = unfused(lambda x, dy: (x.transpose(3, 1, 2, 0),
                                     dy.transpose(1, 2, 0, 3)),
                      (x, dy), witness=kernel)
  k, size, out = kernel.shape[0], x.shape[1], dy.shape[1]
  # dW[i, j, c, o] = sum over n, h, w of x_pad[n, s*h + i, s*w + j, c]
  # * dy[n, h, w, o]: a conv of x (batch c, features n) with dy as kernel
  # (dilated by the stride), padded so the output is k x k.
  padding = ((pad, stride * (out - 1) + k - size - pad),) * 2
  dw = jax.lax.conv_general_dilated(
      x_t, dy_t, (1, 1), padding, rhs_dilation=(stride, stride),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # [C, k, k, O]
  return dx, dw.transpose(1, 2, 0, 3).astype(kernel.dtype)


conv_unfused_weight_grad.defvjp(_conv_uwg_fwd, _conv_uwg_bwd)


def conv_1x1_matmul(x: Array, kernel: Array, stride: int) -> Array:
  """A 1x1 conv as a (strided) matmul, no conv machinery."""
  x = x[(slice(None),) + (slice(None, None, stride),) * (x.ndim - 2)]
  return over_rows(lambda rows: rows @ kernel.reshape(kernel.shape[-2:]), x)


def apply_conv(x: Array, kernel: Array, stride: int, pad: int, impl: str
               ) -> Array:
  """The conv as a resolved `conv_impl` computes it."""
  if impl == 'xla':
    return xla_conv(x, kernel, stride, pad)
  if kernel.shape[0] == 1:
    return conv_1x1_matmul(x, kernel, stride)
  if impl == 'onednn' and onednn.supports(x, kernel):
    return onednn.conv2d(x, kernel, stride, pad)
  if impl in ('cpu', 'onednn') and x.ndim == 4:
    return conv_unfused_weight_grad(x, kernel, stride, pad)
  return xla_conv(x, kernel, stride, pad)


class Conv(nnx.Module):
  """Bias-free conv, padding k // 2 (torchvision's), `kernel` laid out as
  nnx.Conv's: [k] * spatial_dims + [C_in, C_out]."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *,
               spatial_dims: int = 2, impl: str = 'auto', dtype=jnp.float32,
               init: str = 'kaiming_fan_out', rngs: nnx.Rngs):
    self.kernel = nnx.Param(conv_initializer(init)(
        rngs.params(), (kernel,) * spatial_dims + (in_ch, out_ch)))
    self.stride = stride
    self.impl = resolve_conv_impl(impl)
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    kernel = self.kernel[...].astype(self.dtype)
    return apply_conv(x.astype(self.dtype), kernel, self.stride,
                      kernel.shape[0] // 2, self.impl)


# ------------------------------------------------------------------ BatchNorm

def _row_mean(x: Array) -> Array:
  """Mean over every axis but the last, in float32, as batched gemvs.

  The rows are cut into blocks (the last two spatial axes of an image or a
  volume slice, e.g. 784 rows at 28 px; all rows of a [N, C] input), each
  block's mean is a gemv, and the block means are summed. One gemv over
  all B * H * W rows would add ~1e5 terms one after another in float32:
  with a non-zero channel mean that lost ~1e-3 of the statistics and of
  the backward's sums, 100x XLA's own reduction (tests/test_layers.py
  checks against float64).
  """
  c = x.shape[-1]
  block = x.shape[-3] * x.shape[-2] if x.ndim >= 4 else x.size // c
  x3 = x.reshape(-1, block, c)
  ones = jnp.full(x3.shape[:2], 1.0 / (x3.shape[0] * block), x.dtype)
  return jnp.einsum('bs,bsc->bc', ones, x3,
                    preferred_element_type=jnp.float32).sum(0)


def _stats(x: Array) -> tuple[Array, Array]:
  """Batch mean and biased variance per channel (flax's fast variance)."""
  mean = _row_mean(x)
  var = jnp.maximum(0.0, _row_mean(x * x) - mean * mean)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array, eps: float
                     ) -> tuple[Array, Array, Array]:
  """Training-mode BatchNorm over every axis but the last: (y, mean, var).

  mean and var (for the running averages) carry no gradient.
  """
  return _bn_fwd(x, scale, bias, eps)[0]


def _bn_fwd(x, scale, bias, eps):
  mean, var = _stats(x)
  rstd = jax.lax.rsqrt(var + eps)
  y = ((x - mean) * (rstd * scale) + bias).astype(x.dtype)
  return (y, mean, var), (x, scale, mean, rstd)


def _bn_bwd(eps, res, cotangents):
  del eps
  x, scale, mean, rstd = res
  dy = cotangents[0].astype(jnp.float32)
  xhat = (x - mean) * rstd
  mean_dy = _row_mean(dy)
  mean_dy_xhat = _row_mean(dy * xhat)
  n = dy.size // dy.shape[-1]
  dx = (scale * rstd) * (dy - mean_dy - xhat * mean_dy_xhat)
  return dx.astype(x.dtype), mean_dy_xhat * n, mean_dy * n


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


def batch_norm_reference(x: Array, scale: Array, bias: Array, eps: float
                         ) -> tuple[Array, Array, Array]:
  """`batch_norm_train` with jnp reductions and autodiff (flax's maths)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)
  y = (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias
  return y.astype(x.dtype), mean, var


class BatchNorm(nnx.Module):
  """nnx.BatchNorm's params, statistics and maths (momentum, epsilon,
  biased fast variance, float32 statistics), computed by `impl`."""

  def __init__(self, features: int, *, momentum: float = 0.9,
               epsilon: float = 1e-5, zero_scale: bool = False,
               impl: str = 'auto', dtype=jnp.float32, rngs: nnx.Rngs):
    rngs.params(), rngs.params()  # nnx.BatchNorm's two keys: same model init
    self.scale = nnx.Param((jnp.zeros if zero_scale else jnp.ones)(
        (features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
    self.momentum = momentum
    self.epsilon = epsilon
    self.impl = resolve_norm_impl(impl)
    self.dtype = dtype

  def __call__(self, x: Array, use_running_average: bool = False) -> Array:
    x = x.astype(jnp.float32)
    scale, bias = self.scale[...], self.bias[...]
    if use_running_average:
      y = (x - self.mean[...]) * (jax.lax.rsqrt(self.var[...] + self.epsilon)
                                  * scale) + bias
      return y.astype(self.dtype)
    train_fn = (batch_norm_train if self.impl == 'matmul'
                else batch_norm_reference)
    y, mean, var = train_fn(x, scale, bias, self.epsilon)
    m = self.momentum
    self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
    self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
    return y.astype(self.dtype)
