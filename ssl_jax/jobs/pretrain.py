"""Self-supervised pretraining: any registered objective, one loop.

Outputs in the workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/ (resumed automatically), pretrain_summary.json, and with
`train.monitor_every` monitor.png.

Frozen-feature monitor (`train.monitor_every`, evaluation/monitor.py): the
loop scores the online encoder's frozen features on the val split every N
steps and at the end (`val/knn_auroc`, ... in metrics.jsonl); the summary's
`monitor` holds that curve read back from metrics.jsonl (so a resumed run
reports every run's rows) with its best step, and monitor.png plots it.

Scale and survival (see configs/base.py for the fields):
- init is shape-first (`state.shape_first`): the state is born sharded on the
  mesh, and a resumed run restores into the abstract state without init;
- `train.compute_dtype=bfloat16` runs the backbone in bf16 with float32
  params, optimizer state and losses;
- `train.grad_accum_steps` splits each global batch into micro-batches;
- SIGTERM saves a checkpoint and raises `Preempted` (run.py exits 75); a
  rerun continues bit-identically: same state, same rng stream (the step is
  folded into the rng), same data (`skip_batches`).

Metadata (sources with it, e.g. csv:) rides in every batch as numeric
columns: ids as int32 codes, age, slice_index (pairs.batch_columns).

Vocabularies (`Objective.vocabulary`, data_pipelines/vocab.py): fitted on
the train split's metadata (or read back from `<workdir>/vocab.json` when
resuming), written there, handed to the builders and turned into batch
columns (coded tabular columns, report tokens).

Positive pairs (`config.pairs`, data_pipelines/pairs.py): a mode other than
'views' reads the train split's metadata, builds the partner table once and
the input pipeline adds each row's partner image as `pair_image`; how many
rows found no partner (and paired with themselves) goes into the summary.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data_pipelines import pairs
from data_pipelines import vocab as vocab_lib
from ssl_jax import files, objectives, parallel
from ssl_jax.evaluation import monitor as monitor_lib
from ssl_jax.jobs import common, method_configs
from ssl_jax.jobs import workdir as workdir_lib
from ssl_jax.objectives.online_probe import with_online_probe
from ssl_jax.train import checkpoint, init_from, loop, optim, step as step_lib
from ssl_jax.train import state as state_lib
from ssl_jax.train.metrics_writer import MetricWriter, read_rows


@dataclasses.dataclass(frozen=True)
class Built:
  """Everything a pretraining run compiles, before any array exists."""
  graphdef: nnx.GraphDef
  abstract: state_lib.TrainState        # ShapeDtypeStructs with shardings
  shardings: Any                        # NamedSharding per state leaf
  init: Callable[[], state_lib.TrainState]  # jitted, placed by `shardings`
  step_fn: step_lib.StepFn              # jitted, state donated


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config the model is built from: `train.compute_dtype` becomes the
  backbone's `dtype` (params stay float32: that is each layer's param_dtype).
  float32 leaves the config untouched."""
  name = config.train.get("compute_dtype", "float32")
  if name == "float32":
    return config
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.dtype = jnp.dtype(name)
  return c


def build_parts(config: ml_collections.ConfigDict, info, mesh,
                vocab: dict | None = None) -> Built:
  """Shape-first: abstract state and shardings, then jitted init and step.
  `vocab`: the objective's fitted vocabularies (`vocabularies`)."""
  bound = objectives.bind(model_config(config), info, vocab)
  # Unlabelled sources (pools, label_column='') have nothing to probe.
  if config.get("online_probe", True) and info.num_classes > 0:
    bound = dataclasses.replace(bound,
                                objective=with_online_probe(bound.objective))
  tx, schedule = optim.make_optimizer(config.optim, config.train.batch_size,
                                      config.train.steps)

  def build_state():
    model = bound.build_model(nnx.Rngs(config.seed))
    return state_lib.create(model, tx, bound.init_extra(model),
                            jax.random.PRNGKey(config.seed + 1))

  graphdef, abstract, shardings, init = state_lib.shape_first(
      build_state, mesh, parallel.config_rules(config))
  step_fn = step_lib.make_from_objective(
      graphdef, bound, tx, schedule,
      grad_accum_steps=config.train.get("grad_accum_steps", 1),
      batch_sharding=parallel.batch_sharded(mesh),
      sam_rho=config.optim.get("sam_rho", 0.0))
  return Built(graphdef, abstract, shardings, init,
               step_lib.compile_step(step_fn, shardings, graphdef=graphdef))


def build(config: ml_collections.ConfigDict, info, mesh,
          vocab: dict | None = None):
  """(graphdef, initial state on the mesh, jitted step) for the config."""
  built = build_parts(config, info, mesh, vocab)
  return built.graphdef, built.init(), built.step_fn


def make_partners(config: ml_collections.ConfigDict, num_rows: int,
                  metadata: dict | None = None) -> pairs.PartnerTable | None:
  """The partner table of `config.pairs` (None for 'views': no partners);
  `metadata` is the train split's (read here when not given)."""
  cfg = config.get("pairs", None) or {"mode": "views"}
  if cfg["mode"] == "views":
    return None
  if metadata is None:
    metadata = common.load_metadata(config, "train")
  try:
    return pairs.build_partners(
        cfg["mode"], metadata, num_rows=num_rows,
        max_age_gap=cfg["max_age_gap"], series_max_gap=cfg["series_max_gap"])
  except ValueError as e:
    raise ValueError(f"data {config.data.name!r} train split: {e}") from None


def pairing_stats(partners: pairs.PartnerTable | None) -> dict[str, Any]:
  return {"mode": "views"} if partners is None else partners.stats()


# Fields a rerun in the same workdir may change: they do not change what
# the checkpoint holds or how it trains (display, logging cadence, where the
# data lives, devices, later stages, a longer or shorter run). Everything
# else must match config.json, or the rerun is refused.
NOT_BINDING = ("job", "finetune", "benchmark", "train.steps",
               "train.progress", "train.log_every", "train.checkpoint_every",
               "train.prefetch", "train.check_every", "train.divergence",
               "train.monitor_every", "train.monitor_protocols",
               "train.monitor_max_train", "train.monitor_linear_l2",
               "data.data_dir", "mesh", "distributed")


def check_same_setup(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir holds one pretraining setup: refuse a rerun whose config
  differs from its config.json, naming the fields, before anything is
  written (a checkpoint of another shape would otherwise fail in Orbax
  after config.json was overwritten)."""
  saved = files.read_json(os.path.join(workdir, "config.json"))
  if saved is None:
    return
  now = workdir_lib.flatten(config, NOT_BINDING)
  before = workdir_lib.flatten(saved, NOT_BINDING)
  defaults = method_configs.load("base")  # a field newer than config.json
  changed = workdir_lib.changed_fields(
      now, before, workdir_lib.flatten(defaults, NOT_BINDING))
  if changed:
    shown = "; ".join(f"{k}: {before.get(k, '(absent)')!r} in config.json, "
                      f"{now.get(k, '(absent)')!r} now" for k in changed[:8])
    raise ValueError(
        f"{workdir} holds a pretraining run with other settings ({shown}"
        f"{'; ...' if len(changed) > 8 else ''}). Rerun with its settings to "
        "resume it, or use a fresh --workdir (nothing was changed in it)")


def restore(ckpt: checkpoint.Checkpointer, built: Built, workdir: str):
  """The latest checkpoint, or a clear error when it has another shape."""
  step = ckpt.latest_step()
  try:
    return ckpt.restore(built.abstract)
  except (ValueError, TypeError, KeyError) as e:
    raise ValueError(
        f"{ckpt.directory} step {step} does not fit this config ({e}); it was "
        f"written by another setup. Use a fresh --workdir, or rerun with "
        f"that run's settings ({workdir}/config.json)") from None


def check_batch_columns(config: ml_collections.ConfigDict, info,
                        metadata: dict, partners) -> None:
  """The batch columns the objective reads (`Objective.reads`) exist: the
  data's metadata, and the partner's (`pair_<column>`) when pairs are drawn."""
  bound = objectives.bind(config, info)
  columns = set(pairs.batch_columns(metadata))
  available = columns | ({f"pair_{c}" for c in columns} if partners else set())
  missing = [c for c in bound.objective.reads(bound.hp) if c not in available]
  if missing:
    raise ValueError(
        f"config.objective.name={config.objective.name!r} reads the batch "
        f"columns {missing}, which config.data.name={config.data.name!r} "
        f"with pairs.mode={config.get('pairs', {}).get('mode', 'views')!r} "
        "does not give (it has "
        f"{sorted(available) or 'no metadata'}); pair_<column> needs "
        "pairs.mode='patient' (or study / series); a csv: source carries "
        "further columns listed in data.options.numeric_columns or "
        "data.options.text_columns")


def vocabularies(config: ml_collections.ConfigDict, info, metadata: dict,
                 workdir: str) -> dict:
  """The vocabularies the objective declares (`Objective.vocabulary`):
  `<workdir>/vocab.json` when a run there wrote them (a resumed run keeps
  its codes and embedding sizes), else fitted on the train split's
  `metadata`. {} for objectives that declare none."""
  bound = objectives.bind(config, info)
  specs = bound.objective.vocabulary(bound.hp)
  if not specs:
    return {}
  saved = vocab_lib.read(workdir)
  if saved is not None and set(saved) == set(specs):
    return saved
  return vocab_lib.fit(specs, metadata, train_split(config))


def train_split(config: ml_collections.ConfigDict) -> str:
  return f"data {config.data.name!r}, train split"


def batch_extra(config: ml_collections.ConfigDict, metadata: dict,
                vocab: dict) -> dict:
  """Every column a pretraining batch carries besides image and label:
  the metadata (pairs.batch_columns) and the vocabularies' derived columns."""
  extra = pairs.batch_columns(metadata)
  derived = vocab_lib.encode(vocab, metadata, train_split(config))
  clash = sorted(set(derived) & set(extra))
  if clash:
    raise ValueError(f"{train_split(config)}: metadata columns {clash} have "
                     "the names of derived batch columns (ssl_jax/columns.py)"
                     "; rename them in the data")
  return dict(extra, **derived)


def make_monitor(config: ml_collections.ConfigDict, info, mesh,
                 train: monitor_lib.Split) -> monitor_lib.Monitor | None:
  """The loop's frozen-feature `eval_fn` when `train.monitor_every` is on
  (it reads the val split), else None."""
  if not config.train.get("monitor_every", 0):
    return None
  return monitor_lib.Monitor(config, info, mesh, train,
                             common.load_split(config, "val"))


def monitor_missed(config: ml_collections.ConfigDict, workdir: str,
                   start: int, lead: bool) -> bool:
  """Whether the step a run resumes from is a monitored one without its val
  row: a preemption there checkpoints, then stops before the monitor runs.
  Process 0 reads the log and tells the others, since every process must
  run the monitor's collectives or none."""
  every = config.train.monitor_every
  due = start > 0 and (start % every == 0 or start == config.train.steps)
  missed = due and lead and not any(
      row["step"] == start and any(k.startswith(monitor_lib.VAL_PREFIX)
                                   for k in row)
      for row in read_rows(workdir))
  if jax.process_count() > 1:
    missed = bool(multihost_utils.broadcast_one_to_all(np.int32(missed)))
  return missed


def monitor_summary(config: ml_collections.ConfigDict, workdir: str,
                    monitor: monitor_lib.Monitor, num_train: int,
                    lead: bool) -> dict:
  """The monitor's curve from metrics.jsonl; process 0 plots it."""
  curve = monitor_lib.curve(read_rows(workdir), protocols=monitor.protocols,
                            batch_size=config.train.batch_size,
                            num_train=num_train)
  if lead:
    from ssl_jax.evaluation import plots  # matplotlib: only when monitored
    plots.monitor_curve(
        curve, os.path.join(workdir, "monitor.png"),
        title=f"{config.objective.name} on {config.data.name}: frozen-feature "
              "quality during pretraining")
  return curve


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from data_pipelines import input_pipeline  # only where data is read

  common.validate(config)
  check_same_setup(config, workdir)
  mesh = parallel.config_mesh(config)
  parallel.check_divisible(config.train.batch_size, mesh, "train.batch_size",
                           times=config.train.get("grad_accum_steps", 1))
  lead = jax.process_index() == 0
  if lead:
    workdir_lib.check_writable(workdir)
  info = common.data_info(config)
  images, labels = common.load_split(config, "train")
  metadata = common.load_metadata(config, "train")  # {} for MedMNIST
  partners = make_partners(config, len(images), metadata)
  check_batch_columns(config, info, metadata, partners)
  vocab = vocabularies(config, info, metadata, workdir)
  extra = batch_extra(config, metadata, vocab)
  built = build_parts(config, info, mesh, vocab)
  monitor = make_monitor(config, info, mesh, (images, labels))
  with workdir_lib.Lock(workdir, f"pretrain {config.objective.name}",
                        enabled=lead):
    check_same_setup(config, workdir)  # another process may have just written it
    return _train(config, workdir, built, mesh, images, labels, extra, vocab,
                  partners, lead, input_pipeline, monitor)


def _train(config, workdir, built, mesh, images, labels, extra, vocab,
           partners, lead, input_pipeline, monitor=None) -> dict:
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=config.train.checkpoint_every)
  if ckpt.latest_step() is not None:
    state = restore(ckpt, built, workdir)
    if lead:
      print(f"resumed from {workdir}/checkpoints step {int(state.step)}",
            flush=True)
  else:
    state = built.init()
    if config.get("init_from", {}).get("path"):
      state, report = init_from.load_into_state(state, config.init_from)
      if lead:
        files.write_json_atomic(
            os.path.join(workdir, "init_from_report.json"), report)
  start = int(jax.device_get(state.step))
  if lead:  # only now: a refused or failed restore leaves config.json as it was
    common.save_config(config, workdir)
    if vocab:
      vocab_lib.write(workdir, vocab)
    common.write_data_report(config, workdir)
    if partners is not None:
      print(f"pairs: {partners.stats()}", flush=True)

  batches = input_pipeline.make_iterator(
      images, labels, batch_size=parallel.local_batch_size(config.train.batch_size),
      shuffle=True, repeat=True, seed=config.seed, drop_remainder=True,
      skip_batches=start, partners=partners, extra=extra)
  writer = MetricWriter(workdir, resume_step=start)
  began = time.perf_counter()
  try:
    if monitor is not None and monitor_missed(config, workdir, start, lead):
      writer.write(start, monitor(start, state), prefix=monitor_lib.VAL_PREFIX)
    state = loop.run(
        state, built.step_fn, batches, mesh=mesh, num_steps=config.train.steps,
        writer=writer, log_every=config.train.log_every, checkpointer=ckpt,
        desc=f"pretrain {config.objective.name}", progress=config.train.progress,
        prefetch=config.train.get("prefetch", 2),
        check_every=config.train.get("check_every", 1),
        eval_fn=monitor, eval_every=config.train.get("monitor_every", 0),
        guard=loop.DivergenceGuard(**common.as_dict(
            config.train.get("divergence", {}))))
  finally:
    ckpt.close()
    writer.close()
  summary = {"objective": config.objective.name, "model": config.model.name,
             "dataset": config.data.name, "steps": config.train.steps,
             "resumed_from_step": start, "pairs": pairing_stats(partners),
             "seconds": time.perf_counter() - began,
             "final": common.last_metrics(workdir)}
  if monitor is not None:
    summary["monitor"] = monitor_summary(config, workdir, monitor, len(images),
                                         lead)
  if lead:
    files.write_json_atomic(os.path.join(workdir, "pretrain_summary.json"),
                             summary)
  return summary
