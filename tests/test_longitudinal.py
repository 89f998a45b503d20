"""The longitudinal pretext task: its loss against numpy, and the interval
recovered from synthetic longitudinal data read from a folder + CSV.

The synthetic data demonstrates the mechanics (study_date parsing, same-
patient partners with their dates, the objective), not clinical value: each
patient's "lesion" is a disk whose radius grows with time since that
patient's first scan, so the time between two scans is in the images.
"""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssl_jax.objectives import longitudinal
from tests.tiny import tiny_config


def numpy_pair_time_loss(out, dt, order_weight, interval_weight):
  logit, interval = out[:, 0].astype(np.float64), out[:, 1].astype(np.float64)
  p = 1 / (1 + np.exp(-logit))
  ordered = dt != 0
  bce = -(np.where(dt > 0, np.log(p), np.log(1 - p)))
  order = bce[ordered].mean() if ordered.any() else 0.0
  return order_weight * order + interval_weight * np.mean(
      (interval - np.abs(dt)) ** 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_time_loss_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  out = rng.normal(size=(9, 2)).astype(np.float32)
  dt = rng.choice([-2.0, -0.5, 0.0, 0.25, 1.5], size=9).astype(np.float32)
  loss, metrics = longitudinal.pair_time_loss(jnp.asarray(out),
                                              jnp.asarray(dt), 0.7, 1.3)
  np.testing.assert_allclose(float(loss),
                             numpy_pair_time_loss(out, dt, 0.7, 1.3), rtol=1e-5)
  ordered = dt != 0
  assert float(metrics["order_acc"]) == pytest.approx(
      np.mean((out[ordered, 0] > 0) == (dt[ordered] > 0)))
  assert float(metrics["ordered_fraction"]) == pytest.approx(ordered.mean())


def write_longitudinal_csv(root, patients=24, visits=4, seed=0):
  """Per patient: visits at random dates; the disk's radius grows 2 px per
  year since the first visit, its centre and brightness vary by patient."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:28, :28]
  lines = ["path,patient_id,study_date,label,split"]
  for p in range(patients):
    first = np.datetime64("2015-01-01") + int(rng.integers(0, 365))
    days = np.sort(rng.choice(np.arange(0, 4 * 365, 30), visits, replace=False))
    cy, cx = rng.integers(11, 17, size=2)
    split = "train" if p < patients - 4 else ("val" if p % 2 else "test")
    for v, d in enumerate(days):
      radius = 3.0 + 2.0 * d / 365.0
      disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2)
      image = 40 + disk * rng.integers(150, 220) + rng.normal(0, 8, (28, 28))
      name = f"p{p}_v{v}.png"
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / name)
      lines.append(f"{name},p{p},{first + int(d)},{int(d > 365)},{split}")
  (root / "scans.csv").write_text("\n".join(lines) + "\n")
  return root / "scans.csv"


def test_the_interval_between_two_scans_is_learned(tmp_path):
  from ssl_jax.jobs import pretrain
  csv = write_longitudinal_csv(tmp_path)
  config = tiny_config(**{
      "job": "pretrain", "data.name": f"csv:{csv}",
      "model.stage_sizes": (1, 1, 1, 1), "online_probe": False,
      "pairs.mode": "patient", "augment.policy": "none",
      "train.steps": 120, "train.batch_size": 32, "train.log_every": 10,
      "train.checkpoint_every": 0})
  config.optim = dict(name="adamw", lr=3e-3, scale_by_batch=False,
                      weight_decay=0.0, warmup_steps=5, final_lr_fraction=0.1,
                      grad_clip_norm=0.0)
  config.objective = dict(name="longitudinal", time_column="study_date",
                          head_hidden_dim=32)
  pretrain.train_and_evaluate(config, str(tmp_path / "run"))
  rows = [json.loads(line) for line in
          (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in rows if "train/order_acc" in r]
  first, last = logged[0], logged[-1]
  # Same-patient partners 30..1400 days apart: order is recovered, and the
  # interval error falls well below its start.
  assert last["train/order_acc"] >= 0.8, last
  assert last["train/interval_mae"] < 0.5 * first["train/interval_mae"], (
      first, last)


def test_missing_time_columns_are_named_before_compiling(tmp_path):
  from ssl_jax.jobs import pretrain
  csv = write_longitudinal_csv(tmp_path, patients=6, visits=2)
  config = tiny_config(**{"job": "pretrain", "data.name": f"csv:{csv}"})
  config.objective = dict(name="longitudinal", time_column="days")
  with pytest.raises(ValueError, match=r"reads the batch columns \['days', "
                     r"'pair_days'\].*pairs.mode='views'"):
    pretrain.train_and_evaluate(config, str(tmp_path / "run"))
