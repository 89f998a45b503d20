"""Process-level settings that must precede JAX's first use of a device.

`configure()` is called by the entry points (run.py, bench/, tests'
conftest) before anything touches a device. It only adds XLA:CPU flags and
leaves GPU/TPU compilation as it is:

- `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions).
  jaxlib 0.10 hands convolutions, among them every weight gradient, to
  YNNPACK by default; on this kind of CPU that path ran 1.5-3x slower than
  XLA's own Eigen convolutions for ResNet shapes (bench/conv_ops.py, README
  "Performance").

A flag the user already put in XLA_FLAGS wins over ours;
SSL_JAX_NO_XLA_FLAGS=1 adds none (to measure jaxlib's defaults).
"""
from __future__ import annotations

import os

CPU_XLA_FLAGS = {
    "--xla_cpu_experimental_ynn_fusion_type": "",
}


def configure() -> None:
  """Adds the CPU flags above to XLA_FLAGS (idempotent, user flags first)."""
  if os.environ.get("SSL_JAX_NO_XLA_FLAGS") == "1":
    return
  flags = os.environ.get("XLA_FLAGS", "")
  present = {f.split("=", 1)[0] for f in flags.split()}
  extra = [f"{name}={value}" for name, value in CPU_XLA_FLAGS.items()
           if name not in present]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
