"""The benchmark sweep: methods x protocols x label fractions x seeds.

Why one job: the review compares SSL strategies by how much they help over
training from scratch, per label budget. That comparison is only fair when
every method gets the same network, steps and batch, the same label subsets
(stratified, nested, redrawn per seed) and the same stage-2 protocols, so
the sweep builds all of that from one config (configs/benchmark.py).

Layout of the workdir:
  pretrain/<method>/seed<k>/   one pretraining run per (method, seed), via
                               pretrain.train_and_evaluate (resumes itself)
  cells/<method>/<protocol>_f<fraction>_s<seed>.json
                               one file per finished cell (evaluation/cells.py)
  logs/<method>/seed<k>/       metrics of end-to-end stage-2 runs
  benchmark.json               the sweep's config and per-method metadata
  report.md, results.csv, *.png  (jobs/report.py, evaluation/plots.py)
Pretraining and stage-2 contexts are built lazily, on the first cell that
needs them, so a resumed sweep does no work for finished (method, seed)s.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import time
from typing import Any

import ml_collections

from ssl_jax import files, objectives, parallel
from ssl_jax.evaluation.cells import Cell, CellStore, run_cells, side_by_side
from ssl_jax.evaluation.encoder_context import SPLITS, EncoderContext
from ssl_jax.evaluation.protocols import END_TO_END, PROTOCOLS
from ssl_jax.jobs import common, finetune, pretrain, report
from ssl_jax.jobs import method_configs
from ssl_jax.jobs import workdir as workdir_lib

NONE = "none"        # no pretraining: random init / from scratch
COMBINE = "combine"  # the protocol that concatenates several encoders


def method_args(config: ml_collections.ConfigDict) -> dict[str, str]:
  out = {}
  for item in config.benchmark.method_args:
    method, sep, arg = item.partition("=")
    if not sep:
      raise ValueError(f"config.benchmark.method_args has {item!r}; each "
                       "entry is 'method=arg', e.g. 'supervised=chestmnist'")
    out[method] = arg
  return out


# Fields that define the sweep itself: the same for every method.
_SWEEP_FIELDS = ("protocols", "fractions", "seeds", "pretrained",
                 "cells_at_once", "save_predictions")


def finetune_by_method(config: ml_collections.ConfigDict
                       ) -> dict[str, dict[str, Any]]:
  """`benchmark.finetune_by_method` entries 'method.field=value' (e.g.
  'mae.layer_decay=0.75', 'mae.optim.lr=5e-4') as {method:
  {field path under finetune: value}}: a method's own stage-2 recipe in
  place of the shared one. Refuses a method outside the sweep, a field
  finetune does not have, and the fields that define the sweep."""
  out: dict[str, dict[str, Any]] = {}
  for item in config.benchmark.get("finetune_by_method", ()):
    target, sep, text = item.partition("=")
    method, dot, field = target.partition(".")
    if not (sep and dot and field):
      raise ValueError(f"config.benchmark.finetune_by_method has {item!r}; "
                       "each entry is 'method.field=value', e.g. "
                       "'mae.layer_decay=0.75'")
    if method not in config.benchmark.methods:
      raise ValueError(f"config.benchmark.finetune_by_method has {item!r}: "
                       f"{method!r} is not in config.benchmark.methods "
                       f"{tuple(config.benchmark.methods)}")
    if field.split(".")[0] in _SWEEP_FIELDS:
      raise ValueError(f"config.benchmark.finetune_by_method has {item!r}: "
                       f"finetune.{field} defines the sweep, the same for "
                       "every method")
    if _finetune_slot(config.finetune, field) is None:
      raise ValueError(f"config.benchmark.finetune_by_method has {item!r}: "
                       f"config.finetune has no field {field!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # a bare word: a string, e.g. linear_probe
    out.setdefault(method, {})[field] = value
  return out


def _finetune_slot(ft: ml_collections.ConfigDict, field: str
                   ) -> tuple[ml_collections.ConfigDict, str] | None:
  """The block of `ft` holding the dotted `field` and its last key; None
  when `ft` has no such field."""
  *parents, last = field.split(".")
  node = ft
  for key in parents:
    node = node.get(key) if hasattr(node, "keys") else None
  if not hasattr(node, "keys") or last not in node:
    return None
  return node, last


def with_method_finetune(config: ml_collections.ConfigDict,
                         overrides: dict[str, Any]
                         ) -> ml_collections.ConfigDict:
  """`config` with a method's stage-2 overrides in `finetune` (a copy when
  there are any)."""
  if not overrides:
    return config
  config = config.copy_and_resolve_references()
  for field, value in overrides.items():
    node, last = _finetune_slot(config.finetune, field)
    node[last] = value
  return config


def budgeted(c: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
             seed: int) -> ml_collections.ConfigDict:
  """`c` with the benchmark's shared budget: the same backbone (replaced
  whole), train/optim/augment overrides, image size, data dir, mesh and
  seed."""
  c = c.copy_and_resolve_references()
  budget = config.benchmark.budget
  with c.unlocked():
    c.model = ml_collections.ConfigDict(budget.model.to_dict())
    for section in ("train", "optim", "augment"):
      for key, value in budget.get(section, {}).items():
        if value is not None:  # None: keep the method's own value
          c[section][key] = value
    c.train.progress = config.train.progress
    c.data.size = config.data.size
    c.data.data_dir = config.data.data_dir
    c.mesh = config.mesh
    c.finetune = config.finetune
    c.seed = seed
  return c


def method_config(config: ml_collections.ConfigDict, method: str,
                  seed: int) -> ml_collections.ConfigDict:
  """configs/<method>.py `get_config(dataset)` with the shared budget (the
  file from `benchmark.configs_dir` when set)."""
  arg = method_args(config).get(method, config.data.name)
  return budgeted(method_configs.load(method, arg, directory=_dir(config)),
                  config, seed)


def _dir(config: ml_collections.ConfigDict) -> str:
  return config.benchmark.get("configs_dir", "") or ""


def combination(config: ml_collections.ConfigDict) -> str:
  """The method name of the `combine` cells, e.g. 'simclr+rotation'."""
  return "+".join(config.benchmark.combine)


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails before anything trains, naming the field and the fix."""
  common.validate(budgeted(config, config, config.seed))  # the budget's model
  bench, protocols = config.benchmark, tuple(config.finetune.protocols)
  for method in bench.methods:
    if method != NONE and not method_configs.exists(method, _dir(config)):
      where = (method_configs.path(method, _dir(config)) if _dir(config)
               else f"configs/{method}.py")
      raise ValueError(f"config.benchmark.methods has {method!r}, which has no "
                       f"{where}; use a config name or {NONE!r}")
    if method != NONE:
      method_cfg = method_config(config, method, 0)
      common.check_name(f"objective.name of configs/{method}.py",
                        method_cfg.objective.name, objectives.names())
      try:
        common.check_encoder(method_cfg)  # the budget's backbone
      except ValueError as e:
        raise ValueError(f"config.benchmark.methods has {method!r}: {e}; "
                         "the sweep's backbone is config.benchmark.budget."
                         "model (the config arg's backbone=vit for ViTs)"
                         ) from None
  for name in protocols:
    if not PROTOCOLS.get(name).needs_encoder:
      readers = [n for n, p in PROTOCOLS.items()
                 if p.needs_encoder and p.kind == END_TO_END]
      raise ValueError(f"config.finetune.protocols has {name!r}: in the "
                       f"benchmark the from-scratch baselines are method "
                       f"{NONE!r} with the protocols that read an encoder "
                       f"({', '.join(readers)})")
  if tuple(config.finetune.get("distill_teacher_pretrained", ())):
    raise ValueError("config.finetune.distill_teacher_pretrained is the "
                     "finetune job's (teachers from pretrainings done "
                     "elsewhere); the benchmark pretrains its own encoders: "
                     "set it to () here")
  if COMBINE in protocols:
    if len(bench.combine) < 2 or not set(bench.combine) <= set(bench.methods):
      raise ValueError(f"protocol {COMBINE!r} needs config.benchmark.combine to "
                       "name >= 2 of config.benchmark.methods, got "
                       f"{tuple(bench.combine)}")
  method_args(config)
  for method, overrides in finetune_by_method(config).items():
    common.validate(with_method_finetune(budgeted(config, config, config.seed),
                                         overrides))


def sweep_cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """Every cell, seed-major so each (method, seed) pretrains when first
  needed and its cells follow; the combination comes after its parts."""
  ft, bench = config.finetune, config.benchmark
  per_method = [p for p in ft.protocols if p != COMBINE]
  cells = []
  for seed in ft.seeds:
    for method in bench.methods:
      cells += [Cell(method, p, f, seed)
                for f in ft.fractions for p in per_method]
    if COMBINE in ft.protocols:
      cells += [Cell(combination(config), COMBINE, f, seed)
                for f in ft.fractions]
  return cells


def method_info(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """Per method: its objective and the review category it stands for."""
  out = {NONE: {"objective": None, "category": "none"}}
  for method in config.benchmark.methods:
    if method != NONE:
      name = method_config(config, method, 0).objective.name
      out[method] = {"objective": name,
                     "category": objectives.get(name).category}
  if COMBINE in config.finetune.protocols:
    out[combination(config)] = {"objective": None, "category": "combined"}
  return out


# Every other field must match between reruns in one workdir: changing it
# would mix cells of different setups. The lists may grow; where the data
# lives, the display and the devices do not change results.
_NOT_BINDING = ("benchmark.methods", "benchmark.combine", "benchmark.progress",
                "finetune.protocols", "finetune.fractions", "finetune.seeds",
                "finetune.save_predictions", "finetune.cells_at_once",
                "train.progress", "data.data_dir",
                "mesh", "distributed")


def _fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return workdir_lib.flatten(config, _NOT_BINDING)


def _defaults() -> dict[str, Any]:
  """Each binding field's default: configs/base.py's, the benchmark
  block's from configs/benchmark.py (base has none)."""
  block = {k: v for k, v in _fingerprint(method_configs.load("benchmark")
                                          ).items()
           if k.startswith("benchmark.")}
  return {**_fingerprint(method_configs.load("base")), **block}


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to mix cells of different budgets in one workdir."""
  path = os.path.join(workdir, "benchmark.json")
  saved = files.read_json(path)
  if saved is None:
    return
  # A field newer than the saved sweep binds only if it left its default.
  changed = workdir_lib.changed_fields(
      _fingerprint(config), saved["fingerprint"], _defaults())
  if changed:
    raise ValueError(f"{workdir} holds a sweep with other settings ({', '.join(changed[:8])}"
                     f"{' ...' if len(changed) > 8 else ''}); use a fresh "
                     "--workdir, or only grow methods/protocols/fractions/seeds")


class Contexts:
  """Encoder contexts per (method, seed), pretraining on first use."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               info, mesh, data):
    self.config, self.workdir = config, workdir
    self.info, self.mesh, self.data = info, mesh, data
    # One architecture: trainers compile once per stage-2 recipe (a
    # method's own, `finetune_by_method`, gets its own programs).
    self.compiled: dict[str, dict] = {}
    self.overrides = finetune_by_method(config)
    self.groups = common.patient_groups(config)
    self._cache: dict[tuple[str, int], EncoderContext] = {}

  def __call__(self, cell: Cell) -> EncoderContext:
    if cell.protocol == COMBINE:
      first, *rest = cell.method.split("+")
      return dataclasses.replace(
          self.get(first, cell.seed),
          peers=tuple(self.get(m, cell.seed) for m in rest))
    return self.get(cell.method, cell.seed)

  def pretrained_dir(self, method: str, seed: int) -> str:
    """Pretrains (or resumes) `method` for `seed` unless finished."""
    pre_dir = os.path.join(self.workdir, "pretrain", method, f"seed{seed}")
    cfg = method_config(self.config, method, seed)
    if workdir_lib.is_busy(pre_dir):  # another sweep process pretrains it
      holder = workdir_lib.read_holder(pre_dir) or {}
      print(f"waiting for pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} to finish {pre_dir}", flush=True)
      while workdir_lib.is_busy(pre_dir):
        time.sleep(2.0)
    summary = files.read_json(os.path.join(pre_dir, "pretrain_summary.json"))
    if summary is None or summary["steps"] != cfg.train.steps:
      print(f"pretraining {method} (seed {seed}) in {pre_dir}", flush=True)
      pretrain.train_and_evaluate(cfg, pre_dir)
    return pre_dir

  def get(self, method: str, seed: int) -> EncoderContext:
    if (method, seed) not in self._cache:
      overrides = self.overrides.get(method, {})
      base = with_method_finetune(budgeted(self.config, self.config, seed),
                                  overrides)
      pre_config, weights, pre_dir = None, None, ""
      if method != NONE:
        pre_dir = self.pretrained_dir(method, seed)
        pre_config, weights = finetune.read_pretrained(
            pre_dir, finetune.kept_projector_layers(base.finetune))
      self._cache[(method, seed)] = EncoderContext(
          config=finetune.stage2_config(base, pre_config, self.info),
          workdir=self.workdir, mesh=self.mesh, info=self.info, data=self.data,
          encoder_weights=weights, init_seed=seed,
          log_dir=os.path.join(self.workdir, "logs", method, f"seed{seed}"),
          compiled=self.compiled.setdefault(
              json.dumps(overrides, sort_keys=True), {}),
          groups=self.groups, pretrained=pre_dir)
    return self._cache[(method, seed)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  workdir_lib.check_writable(workdir)
  check_resumable(config, workdir)
  began = time.perf_counter()
  base = budgeted(config, config, config.seed)
  info = common.data_info(base)
  mesh = parallel.config_mesh(config)
  parallel.check_divisible(config.finetune.batch_size, mesh, "finetune.batch_size")
  data = {split: common.load_split(base, split) for split in SPLITS}
  meta = {
      "dataset": config.data.name, "image_size": config.data.size,
      "task": info.task, "budget": config.benchmark.budget.to_dict(),
      "finetune_steps": config.finetune.steps,
      "finetune_epochs": config.finetune.get("epochs", 0),
      "finetune_batch_size": config.finetune.batch_size,
      "bootstrap_samples": config.finetune.bootstrap_samples,
      "ci_level": config.finetune.ci_level,
      "finetune_augment": config.finetune.augment.policy,
      "decision_threshold": config.finetune.decision_threshold,
      "methods": method_info(config),
      "finetune_by_method": finetune_by_method(config),
      "protocols": list(config.finetune.protocols),
      "fractions": list(config.finetune.fractions),
      "seeds": list(config.finetune.seeds),
      "fingerprint": _fingerprint(config)}
  files.write_json_atomic(os.path.join(workdir, "benchmark.json"), meta)

  contexts = Contexts(config, workdir, info=info, mesh=mesh, data=data)
  cells = sweep_cells(config)
  finished = run_cells(contexts, cells, CellStore(os.path.join(workdir, "cells")),
                       progress=config.benchmark.progress,
                       **side_by_side(config.finetune))
  meta["this_run_seconds"] = time.perf_counter() - began
  paths = report.write_benchmark_report(workdir, finished, meta)
  print(open(paths["report"]).read())
  return {"cells": finished, "meta": meta, "outputs": paths}
