"""Devices: one Mesh with a `data` and a `model` axis; batches sharded along
`data`, state replicated unless a sharding rule says otherwise.

The same code runs on 1 CPU, N virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), one GPU node, or many
hosts after `initialize_distributed` (`jax.distributed.initialize()`). Losses
that need the global batch (SimCLR negatives, BatchNorm statistics) get it by
construction: the jitted step sees one global array, and XLA inserts the
collectives.

The `model` axis (size `mesh.model_axis_size`, 1 by default) is the hook for
FSDP / tensor parallelism: `mesh.rules` maps regexes over a state leaf's path
(`params/encoder/blocks/0/fc1/kernel`, and the same path inside the
optimizer state, so Adam's moments follow their parameter) to PartitionSpecs.
Leaves no rule matches are replicated.
"""
from __future__ import annotations

import collections
import itertools
import os
import re
from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax.pytree import path_str

DATA_AXIS = "data"
MODEL_AXIS = "model"
# (path regex, partition spec as a tuple of axis names / None), first match wins.
Rule = tuple[str, Sequence[str | None]]


# ------------------------------------------------------------- processes --

def initialize_distributed(cfg: Any | None) -> bool:
  """`jax.distributed.initialize()` when the config (or env) asks for it.

  Must run before anything touches devices (run.py calls it first). Fields of
  `config.distributed`: `coordinator_address` ('host:port'), `num_processes`,
  `process_id` (-1 = let JAX detect), `initialize` (True: call even without
  an address, for clusters JAX auto-detects: SLURM, TPU pods, Open MPI), and
  `cpu_collectives` (gloo: cross-process collectives on CPU). Unset fields
  fall back to JAX's env vars (JAX_COORDINATOR_ADDRESS, ...) and to
  SSL_JAX_NUM_PROCESSES / SSL_JAX_PROCESS_ID. Returns whether it initialized.
  """
  cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
  address = (cfg.get("coordinator_address") or
             os.environ.get("JAX_COORDINATOR_ADDRESS") or None)
  num_processes = cfg.get("num_processes") or _env_int("SSL_JAX_NUM_PROCESSES")
  process_id = cfg.get("process_id", -1)
  if process_id is None or process_id < 0:
    process_id = _env_int("SSL_JAX_PROCESS_ID")
  if not (address or cfg.get("initialize")):
    return False
  if cfg.get("cpu_collectives"):
    jax.config.update("jax_cpu_collectives_implementation",
                      cfg["cpu_collectives"])
  jax.distributed.initialize(
      coordinator_address=address, num_processes=num_processes or None,
      process_id=process_id,
      initialization_timeout=cfg.get("timeout_s") or 300)
  return True


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


# ------------------------------------------------------------------ mesh --

def make_mesh(num_devices: int | None = None, model_axis_size: int = 1) -> Mesh:
  """A (data, model) mesh over the first `num_devices` (default: all).

  Devices are in `jax.devices()` order (process-major), so each process's
  devices hold a contiguous block of the data axis: the rows it read.
  """
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"mesh.num_devices={num_devices} but only "
                       f"{len(devices)} devices are visible")
    devices = devices[:num_devices]
  model_axis_size = model_axis_size or 1
  if len(devices) % model_axis_size:
    raise ValueError(f"mesh.model_axis_size={model_axis_size} does not divide "
                     f"the {len(devices)} devices")
  grid = np.asarray(devices).reshape(-1, model_axis_size)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def config_mesh(config: Any) -> Mesh:
  """The mesh `config.mesh` asks for: `num_devices` (0: all) split into
  (data, model) with `model_axis_size` devices along `model`."""
  mesh_cfg = config.get("mesh", {})
  return make_mesh(mesh_cfg.get("num_devices", 0),
                   mesh_cfg.get("model_axis_size", 1))


def config_rules(config: Any) -> tuple[Rule, ...]:
  """`config.mesh.rules` as a tuple; none: every state leaf replicated."""
  return tuple(config.get("mesh", {}).get("rules", ()) or ())


def data_axis_size(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS] if DATA_AXIS in mesh.shape else mesh.devices.size


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(global_batch: int, mesh: Mesh, field: str,
                    times: int = 1) -> None:
  """`global_batch` must split into `times` micro-batches over the data axis."""
  n = data_axis_size(mesh) * times
  if global_batch % n:
    what = f"{data_axis_size(mesh)} data-parallel devices of the mesh"
    if times > 1:
      what += f" x train.grad_accum_steps={times}"
    raise ValueError(f"config.{field}={global_batch} is not divisible by the "
                     f"{what}; use a multiple of {n}")


def local_batch_size(global_batch: int) -> int:
  """This host's share of the global batch (it reads only its own shard)."""
  count = jax.process_count()
  if global_batch % count:
    raise ValueError(f"global batch {global_batch} is not divisible by "
                     f"{count} processes")
  return global_batch // count


# --------------------------------------------------------------- batches --

def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays split along the data axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def shard_whole_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """A batch every process holds whole -> one global array split along
  `data`: each process places only its own devices' rows (evaluation, where
  every process reads the whole split, not a shard of it)."""
  return jax.make_array_from_callback(batch.shape, batch_sharded(mesh),
                                      lambda index: batch[index])


def to_host(x: jax.Array) -> np.ndarray:
  """The whole array as numpy, on every process. Across processes this
  gathers (a collective): every process must call it, in the same order."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def prefetch_to_device(batches: Iterable[dict[str, np.ndarray]], size: int,
                       mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
  """Sharded device batches, read and transferred `size - 1` steps ahead.

  Transfers are asynchronous. The loop dispatches step t (asynchronously),
  then asks for batch t+1, which was put on the devices one request ago;
  only now is batch t+size read and its transfer started, while step t
  runs. So the step never waits on host->device copies. The
  order is exactly the input order (a FIFO); `size=0` shards on demand.
  Batches read ahead and not consumed (preemption, end of run) are dropped,
  which is harmless: a resumed run re-reads from its step via skip_batches.
  """
  batches = iter(batches)
  if size <= 0:
    yield from (shard_batch(b, mesh) for b in batches)
    return
  queue = collections.deque()

  def enqueue(n: int) -> None:
    for batch in itertools.islice(batches, n):
      queue.append(shard_batch(batch, mesh))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


# ------------------------------------------------------- sharding rules --

def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh,
             rules: Sequence[Rule]) -> P:
  """The PartitionSpec of the first rule whose regex `re.search`es `path`.

  A matching rule must fit the leaf (no more dims than the leaf, each sharded
  dim divisible by its axis size); otherwise this raises, naming both, rather
  than silently replicating a tensor the user meant to split.
  """
  for pattern, spec in rules:
    if not re.search(pattern, path):
      continue
    spec = tuple(spec)
    if len(spec) > len(shape):
      raise ValueError(f"mesh.rules: {pattern!r} -> {spec} matches {path} of "
                       f"shape {shape}, which has fewer dims than the spec")
    for dim, axis in zip(shape, spec):
      names = (axis,) if isinstance(axis, str) else tuple(axis or ())
      size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
      if dim % size:
        raise ValueError(f"mesh.rules: {pattern!r} -> {spec} shards a dim of "
                         f"{dim} of {path} {shape} over {size} devices")
    return P(*spec)
  return P()


def tree_shardings(tree, mesh: Mesh, rules: Sequence[Rule] = ()):
  """NamedShardings for every array leaf of `tree` (e.g. an eval_shape'd
  train state) from the path rules; replicated where no rule matches."""
  rules = tuple(rules or ())

  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_str(path), tuple(leaf.shape),
                                        mesh, rules))

  return jax.tree_util.tree_map_with_path(one, tree)


def describe_shardings(shardings) -> dict[str, str]:
  """{path: spec} of the leaves that are not replicated (for logs, tests)."""
  out = {}
  for path, sharding in jax.tree_util.tree_flatten_with_path(shardings)[0]:
    if isinstance(sharding, NamedSharding) and any(sharding.spec):
      out[path_str(path)] = str(sharding.spec)
  return out
