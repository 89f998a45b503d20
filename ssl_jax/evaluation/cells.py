"""The unit of stage-2 work and storage: a cell, and the store of finished ones.

A *cell* is (method, protocol, label fraction, seed). `run_cells` runs the
cells a `CellStore` does not hold yet; the store writes each finished cell
as its own JSON file, atomically, so a killed job loses at most the cell in
progress and a rerun skips the finished ones. The finetune job and the
benchmark job (`jobs/benchmark.py`) share this machinery. Label subsets are
stratified, nested across fractions and redrawn per seed; each cell's test
AUROC comes with a percentile-bootstrap CI. Beside each cell's JSON, its
val/test probabilities and labels (`.npz`, `finetune.save_predictions`):
the per-image scores that ensembles and paired tests need.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
import pickle
import threading
import time
from concurrent import futures
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ssl_jax import files
from ssl_jax.evaluation import metrics
from ssl_jax.evaluation.encoder_context import EVAL_SPLITS, EncoderContext
from ssl_jax.evaluation.protocols import PROTOCOLS


@dataclasses.dataclass(frozen=True)
class Cell:
  """One unit of work and of storage: (method, protocol, fraction, seed)."""
  method: str
  protocol: str
  fraction: float
  seed: int

  @property
  def key(self) -> str:
    return f"{self.method}|{self.protocol}|{self.fraction:g}|{self.seed}"

  @property
  def filename(self) -> str:
    return os.path.join(self.method, f"{self.stem}.json")

  @property
  def stem(self) -> str:
    return f"{self.protocol}_f{self.fraction:g}_s{self.seed}"


class CellStore:
  """One JSON file per finished cell under `directory`/<method>/.

  Written by write-then-rename (`files.write_json_atomic`): a file is
  there whole or not at all, so a SIGKILL mid-write leaves no half cell and
  a rerun recomputes only what has no file. Files are never rewritten.
  A cell's predictions (`.npz` beside its JSON) are written first: the JSON
  marks the cell finished, so a finished cell's predictions are whole.
  """

  def __init__(self, directory: str):
    self.directory = directory

  def path(self, cell: Cell) -> str:
    return os.path.join(self.directory, cell.filename)

  def predictions_path(self, cell: Cell) -> str:
    return os.path.join(self.directory, cell.method, f"{cell.stem}.npz")

  def get(self, cell: Cell) -> dict | None:
    return files.read_json(self.path(cell))

  def put(self, cell: Cell, result: dict,
          predictions: dict[str, np.ndarray] | None = None) -> None:
    if predictions is not None:
      with files.atomic_open(self.predictions_path(cell), "wb") as f:
        np.savez(f, **predictions)
    files.write_json_atomic(self.path(cell), result)

  def predictions(self, cell: Cell) -> dict[str, np.ndarray] | None:
    """A finished cell's `{split}_probs` and `{split}_labels` arrays (val,
    test) and `task`, or None when the cell or its predictions were not stored."""
    path = self.predictions_path(cell)
    if self.get(cell) is None or not os.path.exists(path):
      return None
    with np.load(path) as stored:
      return {name: stored[name] for name in stored.files}

  def results(self, cells: Iterable[Cell]) -> dict[str, dict]:
    """Finished cells among `cells`, by key, in the given order."""
    out = {}
    for cell in cells:
      result = self.get(cell)
      if result is not None:
        out[cell.key] = result
    return out


def score(ft, task: str, labels: dict[str, np.ndarray],
          probs: dict[str, np.ndarray], seed: int) -> dict[str, dict]:
  """Val and test metrics (AUROC first), per-class/label test AUROC for
  non-binary tasks, and a percentile-bootstrap CI of the test AUROC.
  Thresholded metrics (ACC, F1, ...) cut at `finetune.decision_threshold`'s
  threshold (`ft` is the finetune config), chosen from validation scores
  only; test records it."""
  rule = metrics.THRESHOLD_RULES[ft.get("decision_threshold", "medmnist")]
  threshold = rule(labels["val"], probs["val"], task)
  out = {s: metrics.classification_metrics(labels[s], probs[s], task,
                                           threshold=threshold)
         for s in EVAL_SPLITS}
  if threshold is not None:
    out["test"]["threshold"] = threshold
  y, p = labels["test"], probs["test"]
  if task != metrics.BINARY:
    out["test"]["auroc_per_class"] = [
        float(v) for v in metrics.auroc_per_class(y, p, task)]
  if ft.bootstrap_samples > 0:
    out["test"]["auroc_ci"] = list(metrics.bootstrap_ci(
        y, p, task, metrics.auroc, num_samples=ft.bootstrap_samples,
        seed=seed, alpha=1.0 - ft.ci_level))
  return out


def prediction_arrays(task: str, labels: dict[str, np.ndarray],
                      probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """What a cell stores beside its JSON (the one place that names the
  layout): `{split}_probs`, `{split}_labels` and the `task` that scores them.
  Probabilities keep the precision they were scored at: rounding a probe's
  float64 ones to float32 can tie two images and move the AUROC the cell's
  JSON records."""
  out = {"task": np.asarray(task)}
  for split in EVAL_SPLITS:
    out[f"{split}_probs"] = np.asarray(probs[split])
    out[f"{split}_labels"] = np.asarray(labels[split])
  return out


def run_cell(ctx: EncoderContext, cell: Cell) -> tuple[dict[str, Any],
                                                      dict[str, np.ndarray]]:
  """The cell's protocol on its label subset, scored, with what it was;
  and its predictions as the store keeps them."""
  train_idx = ctx.subset(cell.fraction, cell.seed)
  began = time.perf_counter()
  preds = PROTOCOLS.get(cell.protocol)(ctx, train_idx, cell.seed)
  labels = {s: ctx.labels(s) for s in EVAL_SPLITS}
  result = dict(score(ctx.config.finetune, ctx.task, labels, preds.probs,
                      cell.seed), **preds.info,
                method=cell.method, protocol=cell.protocol,
                fraction=cell.fraction, seed=cell.seed,
                n_train=int(len(train_idx)),
                seconds=time.perf_counter() - began,
                cores=cores_here())  # sets its reduction order
  return result, prediction_arrays(ctx.task, labels, preds.probs)


def summary_line(cell: Cell, result: dict) -> str:
  """The console line printed as a cell finishes."""
  test = result["test"]
  ci = test.get("auroc_ci")
  ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
  return (f"  {cell.method:>12s} {cell.protocol:11s} labels={cell.fraction:>5.0%} "
          f"seed={cell.seed} n={result['n_train']:5d}  test AUROC "
          f"{test['auroc']:.3f}{ci_text} ACC {test['accuracy']:.3f} "
          f"balanced {test['balanced_accuracy']:.3f} "
          f"({result['seconds']:.0f} s)")


def cells_at_once(ft) -> int:
  """How many cells run side by side: `finetune.cells_at_once`, where 0
  (auto) is 2 on a one-process CPU run and 1 elsewhere.

  Why: stage 2 steps at 5-64 images, whose small ops keep only ~1.6 of 2
  cores busy and use them poorly (one core ran the demo's step at 77 % of
  what both gave); two cells, each on its own core, did the demo's stage 2
  in 0.83x the time (docs/performance.md). On an accelerator one cell has
  the device to itself. Hosts of a multi-process run must run their cells
  in one order, so there it is 1.
  """
  n = ft.get("cells_at_once", 0)
  if not isinstance(n, int) or n < 0:
    raise ValueError(f"config.finetune.cells_at_once={n!r}: a count >= 1, "
                     f"or 0 for auto")
  one_process = jax.process_count() == 1
  if n == 0:
    return 2 if one_process and jax.default_backend() == "cpu" else 1
  if n > 1 and not one_process:
    raise ValueError(f"config.finetune.cells_at_once={n} needs a single "
                     f"process; this run has {jax.process_count()}, whose "
                     f"hosts must run cells in one order")
  return n


def side_by_side(ft) -> dict[str, Any]:
  """`run_cells`' keywords for this run: `at_once` (`cells_at_once`) and,
  on CPU, `in_processes` (where the OS can pin a process to cores).

  Why processes on CPU: cells in threads of one process share its XLA
  thread pool, and two cells there did no more work than one after the
  other (each op split over both cores, twice); a worker process pinned to
  its own core runs its cell's ops whole. A cell's numbers then come from
  one core's reduction order instead of two's: the same maths, last digits
  apart, as on another CPU count.
  """
  n = cells_at_once(ft)
  return dict(at_once=n, in_processes=(n > 1 and jax.default_backend() == "cpu"
                                       and hasattr(os, "sched_setaffinity")))


def cores_here() -> int:
  """The cores this process may run on (all of them where the OS cannot
  say, e.g. macOS)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def core_shares(cores: Sequence[int], workers: int) -> list[list[int]]:
  """`cores` split into `workers` contiguous, near-equal shares (one core
  each, reused in turn, when there are fewer cores than workers)."""
  cores = sorted(cores)
  if len(cores) < workers:
    return [[cores[i % len(cores)]] for i in range(workers)]
  return [cores[i * len(cores) // workers:(i + 1) * len(cores) // workers]
          for i in range(workers)]


class _CellThreads:
  """Cells in worker threads of this process (sharing its compiled programs)."""

  def __init__(self, at_once: int):
    self.pool = futures.ThreadPoolExecutor(at_once, thread_name_prefix="cell")

  def submit(self, ctx: EncoderContext, cell: Cell) -> futures.Future:
    return self.pool.submit(run_cell, ctx, cell)


class _CellProcesses:
  """Cells in `at_once` spawned worker processes, each pinned to its share
  of this process's cores before JAX starts there (so XLA's thread pool
  there is that share). A context is pickled once here; a worker keeps the
  copies of its latest contexts, with their compiled programs and
  features, across the cells that use them."""

  def __init__(self, at_once: int):
    spawn = multiprocessing.get_context("spawn")  # JAX's threads rule out fork
    shares = spawn.Queue()
    for share in core_shares(os.sched_getaffinity(0), at_once):
      shares.put(share)
    self.pool = futures.ProcessPoolExecutor(
        at_once, mp_context=spawn, initializer=_start_worker,
        initargs=(shares, os.getpid(), jax.config.jax_compilation_cache_dir))
    self._pickled: collections.OrderedDict[int, tuple] = collections.OrderedDict()

  def submit(self, ctx: EncoderContext, cell: Cell) -> futures.Future:
    _, digest, payload = _latest(self._pickled, id(ctx), lambda: _pickled(ctx))
    return self.pool.submit(_run_in_worker, digest, payload, cell)


def _pickled(ctx: EncoderContext) -> tuple[EncoderContext, str, bytes]:
  """(ctx, digest, payload): ctx is kept so that its id stays its own."""
  payload = pickle.dumps(ctx, protocol=pickle.HIGHEST_PROTOCOL)
  return ctx, hashlib.blake2b(payload, digest_size=16).hexdigest(), payload


_CONTEXTS_KEPT = 2  # a benchmark moves from method to method; one lags behind
_WORKER_CONTEXTS: collections.OrderedDict[str, EncoderContext] = (
    collections.OrderedDict())


def _latest(cache: collections.OrderedDict, key, make: Callable[[], Any]):
  """`cache[key]`, made if missing; the cache keeps its `_CONTEXTS_KEPT`
  most recently used entries."""
  value = cache.pop(key) if key in cache else make()
  cache[key] = value
  while len(cache) > _CONTEXTS_KEPT:
    cache.popitem(last=False)
  return value


def _start_worker(shares, parent: int, compilation_cache: str | None) -> None:
  """A cell worker's first act: its cores, before anything starts JAX; the
  parent's compilation cache; and an exit when the parent is gone."""
  os.sched_setaffinity(0, shares.get())
  if compilation_cache:
    jax.config.update("jax_compilation_cache_dir", compilation_cache)
  threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _exit_without(parent: int) -> None:
  """Ends this worker once its parent has died (e.g. SIGKILLed), rather
  than leave it waiting for cells that will not come."""
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(1)


def _run_in_worker(digest: str, payload: bytes, cell: Cell):
  """`run_cell` in a worker, on its copy of the context `payload` pickles
  (unpickled once per context: its compiled programs stay)."""
  ctx = _latest(_WORKER_CONTEXTS, digest, lambda: pickle.loads(payload))
  return run_cell(ctx, cell)


def _done(value) -> futures.Future:
  """A future already holding `value` (a cell run in the calling thread)."""
  future = futures.Future()
  future.set_result(value)
  return future


def run_cells(context_for: Callable[[Cell], EncoderContext],
              cells: Sequence[Cell], store: CellStore, *,
              progress: bool = True, at_once: int = 1,
              in_processes: bool = False) -> dict[str, dict]:
  """Runs every cell `store` lacks, `at_once` at a time, storing each as it
  finishes.

  `context_for(cell)` gives the cell's EncoderContext (the benchmark builds,
  and pretrains, lazily there); it is called in this thread, in `cells`
  order. With `at_once` > 1 cells run in worker threads, or worker
  processes (`in_processes`, see `side_by_side`), and finish in any order;
  each cell's result does not depend on what runs beside it. If a
  cell (or `context_for`) fails, the cells running still finish and are
  stored before the error is raised. Shows cells done / total with an ETA (from the cells run
  in this process) and prints one line per finished cell. Returns all
  finished cells by key, in `cells` order. Each cell is looked up again
  just before it runs, so processes sharing a workdir (e.g. one per seed)
  skip what another has finished.
  """
  todo = [c for c in cells if store.get(c) is None]
  bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell",
             desc="cells", smoothing=0.0, dynamic_ncols=True,
             disable=not progress or jax.process_index() != 0)
  running: dict[futures.Future, tuple[Cell, EncoderContext]] = {}

  def collect(wait_for: str) -> None:
    """Stores the finished cells among `running`; after a failure, once the
    cells beside it have finished too, raises its error."""
    done, _ = futures.wait(running, return_when=wait_for)
    if any(future.exception() for future in done):
      done, _ = futures.wait(running, return_when=futures.ALL_COMPLETED)
    error = None
    for future in [f for f in running if f in done]:  # in launch order
      cell, ctx = running.pop(future)
      if future.exception() is not None:
        error = error or future.exception()
        continue
      result, predictions = future.result()
      save = ctx.config.finetune.get("save_predictions", True)
      store.put(cell, result, predictions if save else None)
      bar.update(1)
      tqdm.write(summary_line(cell, result))
    if error is not None:
      raise error

  workers = (_CellProcesses if in_processes and at_once > 1 else _CellThreads)(at_once)
  with workers.pool:
    try:
      for cell in todo:
        while len(running) >= at_once:
          collect(futures.FIRST_COMPLETED)
        if store.get(cell) is not None:  # another process sharing the workdir
          bar.update(1)
          continue
        bar.set_postfix_str(cell.key, refresh=True)
        ctx = context_for(cell)
        if at_once == 1:
          future = _done(run_cell(ctx, cell))
        else:
          future = workers.submit(ctx, cell)
        running[future] = (cell, ctx)
    except BaseException:  # e.g. the next context's pretraining failed
      if running:  # the workers finish their cells either way
        tqdm.write(f"storing the {len(running)} cell(s) still running "
                   f"before stopping")
        with contextlib.suppress(Exception):
          collect(futures.ALL_COMPLETED)
      raise
    while running:
      collect(futures.FIRST_COMPLETED)
  bar.close()
  return store.results(cells)
