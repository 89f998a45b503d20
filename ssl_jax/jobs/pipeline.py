"""Pretrain, then fine-tune/probe at each label fraction vs from scratch.

The demo job: `<workdir>/pretrain` holds the SSL run, `<workdir>/finetune`
the stage-2 cells; the comparison table is printed and written to
`<workdir>/results.md`.
"""
from __future__ import annotations

import os

import ml_collections

from ssl_jax import files
from ssl_jax.jobs import common, finetune, pretrain


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  common.validate(config)
  common.check_classes(config, common.data_info(config).task)  # before pretraining
  pre_dir = os.path.join(workdir, "pretrain")
  summary = pretrain.train_and_evaluate(config, pre_dir)
  print(f"pretrained {config.objective.name} for {summary['steps']} steps in "
        f"{summary['seconds']:.0f} s; final loss "
        f"{summary['final'].get('train/loss', float('nan')):.4f}")
  ft_config = config.copy_and_resolve_references()
  ft_config.finetune.pretrained = pre_dir
  results = finetune.train_and_evaluate(ft_config, os.path.join(workdir, "finetune"))
  table = open(os.path.join(workdir, "finetune", "results.md")).read()
  files.write_text_atomic(os.path.join(workdir, "results.md"), table)
  print("\n" + table)
  return results
