"""Batched, sharded forward passes over a whole split (features or probs).

Batches are padded to one fixed size, so each function compiles once per
job however many examples a split has; padding rows are dropped after.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from ssl_jax import parallel


def batched_apply(fn: Callable[..., jax.Array], images: np.ndarray, *,
                  batch_size: int, mesh: Mesh, args: tuple = ()) -> np.ndarray:
  """`fn(*args, uint8_batch)` over `images` in fixed-size sharded batches."""
  parallel.check_divisible(batch_size, mesh, "finetune.eval_batch_size")
  n = images.shape[0]
  outputs = []
  for begin in range(0, n, batch_size):
    chunk = images[begin:begin + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out = fn(*args, parallel.shard_batch({"image": chunk}, mesh)["image"])
    outputs.append(np.asarray(jax.device_get(out))[:batch_size - pad])
  return np.concatenate(outputs)
