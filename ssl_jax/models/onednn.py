"""2D convolutions by oneDNN on CPU (`model.conv_impl='onednn'`).

XLA:CPU runs convolutions through Eigen, and they are most of a small
ResNet's training step; at its narrow widths (16-128 channels) Eigen's
weight gradients ran at 47-179 GFLOP/s on two cores where oneDNN's run at
157-284, and its forward and input gradients up to 1.4x and 3.4x slower
(docs/performance.md). `onednn_conv.cc` exposes oneDNN's forward, input-gradient
and weight-gradient convolutions as XLA FFI handlers; here they are built
(once per source and jaxlib version, into the user cache), registered, and
joined into one differentiable conv with the same `kernel` layout and
maths as `lax.conv_general_dilated`.

One CPU device only, in practice: XLA's SPMD partitioner does not split a
custom call, so a step sharded over several (virtual) CPU devices would
gather the batch and run every conv whole on each; `auto` keeps XLA's
convs there (layers.py).

Needs a C++ compiler and oneDNN 2.x or 3.x, headers and library, where
the compiler looks (Debian/Ubuntu: `apt-get install libdnnl-dev`; else
CPATH, LIBRARY_PATH). Without them `available()` is False, says why in
`unavailable_reason()`, and `conv_impl='auto'` keeps XLA's convs.
SSL_JAX_ONEDNN=0 turns the path off; SSL_JAX_CACHE_DIR moves the build.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import runtime

Array = jax.Array

_SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
# XLA custom-call targets: PREFIX + '_' + pass (the handlers' symbol names).
PREFIX = 'ssl_jax_onednn_conv'
_PASSES = ('forward', 'input_grad', 'weight_grad')
_reason: list[str] = []


def _compile_command(output: pathlib.Path) -> list[str]:
  return [os.environ.get('CXX', 'g++'), '-O2', '-std=c++17', '-shared',
          '-fPIC', '-w', f'-I{jax.ffi.include_dir()}', str(_SOURCE),
          '-ldnnl', '-o', str(output)]


def _build() -> pathlib.Path:
  """The compiled library, built on first use and kept in the cache.

  Named by a hash of the source, jaxlib's version and the command, so an
  upgrade rebuilds; written to a temporary file and renamed, so concurrent
  processes (pytest-xdist workers) never load a half-written library.
  """
  import jaxlib
  key = hashlib.sha256(_SOURCE.read_bytes() + jaxlib.__version__.encode()
                       + ' '.join(_compile_command(pathlib.Path())).encode())
  target = runtime.cache_dir() / f'ssl_jax_onednn_conv_{key.hexdigest()[:16]}.so'
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    built = pathlib.Path(tmp) / target.name
    result = subprocess.run(_compile_command(built), capture_output=True,
                            text=True, check=False)
    if result.returncode:
      last = (result.stderr.strip().splitlines() or ['no output'])[-1]
      raise RuntimeError(f'compiling {_SOURCE.name} failed: {last}')
    os.replace(built, target)
  return target


@functools.cache
def available() -> bool:
  """Whether the oneDNN convs are built and registered with XLA:CPU."""
  if os.environ.get('SSL_JAX_ONEDNN') == '0':
    _reason.append('SSL_JAX_ONEDNN=0')
    return False
  try:
    library = ctypes.CDLL(str(_build()))
    for name in _PASSES:
      symbol = f'{PREFIX}_{name}'
      jax.ffi.register_ffi_target(
          symbol, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  except (OSError, RuntimeError, FileNotFoundError) as err:
    _reason.append(str(err))
    return False
  return True


def unavailable_reason() -> str:
  return _reason[-1] if _reason else ''


def supports(x: Array, kernel: Array) -> bool:
  """Shapes and dtypes sent here: 2D, float32, square kernels above 1x1.

  1x1 convs stay matmuls (layers.conv_1x1_matmul, as fast): oneDNN 2.6's
  strided 1x1 kernels (Debian 12's libdnnl) corrupted the heap at some
  batch sizes (N = 3-17 at 28 px, stride 2), while a sweep of 3x3 and 7x7
  shapes (N 1-17, 4-28 px, 1-64 channels, stride 1 and 2) ran clean.
  """
  return (x.ndim == 4 and kernel.ndim == 4
          and kernel.shape[0] == kernel.shape[1] > 1
          and x.dtype == jnp.float32 and kernel.dtype == jnp.float32)


def _call(name: str, out_shape: tuple[int, ...], a: Array, b: Array,
          stride: int, pad: int) -> Array:
  return jax.ffi.ffi_call(
      f'{PREFIX}_{name}',
      jax.ShapeDtypeStruct(out_shape, jnp.float32), vmap_method='sequential'
  )(a, b, stride=np.int64(stride), pad=np.int64(pad))


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - k) // stride + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: Array, kernel: Array, stride: int, pad: int) -> Array:
  """NHWC x HWIO conv, padding `pad` on every side: `layers.xla_conv`'s
  maths, both gradients by oneDNN too."""
  return _conv_fwd(x, kernel, stride, pad)[0]


def _conv_fwd(x, kernel, stride, pad):
  if not supports(x, kernel):
    raise ValueError('onednn.conv2d takes float32 x [N, H, W, C] and a square '
                     f'kernel above 1x1; got x {x.shape} {x.dtype}, kernel '
                     f'{kernel.shape} {kernel.dtype}')
  n, h, w, _ = x.shape
  k, o = kernel.shape[0], kernel.shape[-1]
  out = (n, _out_size(h, k, stride, pad), _out_size(w, k, stride, pad), o)
  return _call('forward', out, x, kernel, stride, pad), (x, kernel)


def _conv_bwd(stride, pad, res, dy):
  x, kernel = res
  dx = _call('input_grad', x.shape, dy, kernel, stride, pad)
  dw = _call('weight_grad', kernel.shape, x, dy, stride, pad)
  return dx, dw


conv2d.defvjp(_conv_fwd, _conv_bwd)
