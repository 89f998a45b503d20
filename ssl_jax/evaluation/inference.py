"""Batched, sharded forward passes over a whole split (features or probs).

Batches are padded to one fixed size, so each function compiles once per
job however many examples a split has; padding rows are dropped after. A
split smaller than one batch is padded only to the next power of two: a
validation set of 78 images, scored at every epoch of stage 2, then costs
a batch of 128 instead of 256 (at most log2(batch) extra compiles a job).
`fn` may return one array or a pytree of arrays (e.g. the pooled features
of every encoder stage at once): each leaf is concatenated over batches.
Many hosts: every process passes the whole split and gets every output
back (each places its devices' rows; outputs are gathered to all).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from ssl_jax import parallel


def padded_size(n: int, batch_size: int, devices: int) -> int:
  """The batch `n` examples run in: `batch_size`, or for a split smaller
  than that the next power of two (a multiple of the data devices)."""
  if n >= batch_size:
    return batch_size
  size = 1 << max(n - 1, 0).bit_length()
  return min(batch_size, -(-size // devices) * devices)


def batched_apply(fn: Callable[..., Any], images: np.ndarray, *,
                  batch_size: int, mesh: Mesh, args: tuple = ()) -> Any:
  """`fn(*args, uint8_batch)` over `images` in fixed-size sharded batches."""
  parallel.check_divisible(batch_size, mesh, "finetune.eval_batch_size")
  n = images.shape[0]
  batch_size = padded_size(n, batch_size, parallel.data_axis_size(mesh))
  outputs = []
  for begin in range(0, n, batch_size):
    chunk = images[begin:begin + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out = fn(*args, parallel.shard_whole_batch(chunk, mesh))
    keep = batch_size - pad
    outputs.append(jax.tree.map(lambda o, k=keep: parallel.to_host(o)[:k], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
