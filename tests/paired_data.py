"""Generated paired data for the multimodal end-to-end tests, and what they
measure.

The generated data demonstrates the mechanics, not clinical value: each
image is a blob whose brightness says its label (benign dim, malignant
bright) and whose radius says its size (small, large); its report and its
tabular columns are written from the same label and size, with noise: a
report's label word is flipped for 1 row in 10 and its filler words are
random, `extent` (small / large) is flipped for 1 row in 10, age only
correlates with the label, sex is pure noise.
"""
from __future__ import annotations

import importlib

import numpy as np
from flax import nnx
from PIL import Image

import data_pipelines
from data_pipelines import vocab as vocab_lib
from ssl_jax import views
from ssl_jax.evaluation import zero_shot
from ssl_jax.objectives import multimodal
from tests.tiny import tiny_config

CLASSES = ("benign", "malignant")
SIZES = ("small", "large")
FILLER = ("seen", "noted", "on", "the", "view", "film", "left", "right")


def write_paired_csv(root, n=240, seed=0):
  """PNGs + labels.csv with `report`, `age`, `sex` and `extent` columns
  written from each image's label and size (see the module doc). Rows:
  70 % train, 10 % val, 20 % test. Returns (csv path, attribute group
  label * 2 + size per row, split per row)."""
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:28, :28]
  lines = ["path,label,report,age,sex,extent,split"]
  groups, splits = [], []
  for i in range(n):
    label, size = int(rng.integers(2)), int(rng.integers(2))
    radius = (3.0, 8.0)[size] + rng.uniform(-0.5, 0.5)
    cy, cx = rng.integers(10, 19, size=2)
    blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    brightness = (90, 210)[label] + rng.normal(0, 12)
    image = 30 + blob * brightness + rng.normal(0, 10, (28, 28))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        root / f"im{i}.png")
    said = label if rng.random() > 0.1 else 1 - label  # a noisy report
    words = ["a", SIZES[size], CLASSES[said], "lesion"] + list(
        rng.choice(FILLER, int(rng.integers(0, 4))))
    age = 50 + 12 * (2 * label - 1) + rng.normal(0, 8)
    extent = SIZES[size] if rng.random() > 0.1 else SIZES[1 - size]
    split = "train" if i < 0.7 * n else ("val" if i < 0.8 * n else "test")
    lines.append(f"im{i}.png,{CLASSES[label]},{' '.join(words)},{age:.1f},"
                 f"{'FM'[int(rng.integers(2))]},{extent},{split}")
    groups.append(2 * label + size)
    splits.append(split)
  (root / "labels.csv").write_text("\n".join(lines) + "\n")
  return root / "labels.csv", np.array(groups), np.array(splits)


def tiny_multimodal_config(method: str, csv, **objective):
  """configs/<method>.py shrunk: ResNet-18 x1/16 (1,1,1,1), 40 steps of 32,
  no views (the pairing, not augmentation, is what is tested), stage 2
  on all labels only, no bootstrap."""
  config = importlib.import_module(f"configs.{method}").get_config(str(csv))
  small = tiny_config()
  config.model = dict(small.model.to_dict(), stage_sizes=(1, 1, 1, 1))
  config.objective.update(dict(proj_hidden_dim=64, proj_dim=32, **objective))
  config.augment.policy = "none"
  config.online_probe = False
  config.train.update(dict(steps=40, batch_size=32, log_every=10,
                           checkpoint_every=0, progress=False))
  config.optim = dict(name="adamw", lr=3e-3, scale_by_batch=False,
                      weight_decay=0.0, warmup_steps=5, final_lr_fraction=0.1,
                      grad_clip_norm=0.0)
  config.finetune.update(dict(fractions=(1.0,), bootstrap_samples=0,
                              eval_batch_size=64))
  return config


def held_out_retrieval(workdir, config, groups, splits):
  """Top-1 image -> paired-row retrieval among the test split's rows,
  counted right when the row found has the image's own (label, size), and
  that event's chance rate (sum over groups of their squared share)."""
  options = dict(config.data.options.to_dict())
  options = {k: v for k, v in options.items() if v is not None}
  info = data_pipelines.info(config.data.name, 28, options=options)
  model, vocab = zero_shot.load_model(str(workdir), info)
  images, _ = data_pipelines.load(config.data.name, "test", options=options)
  meta = data_pipelines.metadata(config.data.name, "test", options=options)
  paired = vocab_lib.encode(vocab, meta, "test split")
  z_image = nnx.jit(lambda m, x: m.embed_image(views.eval_view(x),
                                               train=False))(model, images)
  z_paired = nnx.jit(lambda m, c: m.embed_paired(c, train=False))(
      model, paired)
  cos = np.asarray(multimodal.l2_normalize(z_image)
                   @ multimodal.l2_normalize(z_paired).T)
  test_groups = groups[splits == "test"]
  found = test_groups[cos.argmax(1)]
  share = np.bincount(test_groups) / len(test_groups)
  return float(np.mean(found == test_groups)), float(np.sum(share ** 2))
