"""Image-text pretraining (clip_text) end to end from a generated folder of
PNGs + CSV through the pretrain_finetune job (what run.py runs for
configs/clip_text.py), then zero-shot classification from the class names.

The generated data (tests/paired_data.py) demonstrates the mechanics, not
clinical value. Held-out retrieval must beat its chance rate by 0.3 and
zero-shot test AUROC reach 0.8: with shuffled pairs, or a tower cut off
from the loss, both stay at chance (0.25, 0.5).
"""
import json

from tests.paired_data import (held_out_retrieval, tiny_multimodal_config,
                               write_paired_csv)


def test_image_text_pretraining_then_zero_shot(tmp_path):
  from ssl_jax.jobs import pipeline
  csv, groups, splits = write_paired_csv(tmp_path / "data")
  config = tiny_multimodal_config(
      "clip_text", csv, text_width=32, text_depth=1, text_heads=2,
      text_mlp_dim=64, max_length=12)
  config.finetune.protocols = ("zero_shot",)
  results = pipeline.train_and_evaluate(config, str(tmp_path / "run"))
  pre = tmp_path / "run" / "pretrain"
  vocab = json.loads((pre / "vocab.json").read_text())["text"]
  assert {"benign", "malignant", "small", "large"} <= set(vocab["tokens"])
  accuracy, chance = held_out_retrieval(pre, config, groups, splits)
  assert accuracy >= chance + 0.3, (accuracy, chance)
  (shot,) = results["cells"].values()
  assert shot["protocol"] == "zero_shot" and shot["labels_used"] == 0
  assert shot["prompts"] == ["benign", "malignant"]  # the class names
  assert shot["test"]["auroc"] >= 0.8, shot["test"]
