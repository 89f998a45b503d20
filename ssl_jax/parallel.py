"""Devices: one Mesh with a `data` axis; batches sharded, state replicated.

The same code runs on 1 CPU, N virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), one GPU node, or many
hosts after `jax.distributed.initialize()`. Losses that need the global batch
(SimCLR negatives, BatchNorm statistics) get it by construction: the jitted
step sees one global array, and XLA inserts the collectives.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D data-parallel mesh over the first `num_devices` (default: all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"mesh.num_devices={num_devices} but only "
                       f"{len(devices)} devices are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(global_batch: int, mesh: Mesh, field: str) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"{field}={global_batch} is not divisible by the "
                     f"{n} devices of the mesh; use a multiple of {n}")


def local_batch_size(global_batch: int) -> int:
  """This host's share of the global batch (it reads only its own shard)."""
  count = jax.process_count()
  if global_batch % count:
    raise ValueError(f"global batch {global_batch} is not divisible by "
                     f"{count} processes")
  return global_batch // count


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays split along the data axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))
