"""Image-tabular pretraining (clip_tabular) end to end from a generated
folder of PNGs + CSV through the pretrain_finetune job (what run.py runs for
configs/clip_tabular.py), on a tiny ViT (the text test runs the ResNet);
zero-shot refused for want of a text tower.

The generated data (tests/paired_data.py) demonstrates the mechanics, not
clinical value. Held-out retrieval (image -> its row's age, sex and
`extent`) must beat its chance rate by 0.3: with shuffled rows, or the
tabular tower cut off from the loss, it stays at chance (0.25).
"""
import pytest

from tests.paired_data import (held_out_retrieval, tiny_multimodal_config,
                               write_paired_csv)

TINY_VIT = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                num_heads=2, mlp_dim=64)


def test_image_tabular_pretraining_and_zero_shot_refused(tmp_path):
  from ssl_jax.jobs import finetune, pipeline
  csv, groups, splits = write_paired_csv(tmp_path / "data")
  config = tiny_multimodal_config(
      "clip_tabular", csv, numeric_columns=("age",),
      categorical_columns=("sex", "extent"), tabular_hidden_dim=32)
  config.model = TINY_VIT
  config.data.options.text_columns = ("extent",)  # a category, as text
  config.finetune.protocols = ("linear",)
  results = pipeline.train_and_evaluate(config, str(tmp_path / "run"))
  pre = tmp_path / "run" / "pretrain"
  accuracy, chance = held_out_retrieval(pre, config, groups, splits)
  assert accuracy >= chance + 0.3, (accuracy, chance)
  (linear,) = results["cells"].values()
  assert linear["test"]["auroc"] >= 0.8, linear["test"]
  config.finetune.protocols = ("zero_shot",)
  config.finetune.pretrained = str(pre)
  with pytest.raises(ValueError, match=r"'clip_tabular', which has no text "
                     r"tower"):
    finetune.train_and_evaluate(config, str(tmp_path / "zero_shot"))
  assert not (tmp_path / "zero_shot" / "cells").exists()
