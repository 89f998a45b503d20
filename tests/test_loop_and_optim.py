"""Loop guards and optimizer schedules, on toy pytrees (no models needed)."""
import itertools
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl_jax import parallel
from ssl_jax.train import loop, optim, state as state_lib
from ssl_jax.train.metrics_writer import MetricWriter


def _opt_config(**kw):
  return ml_collections.ConfigDict(dict(
      name="adamw", lr=1.0, scale_by_batch=False, weight_decay=0.1,
      warmup_steps=10, final_lr_fraction=0.0, grad_clip_norm=0.0) | kw)


def test_warmup_then_cosine_schedule():
  schedule = optim.make_schedule(_opt_config(lr=0.4, scale_by_batch=True), 512, 110)
  peak = 0.4 * 512 / 256
  np.testing.assert_allclose(float(schedule(0)), 0.0)
  np.testing.assert_allclose(float(schedule(5)), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), peak / 2, rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(float(schedule(110)), 0.0, atol=1e-7)


def numpy_warmup_cosine(t, *, peak, warmup, total, final):
  """Linear 0 -> peak over `warmup` steps, then peak -> final along half a
  cosine over the remaining total - warmup steps, then final."""
  if t < warmup:
    return peak * t / warmup
  progress = min((t - warmup) / (total - warmup), 1.0)
  return final + (peak - final) * 0.5 * (1 + np.cos(np.pi * progress))


@pytest.mark.parametrize("lr,batch,warmup,total,final_fraction", [
    (0.4, 512, 10, 110, 0.0), (3e-3, 256, 0, 50, 0.1), (1e-2, 128, 7, 40, 0.25)])
def test_schedule_matches_the_closed_form_at_every_step(
    lr, batch, warmup, total, final_fraction):
  schedule = optim.make_schedule(_opt_config(
      lr=lr, scale_by_batch=True, warmup_steps=warmup,
      final_lr_fraction=final_fraction), batch, total)
  peak = lr * batch / 256
  got = np.array([float(schedule(t)) for t in range(total + 5)])
  expected = np.array([numpy_warmup_cosine(
      t, peak=peak, warmup=warmup, total=total, final=peak * final_fraction)
      for t in range(total + 5)])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7 * peak)
  # The decay's size: from the peak down to final_fraction of it.
  assert got.max() == pytest.approx(peak, rel=1e-6)
  assert got[-1] == pytest.approx(peak * final_fraction, abs=1e-7 * peak)
  assert np.all(np.diff(got[warmup:]) <= 1e-9 * peak)  # never rises again


@pytest.mark.parametrize("warmup", [0, 10])
def test_step_schedule_is_multistep_lr(warmup):
  """MedMNIST v2's recipe: lr x0.1 at 50 % and 75 % of the run, as
  PyTorch's MultiStepLR counts steps (the decayed lr from the boundary on)."""
  schedule = optim.make_schedule(_opt_config(
      lr=1e-3, warmup_steps=warmup, schedule="step", decay_at=(0.5, 0.75),
      decay_factor=0.1), 128, 400)
  got = np.array([float(schedule(t)) for t in range(400)])
  expected = np.where(np.arange(400) < 200, 1e-3,
                      np.where(np.arange(400) < 300, 1e-4, 1e-5))
  if warmup:
    expected[:warmup] = 1e-3 * np.arange(warmup) / warmup
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("decay_at", (0.75, 0.5), "increasing"), ("decay_at", (0.5, 1.0), "in \\(0, 1\\)"),
    ("decay_factor", 0.0, "in \\(0, 1\\]"), ("schedule", "linear", "schedule")])
def test_step_schedule_fields_are_checked(field, value, match):
  cfg = _opt_config(schedule="step", decay_at=(0.5, 0.75), decay_factor=0.1)
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    optim.check(cfg, 100)


@pytest.mark.parametrize("name", ["adamw", "lars", "sgd"])
def test_weight_decay_skips_biases_and_scales(name):
  params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
  tx, _ = optim.make_optimizer(_opt_config(name=name, warmup_steps=0), 256, 10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates["kernel"]).sum()) > 0  # decayed
  assert float(jnp.abs(updates["bias"]).sum()) == 0   # left alone


def test_unknown_optimizer_lists_allowed():
  with pytest.raises(KeyError, match="allowed: adamw, lars, sgd"):
    optim.make_optimizer(_opt_config(name="adam"), 256, 10)


def _toy_state():
  params = {"w": jnp.ones(())}
  tx = optax.sgd(0.1)
  return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              rest={}, opt_state=tx.init(params), extra={},
                              rng=jax.random.PRNGKey(0))


def test_loop_stops_on_nan_and_names_the_step(tmp_path):
  def step_fn(state, batch):
    loss = jnp.where(state.step >= 2, jnp.nan, 1.0)
    return state.replace(step=state.step + 1), {"loss": loss}

  batches = itertools.repeat({"image": np.zeros((2, 1), np.float32)})
  with pytest.raises(loop.TrainingDiverged, match=r"step 3: \{'loss': nan\}"):
    loop.run(_toy_state(), step_fn, batches, mesh=parallel.make_mesh(1),
             num_steps=10, writer=MetricWriter(tmp_path),
             log_every=1, progress=False)


def test_logged_images_per_sec_counts_short_batches(tmp_path, monkeypatch):
  """Stage 2's epochs end on a short batch: the rate counts the rows each
  batch held (here per fake second), after the first (compiling) step."""
  def step_fn(state, batch):
    return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0)}

  clock = itertools.count()
  monkeypatch.setattr(loop, "time", types.SimpleNamespace(
      perf_counter=lambda: float(next(clock))))
  sizes = itertools.cycle([4, 4, 2])
  batches = ({"image": np.zeros((n, 1), np.float32)} for n in sizes)
  loop.run(_toy_state(), step_fn, batches, mesh=parallel.make_mesh(1),
           num_steps=6, log_every=3, progress=False,
           writer=MetricWriter(tmp_path, tensorboard=False))
  rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["train/images_per_sec"] for r in rows] == [6.0, 10.0]


def test_resumed_metrics_log_drops_rows_past_the_checkpoint(tmp_path):
  writer = MetricWriter(tmp_path, tensorboard=False)
  for step in range(1, 7):
    writer.write(step, {"loss": float(step)})
  writer.close()
  MetricWriter(tmp_path, tensorboard=False, resume_step=4).close()
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(rows) == 4 and '"step": 4' in rows[-1]


def test_bar_shows_the_ssl_and_probe_losses_apart():
  assert loop.bar_postfix({"loss": 3.0, "ssl_loss": 2.5, "probe_loss": 0.5,
                           "images_per_sec": 99.6}) == {
      "ssl_loss": "2.5000", "probe_loss": "0.5000", "img_s": "100"}
  assert loop.bar_postfix({"loss": 1.25}) == {"loss": "1.2500", "img_s": "0"}


def test_a_nested_bar_leaves_no_cursor_codes_in_a_log_file(tmp_path, capfd):
  """Fine-tuning runs the loop under the cells bar: with stderr a file
  (not a terminal) the inner bar is off, so no ESC[A lands in the log."""
  from tqdm.auto import tqdm  # noqa: PLC0415
  def step_fn(state, batch):
    return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0)}

  batches = itertools.repeat({"image": np.zeros((2, 1), np.float32)})
  outer = tqdm(total=1, desc="cells")
  loop.run(_toy_state(), step_fn, batches, mesh=parallel.make_mesh(1),
           num_steps=3, log_every=1, progress=True,
           nested=True, writer=MetricWriter(tmp_path, tensorboard=False))
  outer.update(1)
  outer.close()
  err = capfd.readouterr().err
  assert "cells" in err and "\x1b[A" not in err
