"""Stage 2 as a job: classifiers on a pretrained encoder vs from scratch.

Composes the evaluation layer (ssl_jax/evaluation/): reads the pretrained
encoder, builds one `EncoderContext`, runs every (protocol, fraction, seed)
cell the `CellStore` lacks, and writes results.json and the Markdown table.
The protocols are in evaluation/protocols.py, the end-to-end classifier in
evaluation/classifier.py, the cell store in evaluation/cells.py.

Outputs in the workdir: config.json, data_report.json, cells/<method>/
(one JSON per finished cell, its val/test probabilities beside it as .npz
for `python -m ssl_jax.jobs.ensemble`), logs/ (end-to-end runs), results.json,
results.md, and init_from_report.json when the encoder came from
`config.init_from`.
"""
from __future__ import annotations

import os

import jax
import ml_collections

from ssl_jax import files, parallel
from ssl_jax.evaluation.cells import Cell, CellStore, run_cells, side_by_side
from ssl_jax.evaluation.encoder_context import SPLITS, EncoderContext
from ssl_jax.evaluation.protocols import PROTOCOLS
from ssl_jax.jobs import common, report
from ssl_jax.jobs import workdir as workdir_lib
from ssl_jax.models import stochastic_depth
from ssl_jax.objectives import base as objectives_base
from ssl_jax.train import encoder_weights, init_from


def read_pretrained(pretrained: str, projector_layers: int = 0
                    ) -> tuple[ml_collections.ConfigDict, encoder_weights.Flat]:
  """The pretraining config and its latest checkpoint's encoder, with its
  projector's first `projector_layers` layers as the encoder's neck
  (`finetune.keep_projector_layers`)."""
  pre_config = common.load_config(pretrained)
  weights, _ = encoder_weights.read(pretrained, projector_layers)
  return pre_config, weights


def kept_projector_layers(ft: ml_collections.ConfigDict) -> int:
  """`finetune.keep_projector_layers`, checked to be a count >= 0."""
  k = ft.get("keep_projector_layers", 0)
  if not isinstance(k, int) or isinstance(k, bool) or k < 0:
    raise ValueError("config.finetune.keep_projector_layers must be an "
                     f"integer >= 0 (projector layers kept), got {k!r}")
  return k


def read_teacher_encoders(ft, pre_config: ml_collections.ConfigDict | None
                          ) -> tuple[encoder_weights.Flat, ...]:
  """The encoders of `finetune.distill_teacher_pretrained`, refused unless
  each was pretrained with the job's own encoder's model and image size
  (a teacher is built as the student is)."""
  paths = tuple(ft.get("distill_teacher_pretrained", ()))
  if paths and pre_config is None:
    raise ValueError("config.finetune.distill_teacher_pretrained needs "
                     "config.finetune.pretrained: the student's own encoder, "
                     "whose architecture the teachers' encoders share")
  built = lambda c: {"model": common.as_saved(c.model), "data.size": c.data.size}
  mine = built(pre_config) if paths else {}
  encoders = []
  for path in paths:
    other, weights = read_pretrained(path, kept_projector_layers(ft))
    theirs = built(other)
    for field in mine:
      if theirs[field] != mine[field]:
        raise ValueError(
            f"config.finetune.distill_teacher_pretrained has {path}, whose "
            f"{field} is {theirs[field]}; the student's encoder "
            f"({ft.pretrained}) has {mine[field]}: a teacher must be built "
            "as the student is")
    encoders.append(weights)
  return tuple(encoders)


def stage2_config(config: ml_collections.ConfigDict,
                  pre_config: ml_collections.ConfigDict | None,
                  info) -> ml_collections.ConfigDict:
  """The classifier's config: the pretrained encoder's architecture, the
  supervised objective and the fine-tuning augmentation policy (protocol
  fields come from `config.finetune`, declared in configs/base.py)."""
  c = config.copy_and_resolve_references()
  if pre_config is not None:
    c.model = pre_config.model
    c.data.size = pre_config.data.size
  drop_path = stochastic_depth.check_rate(
      config.finetune.get("drop_path", 0.0), "config.finetune.drop_path")
  if drop_path:  # absent at 0: the model's record stays as it was
    c.model = ml_collections.ConfigDict(
        dict(c.model.to_dict(), drop_path_rate=drop_path))
  kept = kept_projector_layers(config.finetune)
  if kept:  # absent at 0, as drop_path_rate
    if pre_config is None:
      raise ValueError("config.finetune.keep_projector_layers keeps layers "
                       "of a pretrained projector: set config.finetune."
                       "pretrained (a random or config.init_from encoder "
                       "has none)")
    c.model = ml_collections.ConfigDict(
        dict(c.model.to_dict(), **projector_neck(pre_config, kept)))
  c.objective = ml_collections.ConfigDict(
      {"name": "supervised", "multi_label": bool(info.multi_label),
       "head_init": config.finetune.get("head_init", "zeros"),
       "mixup_alpha": float(config.finetune.get("mixup_alpha", 0.0)),
       "label_smoothing": float(config.finetune.get("label_smoothing", 0.0))})
  c.augment = config.finetune.augment
  return c


def projector_neck(pre_config: ml_collections.ConfigDict, layers: int
                   ) -> dict:
  """The encoder's `neck` and `neck_bn` (models/neck.py) that hold the
  first `layers` hidden layers of the pretraining's MLP projector."""
  objective = objectives_base.lookup(pre_config.objective)
  hp = objectives_base.resolve_hparams(objective, pre_config.objective)
  return {"neck": (int(hp.proj_hidden_dim),) * layers,
          "neck_bn": bool(hp.proj_bn)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  common.validate(config)
  if jax.process_index() == 0:
    workdir_lib.check_writable(workdir)
  ft = config.finetune
  needs_encoder = any(PROTOCOLS.get(p).needs_encoder for p in ft.protocols)
  pre_config, weights = (read_pretrained(ft.pretrained,
                                         kept_projector_layers(ft))
                         if ft.pretrained else (None, None))
  # Transfer without SSL (e.g. ImageNet weights): config.init_from.
  init_path = "" if ft.pretrained else config.get("init_from", {}).get("path", "")
  if init_path:
    weights, init_report = init_from.load_encoder_weights(
        config, common.data_info(config))
    files.write_json_atomic(os.path.join(workdir, "init_from_report.json"),
                            init_report)
  if needs_encoder and weights is None:
    raise ValueError(f"config.finetune.protocols={tuple(ft.protocols)} need a "
                     "pretrained encoder: set config.finetune.pretrained "
                     "(or config.init_from.path)")
  info = common.data_info(config)
  common.check_classes(config, info.task)
  cfg = stage2_config(config, pre_config, info)
  teacher_encoders = read_teacher_encoders(ft, pre_config)
  if (pre_config is not None
      and common.as_saved(pre_config.model) != common.as_saved(config.model)):
    print(f"finetune: the encoder is built as in {ft.pretrained}/config.json "
          f"(model {pre_config.model.to_dict()}), not as config.model "
          f"({config.model.to_dict()}); results.json records both", flush=True)
  mesh = parallel.config_mesh(config)  # (data, model), as in pretraining
  parallel.check_divisible(ft.batch_size, mesh, "finetune.batch_size")
  data = {split: common.load_split(cfg, split) for split in SPLITS}
  common.save_config(cfg, workdir)
  ctx = EncoderContext(config=cfg, workdir=workdir, mesh=mesh, info=info,
                       data=data, encoder_weights=weights,
                       init_seed=config.seed,
                       log_dir=os.path.join(workdir, "logs"),
                       groups=common.patient_groups(config),
                       pretrained=ft.pretrained,
                       teacher_encoders=teacher_encoders)
  for protocol in ft.protocols:  # refuse what cannot apply before any cell
    PROTOCOLS.get(protocol).check(ctx)
  if jax.process_index() == 0:
    common.write_data_report(config, workdir)

  method = (pre_config.objective.name if pre_config
            else "init_from" if init_path else "none")
  cells = [Cell(method, protocol, fraction, seed) for seed in ft.seeds
           for fraction in ft.fractions for protocol in ft.protocols]
  finished = run_cells(lambda cell: ctx, cells,
                       CellStore(os.path.join(workdir, "cells")),
                       progress=config.train.progress,
                       **side_by_side(ft))
  results = {
      "dataset": config.data.name, "image_size": cfg.data.size,
      "task": info.task, "model": cfg.model.to_dict(),
      "config_model": config.model.to_dict(),
      "pretrained": ft.pretrained or None, "init_from": init_path or None,
      "distill_teacher_pretrained": list(
          ft.get("distill_teacher_pretrained", ())),
      "pretrain_objective": pre_config.objective.name if pre_config else None,
      "finetune_augment": cfg.augment.policy,
      "decision_threshold": ft.get("decision_threshold", "medmnist"),
      "cells": finished}
  files.write_json_atomic(os.path.join(workdir, "results.json"), results)
  table = report.markdown_table(results)
  files.write_text_atomic(os.path.join(workdir, "results.md"), table)
  return results
