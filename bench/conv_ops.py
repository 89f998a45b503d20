"""Per-op timings behind `model.conv_impl` / `model.norm_impl` (layers.py).

  python bench/conv_ops.py [--batch=256] [--repeats=5] [--width=0.25]

For every 3x3 conv shape of a small-stem ResNet-18 at 28 px (width
`--width`, batch `--batch` = both SimCLR views of a 128 batch by default),
prints forward, input-gradient and weight-gradient GFLOP/s of each conv
candidate tried (XLA's conv with jaxlib's default options, which hand it to
YNNPACK, and with ssl_jax's conv-program options, which keep XLA's Eigen
conv (ssl_jax/runtime.py); with XLA's oneDNN switches on; patches + matmul,
differentiated by JAX; XLA's forward with the weight gradient as 9 tap
matmuls; oneDNN's three convs through XLA's FFI, `conv_impl='onednn'`, when
libdnnl is installed), then forward+backward
milliseconds of each BatchNorm implementation on the same activations. Implementations are timed
interleaved in one process, best of `--repeats`, so a busy machine slows
them alike. Figures, not a test: compare columns within a row.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssl_jax import runtime  # noqa: E402
from ssl_jax.models import layers, onednn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def best_seconds(fn, args, repeats: int, inner: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    began = time.perf_counter()
    for _ in range(inner):
      out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - began) / inner)
  return best


def _taps(x, stride: int, out_size: int) -> list:
  """The 9 shifted (strided) views of the padded input a 3x3 kernel meets."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  end = stride * (out_size - 1) + 1
  return [xp[:, i:i + end:stride, j:j + end:stride] for i in range(3)
          for j in range(3)]


def xla_conv(x, w, stride):
  return layers.xla_conv(x, w, stride, 1)


def im2col_conv(x, w, stride):
  """Patches [B, Ho, Wo, 9C] @ W[9C, O]; autodiff gives matmul gradients."""
  out = (x.shape[1] - 1) // stride + 1
  return jnp.concatenate(_taps(x, stride, out), -1) @ w.reshape(-1, w.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tap_dw_conv(x, w, stride):
  """XLA forward and input gradient; weight gradient as 9 matmuls
  dW[i, j] = tap_ij(x)^T @ dy over every output pixel of the batch."""
  return xla_conv(x, w, stride)


def _tap_dw_fwd(x, w, stride):
  return xla_conv(x, w, stride), (x, w)


def _tap_dw_bwd(stride, res, dy):
  x, w = res
  dx = jax.vjp(lambda x: xla_conv(x, w, stride), x)[1](dy)[0]
  dy2 = dy.reshape(-1, dy.shape[-1])
  dw = jnp.stack([t.reshape(-1, x.shape[-1]).T @ dy2
                  for t in _taps(x, stride, dy.shape[1])])
  return dx, dw.reshape(w.shape)


tap_dw_conv.defvjp(_tap_dw_fwd, _tap_dw_bwd)
# XLA's oneDNN switches. jaxlib 0.10.2's XLA:CPU accepts them but emits no
# oneDNN call for these convs (main() prints the compiled program's custom
# calls), so this column times XLA's own path again.
ONEDNN_OPTIONS = {'xla_cpu_use_onednn': True,
                  'xla_cpu_experimental_onednn_custom_call': True,
                  **runtime.CONV_CPU_OPTIONS}
# name -> (conv, XLA:CPU options): jaxlib's defaults (YNNPACK takes the
# convs), XLA's Eigen convs (ssl_jax's choice), the oneDNN switches, and two
# matmul forms.
CANDIDATES = {'xla_ynnpack': (xla_conv, None),
              'xla_eigen': (xla_conv, runtime.CONV_CPU_OPTIONS),
              'xla_onednn_flags': (xla_conv, ONEDNN_OPTIONS),
              'im2col': (im2col_conv, runtime.CONV_CPU_OPTIONS),
              'tap_dw': (tap_dw_conv, runtime.CONV_CPU_OPTIONS)}
if onednn.available():
  CANDIDATES['onednn_ffi'] = (lambda x, w, stride: onednn.conv2d(x, w, stride, 1),
                              runtime.CONV_CPU_OPTIONS)


def conv_fns(impl: str, stride: int):
  """(forward, input-gradient, weight-gradient) jitted for one candidate."""
  fn, options = CANDIDATES[impl]
  conv = functools.partial(fn, stride=stride)
  jit = functools.partial(jax.jit, compiler_options=options)
  fwd = jit(conv)
  dx = jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy))
  dw = jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy))
  return fwd, dx, dw


def resnet18_convs(width: float, batch: int):
  """(batch, size, c_in, c_out, stride) of each distinct 3x3 conv."""
  base = max(1, int(round(64 * width)))
  shapes, size = [], 28
  for stage in range(4):
    c = base * 2**stage
    if stage:
      shapes.append((batch, size, c // 2, c, 2))
      size = (size + 1) // 2
    shapes.append((batch, size, c, c, 1))
  return shapes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  print(f'devices: {jax.devices()}  XLA_FLAGS: {os.environ.get("XLA_FLAGS")}')
  x, w = jnp.ones((8, 28, 28, 16)), jnp.ones((3, 3, 16, 16))
  compiled = conv_fns('xla_onednn_flags', 1)[0].lower(x, w).compile().as_text()
  calls = sorted({t.split('"')[1] for t in compiled.split('custom_call_target=')[1:]})
  print(f'custom calls of a conv compiled with the oneDNN switches: {calls or "none"}')
  print(f'oneDNN through the FFI: {onednn.available() or onednn.unavailable_reason()}')
  impls = tuple(CANDIDATES)
  print('| conv (B, px, Cin->Cout, stride) | '
        + ' | '.join(f'{i} fwd / dx / dw GFLOP/s' for i in impls) + ' |')
  print('|---|' + '---|' * len(impls))
  key = jax.random.PRNGKey(0)
  for b, px, ci, co, s in resnet18_convs(args.width, args.batch):
    x = jax.random.normal(key, (b, px, px, ci))
    w = jax.random.normal(key, (3, 3, ci, co)) * 0.1
    dy = jnp.ones_like(layers.xla_conv(x, w, s, 1))
    gflop = 2 * dy.size * 9 * ci / 1e9
    cells = []
    for impl in impls:
      fwd, dx, dw = conv_fns(impl, s)
      times = (best_seconds(fwd, (x, w), args.repeats),
               best_seconds(dx, (x, w, dy), args.repeats),
               best_seconds(dw, (x, w, dy), args.repeats))
      cells.append(' / '.join(f'{gflop / t:.0f}' for t in times))
    print(f'| {b}, {px}, {ci}->{co}, {s} | ' + ' | '.join(cells) + ' |',
          flush=True)

  print('\n| BatchNorm activations | xla fwd+bwd ms | matmul fwd+bwd ms |')
  print('|---|---|---|')
  for b, px, _, c, s in resnet18_convs(args.width, args.batch):
    px = px if s == 1 else (px + 1) // 2
    x = jax.random.normal(key, (b, px, px, c))
    scale, bias = jnp.ones((c,)), jnp.zeros((c,))
    cells = []
    for train_fn in (layers.batch_norm_reference, layers.batch_norm_train):
      def loss(x, scale, bias, train_fn=train_fn):
        return jnp.vdot(train_fn(x, scale, bias, 1e-5)[0], x)
      step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)),
                     compiler_options=runtime.CONV_CPU_OPTIONS)
      cells.append(f'{1e3 * best_seconds(step, (x, scale, bias), args.repeats):.1f}')
    print(f'| {b}x{px}x{px}x{c} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  main()
