"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

Params and model state are saved as plain nested dicts (`nnx.to_pure_dict`),
so a fine-tune job can read the `encoder` subtree of a pretraining checkpoint
without rebuilding the pretraining heads. Orbax writes each step to a
temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoint as the latest one; a half-written step
(`N.orbax-checkpoint-tmp-*`) is never listed and never loaded
(tests/test_scale_preemption.py checks this). With many processes every
process constructs the Checkpointer and calls save/restore; Orbax writes
each array's shards from the process that holds them and lets process 0
finalize (rename) the step.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Any

import jax
from flax import nnx
import orbax.checkpoint as ocp

from ssl_jax.pytree import path_str
from ssl_jax.train.state import TrainState


def _to_tree(state: TrainState) -> dict[str, Any]:
  return {"step": state.step, "params": nnx.to_pure_dict(state.params),
          "rest": nnx.to_pure_dict(state.rest), "opt_state": state.opt_state,
          "extra": state.extra, "rng": state.rng}


def _from_tree(template: TrainState, tree: dict[str, Any]) -> TrainState:
  params = jax.tree.map(lambda x: x, template.params)
  rest = jax.tree.map(lambda x: x, template.rest)
  nnx.replace_by_pure_dict(params, tree["params"])
  nnx.replace_by_pure_dict(rest, tree["rest"])
  return TrainState(step=tree["step"], params=params, rest=rest,
                    opt_state=tree["opt_state"], extra=tree["extra"],
                    rng=tree["rng"])


class Checkpointer:
  """Periodic + final saves; automatic resume from the latest complete step."""

  def __init__(self, directory: str | os.PathLike, *, every_steps: int,
               max_to_keep: int = 2):
    self.every_steps = every_steps
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state: TrainState) -> None:
    if step in self._manager.all_steps():
      return
    with self._disk_full_named(step):
      self._manager.save(step, args=ocp.args.StandardSave(_to_tree(state)))

  @contextlib.contextmanager
  def _disk_full_named(self, step: int):
    """A full disk (ENOSPC, or Orbax/TensorStore's RESOURCE_EXHAUSTED)
    becomes an OSError naming the directory, the space needed and free, and
    the last good checkpoint (a half-written step is never loaded)."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not is_disk_full(e):
        raise
      good = [s for s in self._manager.all_steps() if s != step]
      last = max(good) if good else None
      need = _dir_bytes(os.path.join(self.directory, str(last))) if good else 0
      free = shutil.disk_usage(self.directory).free
      raise OSError(errno.ENOSPC, (
          f"no space left to save step {step} in {self.directory}: a "
          f"checkpoint needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} "
          f"MiB are free. Last good checkpoint: "
          f"{'step ' + str(last) if last is not None else 'none'} (intact; "
          f"rerun the same command to resume once space is freed). "
          f"[{type(e).__name__}: {str(e)[:200]}]")) from None

  def restore(self, template: TrainState, step: int | None = None) -> TrainState:
    """The latest (or given) step, placed like the template's arrays.

    The template may be abstract (`jax.ShapeDtypeStruct`s with shardings,
    from `state.shape_first`): arrays are then read straight into their
    final layout, without initialising a model first.
    """
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_tree(template))
    saved = self._manager.item_metadata(step)
    if saved is not None:  # None: no metadata to compare (Orbax then checks)
      mismatches = tree_mismatches(saved, abstract)
      if mismatches:
        raise ValueError(
            f"checkpoint step {step} holds arrays of other shapes than this "
            f"state ({len(mismatches)}): {'; '.join(mismatches[:4])}"
            f"{'; ...' if len(mismatches) > 4 else ''}")
    tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return _from_tree(template, tree)

  def wait(self) -> None:
    with self._disk_full_named(self._manager.latest_step() or 0):
      self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()


def _leaves_by_path(tree) -> dict[str, Any]:
  """{'params/encoder/stem/kernel': leaf}, named as everywhere else
  (ssl_jax.pytree): Orbax saves tuples and namedtuples as lists and dicts,
  and both read the same."""
  return {path_str(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def tree_mismatches(saved, wanted) -> list[str]:
  """Where a checkpoint's array metadata and a target's abstract arrays
  disagree: missing or extra arrays, other shapes or dtypes (parameters
  first, then optimizer state and the rest). Checked before
  reading, so a checkpoint of another model fails naming the parameter, not
  from inside Orbax's reads (which it leaves pending)."""
  have, want = _leaves_by_path(saved), _leaves_by_path(wanted)
  out = [f"{p}: not in the checkpoint" for p in want if p not in have]
  out += [f"{p}: in the checkpoint only" for p in have if p not in want]
  for path in want.keys() & have.keys():
    a, b = have[path], want[path]
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
      out.append(f"{path}: {a.dtype}{list(a.shape)} in the checkpoint, "
                 f"{b.dtype}{list(b.shape)} expected")
  return sorted(out, key=lambda m: (not m.startswith("params/"), m))


def is_disk_full(error: BaseException) -> bool:
  return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or any(
      word in str(error) for word in ("RESOURCE_EXHAUSTED", "No space left"))


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def read_latest(directory: str | os.PathLike,
                step: int | None = None) -> tuple[dict[str, Any], int]:
  """(whole tree as saved, step) of a CheckpointManager root's latest (or
  given) complete step, without a template: how another run's weights are
  read (stage 2, init_from, export); this module is the only Orbax user."""
  directory = os.path.abspath(directory)
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step() if step is None else step
  if step is None:
    manager.close()
    raise FileNotFoundError(f"no complete checkpoint in {directory}")
  tree = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return tree, step


def read_pytree(directory: str | os.PathLike) -> dict[str, Any]:
  """One Orbax PyTree checkpoint (a directory with _METADATA, e.g. another
  library's StandardCheckpointer save), without a template."""
  return ocp.StandardCheckpointer().restore(os.path.abspath(directory))


def restore_subtree(directory: str | os.PathLike, *keys: str,
                    step: int | None = None) -> dict[str, Any]:
  """Plain numpy dicts of the named top-level entries (e.g. 'params', 'rest')
  of the latest checkpoint; used to read another run's encoder."""
  directory = os.path.abspath(directory)
  tree, step = read_latest(directory, step)
  missing = [k for k in keys if k not in tree]
  if missing:
    raise KeyError(f"checkpoint {directory} step {step} has no {missing}; "
                   f"it holds {sorted(tree)}")
  return {k: tree[k] for k in keys} | {"step": step}
