"""How programs compile: XLA:CPU options chosen per program, by what the
model holds, and the compiled programs kept across runs.

jaxlib 0.10 hands convolutions, among them every weight gradient, to
YNNPACK by default. On this kind of CPU that path ran 1.5-3x slower than
XLA's own Eigen convolutions for ResNet shapes (bench/conv_ops.py,
docs/performance.md), while YNNPACK's dots help a ViT. So programs of a
model that holds a convolution compile with YNNPACK fusions off, and every
other program keeps jaxlib's defaults. Off CPU nothing changes.

A flag the user sets in XLA_FLAGS is a process default; the options here
override it for conv programs only. SSL_JAX_NO_CPU_OPTIONS=1 turns them off
(to measure jaxlib's defaults).

`use_compilation_cache` turns on JAX's persistent compilation cache under
ssl_jax's user cache (SSL_JAX_CACHE_DIR moves it, SSL_JAX_COMPILE_CACHE=0
turns it off, a JAX_COMPILATION_CACHE_DIR the user set wins).
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import platform
from typing import Any

import jax

CONV_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# The ResNet conv layers (ssl_jax/models/layers.py, resnet.py). A ViT's patch
# embedding (one strided nnx.Conv) does not count: its program is dots.
CONV_MODULES = ("ssl_jax.models.layers.Conv",
                "ssl_jax.models.resnet.DepthStackedConv3d")


def _has_conv(graphdef) -> bool:
  types = (getattr(n, "type", None) for n in getattr(graphdef, "nodes", ()))
  return any(f"{t.__module__}.{t.__qualname__}" in CONV_MODULES
             for t in types if isinstance(t, type))


def compiler_options(*graphdefs) -> dict[str, Any] | None:
  """Options for `jax.jit(..., compiler_options=...)` of a program running
  the models split into `graphdefs` (nnx.split's first output)."""
  if (jax.default_backend() != "cpu"
      or os.environ.get("SSL_JAX_NO_CPU_OPTIONS") == "1"):
    return None
  return dict(CONV_CPU_OPTIONS) if any(map(_has_conv, graphdefs)) else None


def jit(fn, graphdef, **kwargs):
  """`jax.jit(fn, **kwargs)` compiled with the options for `graphdef`."""
  return jax.jit(fn, compiler_options=compiler_options(graphdef), **kwargs)


def cache_dir() -> pathlib.Path:
  """ssl_jax's user cache (built libraries, compiled programs):
  SSL_JAX_CACHE_DIR, else the platform's user cache directory."""
  if os.environ.get("SSL_JAX_CACHE_DIR"):
    return pathlib.Path(os.environ["SSL_JAX_CACHE_DIR"])
  import platformdirs  # noqa: PLC0415
  return pathlib.Path(platformdirs.user_cache_dir("ssl_jax"))


def host_fingerprint() -> str:
  """A short hash of this CPU's model and instruction-set flags.

  Why: XLA:CPU executables are machine code for the CPU that compiled them,
  and JAX's cache key names the platform only ('cpu'), so a cache in a home
  directory shared by nodes of different CPUs would hand one node's code
  to another."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    wanted = ("model name", "flags", "Features", "CPU part")
    text = "\n".join(dict.fromkeys(l for l in lines if l.startswith(wanted)))
  except OSError:
    text = ""
  text += f"\n{platform.machine()}\n{platform.processor()}"
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def use_compilation_cache() -> pathlib.Path | None:
  """Keeps programs that took over a second to compile on disk, keyed by
  jaxlib version and CPU, so a later run of the same shapes (another seed,
  a resumed sweep, stage 2 after pretraining) loads them instead of
  compiling again. Returns the directory in use, None when turned off.

  Results are unchanged: a hit loads the same executable XLA built. An
  entry a killed run left half-written fails to read, with a warning, and
  the program compiles again (deleting the directory clears it)."""
  if os.environ.get("SSL_JAX_COMPILE_CACHE") == "0":
    return None
  if jax.config.jax_compilation_cache_dir:  # the user's own choice wins
    return pathlib.Path(jax.config.jax_compilation_cache_dir)
  import jaxlib  # noqa: PLC0415
  path = cache_dir() / "xla" / f"jaxlib-{jaxlib.__version__}-{host_fingerprint()}"
  jax.config.update("jax_compilation_cache_dir", str(path))
  return path
