"""XLA:CPU compiler options chosen per program, by what the model holds.

jaxlib 0.10 hands convolutions, among them every weight gradient, to
YNNPACK by default. On this kind of CPU that path ran 1.5-3x slower than
XLA's own Eigen convolutions for ResNet shapes (bench/conv_ops.py, README
"Performance"), while YNNPACK's dots help a ViT. So programs of a model that
holds a convolution compile with YNNPACK fusions off, and every other
program keeps jaxlib's defaults. Off CPU nothing changes.

A flag the user sets in XLA_FLAGS is a process default; the options here
override it for conv programs only. SSL_JAX_NO_CPU_OPTIONS=1 turns them off
(to measure jaxlib's defaults).
"""
from __future__ import annotations

import os
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
