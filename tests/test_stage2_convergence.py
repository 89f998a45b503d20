"""Stage 2 trained to convergence: epoch-based lengths, class-balanced loss
weights, selection on val AUROC with val loss breaking ties."""
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax.evaluation import classifier
from ssl_jax.jobs import finetune
from ssl_jax.objectives import supervised
from ssl_jax.train.state import TrainState
from tests.tiny import tiny_config


def _ft(**kw):
  return ml_collections.ConfigDict(dict(
      steps=300, eval_every=50, batch_size=128, epochs=0,
      eval_every_epochs=1.0, min_steps=100) | kw)


def test_run_length_counts_epochs_over_the_labelled_subset():
  assert classifier.run_length(_ft(), 546) == 300  # epochs=0: fixed steps
  # MedMNIST recipe on BreastMNIST: 100 epochs of 546 images at batch 128.
  assert classifier.run_length(_ft(epochs=100), 546) == 427
  # A 1 % subset (5 images) would get 4 steps; min_steps keeps it training.
  assert classifier.run_length(_ft(epochs=100), 5) == 100
  assert classifier.eval_interval(_ft(), 546, 300) == 50
  assert classifier.eval_interval(_ft(epochs=100), 546, 427) == 4  # every epoch
  assert classifier.eval_interval(_ft(epochs=100), 5, 100) == 1
  assert classifier.eval_interval(_ft(epochs=100, eval_every_epochs=5.0),
                                546, 427) == 21


def test_keeping_the_short_batch_counts_it_as_a_step():
  keep = _ft(epochs=100, last_batch="keep")
  # 546 images at batch 128, PyTorch's DataLoader: 4 x 128 + 34 an epoch.
  assert classifier.steps_per_epoch(keep, 546) == 5
  assert classifier.run_length(keep, 546) == 500
  assert classifier.eval_interval(keep, 546, 500) == 5  # every epoch end
  assert classifier.steps_per_epoch(_ft(epochs=100), 546) == 546 / 128
  with pytest.raises(ValueError, match="finetune.last_batch='drop'"):
    classifier.run_length(_ft(epochs=100, last_batch="drop"), 546)


def test_balanced_class_weights_equalise_the_classes():
  labels = np.array([0] * 147 + [1] * 399)
  w = classifier.balanced_class_weights(labels, 2)
  assert w == pytest.approx((546 / (2 * 147), 546 / (2 * 399)))
  assert w[0] * 147 == pytest.approx(w[1] * 399)


def test_class_weighted_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(12, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=12)
  class_w = np.array([0.5, 2.0, 1.0], np.float32)
  loss, acc = supervised.classification_loss(
      jnp.asarray(logits), jnp.asarray(labels), False,
      class_weights=jnp.asarray(class_w))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -log_p[np.arange(12), labels]
  w = class_w[labels]
  np.testing.assert_allclose(float(loss), (w * nll).sum() / w.sum(), rtol=1e-5)
  assert float(acc) == pytest.approx(np.mean(logits.argmax(-1) == labels))


def _scratch_run(tmp_path, medmnist_dir, protocol="scratch",
                 **overrides) -> tuple[dict, list]:
  """A 2-epoch scratch (or `protocol`) cell on 10 % of BreastMNIST (55
  images, batch 16): its results cell and the validation rows of its log."""
  config = tiny_config(**{
      "job": "finetune", "data.data_dir": str(medmnist_dir),
      "finetune.protocols": (protocol,), "finetune.fractions": (0.1,),
      "finetune.epochs": 2, "finetune.min_steps": 3,
      "finetune.batch_size": 16, "finetune.optim.schedule": "step",
      **overrides})
  results = finetune.train_and_evaluate(config, str(tmp_path))
  (cell,) = results["cells"].values()
  with open(os.path.join(tmp_path, "logs", f"{protocol}_n{cell['n_train']}_s0",
                         "metrics.jsonl")) as f:
    evals = [row for row in map(json.loads, f) if "val/auroc" in row]
  return cell, evals


BALANCED = {"finetune.class_weights": "balanced"}


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory, medmnist_dir):
  """A class-weighted scratch cell (`_scratch_run`) and its workdir."""
  workdir = tmp_path_factory.mktemp("balanced")
  return (workdir, *_scratch_run(workdir, medmnist_dir, **BALANCED))


def test_epoch_based_scratch_run_records_its_selection(balanced_run):
  _, cell, evals = balanced_run
  # 10 % of 546 = 55 images, 2 epochs at batch 16 -> 7 steps, checked every
  # 3 steps (one epoch) and at the end.
  assert cell["steps"] == 7
  assert cell["selected_step"] in (3, 6, 7)
  assert 0.0 <= cell["test"]["balanced_accuracy"] <= 1.0
  assert [row["step"] for row in evals] == [3, 6, 7]
  best = max(evals, key=lambda r: (r["val/auroc"], -r["val/loss"]))
  assert cell["selected_step"] == best["step"]
  assert cell["selected_val_auroc"] == pytest.approx(best["val/auroc"])


def test_selection_starts_where_the_warmup_ends():
  ft = _ft(optim=dict(warmup_steps=20))
  assert classifier.selection_start(ft, 100) == 20
  assert classifier.selection_start(ft, 10) == 9  # optim caps the warmup
  assert classifier.selection_start(_ft(optim=dict()), 100) == 0
  assert classifier.selection_start(
      _ft(optim=dict(warmup_steps=20), select_from="first_eval"), 100) == 0
  with pytest.raises(ValueError, match="finetune.select_from='best'"):
    classifier.selection_start(_ft(optim=dict(), select_from="best"), 100)


def test_best_on_val_skips_evaluations_inside_the_warmup():
  best, copies = classifier.BestOnVal(start=20), []

  def offer(step, auroc, loss):
    return best.offer(step, {"auroc": auroc, "loss": loss},
                      lambda: copies.append(step) or step)

  assert offer(0, 0.70, 0.60)       # step 0: a fitted LP-FT head
  assert not offer(2, 0.95, 0.69)   # inside the warmup: never a candidate
  assert not offer(20, 0.65, 0.50)  # a candidate, but worse
  assert offer(40, 0.80, 0.50)
  assert not offer(60, 0.80, 0.55)  # equal AUROC, higher loss
  assert offer(80, 0.80, 0.45)      # equal AUROC, lower loss
  assert (best.step, best.auroc, best.loss, best.state) == (80, 0.80, 0.45, 80)
  assert copies == [0, 40, 80]      # the state is fetched only when kept


def test_best_on_val_by_loss_or_last():
  def kept(rule, evals):
    best = classifier.BestOnVal(start=20, rule=rule)
    for step, auroc, loss in evals:
      best.offer(step, {"auroc": auroc, "loss": loss}, lambda s=step: s)
    return best.step, best.state

  evals = [(2, 0.99, 0.10), (20, 0.70, 0.40), (40, 0.90, 0.50),
           (60, 0.80, 0.30), (80, 0.75, 0.30), (100, 0.60, 0.60)]
  assert kept("val_auroc", evals) == (40, 40)
  assert kept("val_loss", evals) == (60, 60)   # equal loss: higher AUROC
  assert kept("last", evals) == (100, 100)     # the warmup still excluded
  assert kept("last", evals[:1]) == (None, None)


def test_smoothed_selection_keeps_the_best_neighbourhood_not_the_spike():
  def kept(evals):
    best, copies = classifier.best_on_val(20, "val_auroc_smoothed"), []
    for step, auroc, loss in evals:
      best.offer(step, {"auroc": auroc, "loss": loss},
                 lambda s=step: copies.append(s) or s)
    best.finish()
    return best.step, best.state, best.auroc, copies

  # 60 is a lone spike (its window's mean 0.697); 120's window 0.80, 0.82,
  # 0.79 (mean 0.803) is the best.
  evals = [(2, 0.99, 0.1), (20, 0.60, 0.5), (40, 0.60, 0.5), (60, 0.99, 0.5),
           (80, 0.50, 0.5), (100, 0.80, 0.5), (120, 0.82, 0.5),
           (140, 0.79, 0.5), (160, 0.70, 0.5)]
  step, state, auroc, copies = kept(evals)
  assert (step, state, auroc) == (120, 120, 0.82)  # its own AUROC reported
  assert copies == [20, 40, 60, 80, 100, 120, 140, 160]  # not the warmup's
  # the first and the last candidates are judged on two evaluations
  assert kept(evals[:1] + [(20, 0.9, 0.5), (40, 0.7, 0.5),
                           (60, 0.6, 0.5)])[0] == 20
  assert kept([(20, 0.7, 0.5), (40, 0.6, 0.5), (60, 0.9, 0.5)])[0] == 60
  assert kept([(20, 0.7, 0.5)])[0] == 20        # one candidate: itself
  assert kept([(2, 0.7, 0.5)])[0] is None       # none after the warmup
  # equal mean AUROC: the lower mean loss wins, the earlier on a full tie
  # (values exact in binary, so every window's mean is exact)
  assert kept([(20, 0.75, 0.5), (40, 0.75, 0.25), (60, 0.75, 0.25),
               (80, 0.75, 0.5), (100, 0.75, 0.5)])[0] == 40
  assert kept([(20, 0.75, 0.5), (40, 0.75, 0.5), (60, 0.75, 0.25),
               (80, 0.75, 0.25), (100, 0.75, 0.5)])[0] == 60


def test_scratch_run_selected_by_smoothed_auroc_keeps_the_best_window(
    tmp_path, medmnist_dir):
  cell, evals = _scratch_run(
      tmp_path, medmnist_dir, **{"finetune.select_by": "val_auroc_smoothed",
                                 "finetune.epochs": 4})

  def window_mean(i, field):
    return np.mean([row[field] for row in evals[max(i - 1, 0):i + 2]])

  best = evals[max(range(len(evals)), key=lambda i: (
      window_mean(i, "val/auroc"), -window_mean(i, "val/loss")))]
  assert cell["select_by"] == "val_auroc_smoothed" and len(evals) >= 3
  assert cell["selected_step"] == best["step"]
  assert cell["selected_val_auroc"] == pytest.approx(best["val/auroc"])


def test_scratch_run_selected_by_last_keeps_the_final_evaluation(
    tmp_path, medmnist_dir):
  cell, evals = _scratch_run(tmp_path, medmnist_dir,
                             **{"finetune.select_by": "last"})
  assert cell["select_by"] == "last"
  assert cell["selected_step"] == evals[-1]["step"] == cell["steps"]
  assert cell["selected_val_auroc"] == pytest.approx(evals[-1]["val/auroc"])
  with pytest.raises(ValueError, match="finetune.select_by='best'"):
    _scratch_run(tmp_path / "bad", medmnist_dir,
                 **{"finetune.select_by": "best"})


def test_scratch_run_selects_after_the_warmup(tmp_path, medmnist_dir):
  cell, evals = _scratch_run(tmp_path, medmnist_dir,
                             **{"finetune.optim.warmup_steps": 4,
                                "finetune.min_steps": 5})
  assert [row["step"] for row in evals] == [3, 6, 7]  # all logged
  assert cell["select_from_step"] == 4
  best = max((r for r in evals if r["step"] >= 4),
             key=lambda r: (r["val/auroc"], -r["val/loss"]))
  assert cell["selected_step"] == best["step"]


def test_stage2_head_starts_as_finetune_head_init_says():
  """finetune.head_init reaches the classifier every stage-2 cell builds."""
  from configs import medmnist_baseline  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  from ssl_jax import objectives  # noqa: PLC0415
  from tests.tiny import TinyInfo  # noqa: PLC0415
  config = medmnist_baseline.get_config()
  config.model.width_multiplier = 1 / 16
  largest = {}
  for init in ("zeros", "torch_default"):
    config.finetune.head_init = init
    stage2 = finetune.stage2_config(config, None, TinyInfo())
    model = objectives.bind(stage2, TinyInfo()).build_model(nnx.Rngs(0))
    largest[init] = float(np.abs(np.asarray(model.head.linear.kernel[...])).max())
  assert largest["zeros"] == 0.0 and largest["torch_default"] > 0.0


def test_scratch_run_keeping_the_short_batch_steps_epoch_by_epoch(
    tmp_path, medmnist_dir):
  cell, evals = _scratch_run(tmp_path, medmnist_dir,
                             **{"finetune.last_batch": "keep"})
  # 55 images at batch 16: 3 x 16 + 7 an epoch, 2 epochs -> 8 steps, checked
  # at each epoch's end; the selected epoch is a whole number.
  assert cell["steps"] == 8
  assert [row["step"] for row in evals] == [4, 8]
  assert cell["selected_epoch"] in (1.0, 2.0)


def test_probe_folded_into_a_head_gives_the_probes_logits():
  rng = np.random.default_rng(0)
  feats = rng.normal(3.0, 2.0, size=(40, 6)).astype(np.float32)
  labels = (feats[:, 0] + rng.normal(size=40) > 3.0).astype(np.int64)
  from ssl_jax.evaluation import probes  # noqa: PLC0415
  probe = probes.fit_linear_probe(feats, labels, feats, labels, num_classes=2,
                                  task="binary-class", epochs=20, eval_every=10)
  kernel, bias = probe.on_raw_features()
  np.testing.assert_allclose(feats @ kernel + bias, probe.logits(feats),
                             rtol=1e-4, atol=1e-4)


def test_lp_ft_starts_from_the_probe_and_offers_it_at_step_0(tmp_path,
                                                             medmnist_dir):
  """head_fit='linear_probe': the network with the folded probe as its head
  ranks validation exactly as the probe did (same features, same logits),
  and that step-0 classifier is a selection candidate; the from-scratch
  cell keeps its zero head."""
  import data_pipelines  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  from ssl_jax import objectives  # noqa: PLC0415
  from ssl_jax.train import encoder_weights  # noqa: PLC0415
  config = tiny_config()
  encoder = objectives.base.build_encoder(
      config, data_pipelines.info("breastmnist", 28), nnx.Rngs(3))
  weights = tmp_path / "encoder.npz"
  np.savez(weights, **encoder_weights.of_module(encoder))
  cells, evals = {}, {}
  for protocol in ("finetune", "scratch"):
    cells[protocol], evals[protocol] = _scratch_run(
        tmp_path / protocol, medmnist_dir, protocol=protocol,
        **{"finetune.head_fit": "linear_probe", "init_from.path": str(weights)})
  assert [row["step"] for row in evals["finetune"]] == [0, 3, 6, 7]
  assert evals["finetune"][0]["val/auroc"] == pytest.approx(
      cells["finetune"]["head_probe_val_score"], abs=1e-6)
  assert evals["finetune"][0]["val/auroc"] != 0.5  # a zero head ties all
  assert [row["step"] for row in evals["scratch"]] == [3, 6, 7]
  assert "head_probe_val_score" not in cells["scratch"]
  with pytest.raises(ValueError, match="finetune.head_fit='lp'"):
    classifier.head_fit(ml_collections.ConfigDict({"head_fit": "lp"}))


def test_the_published_recipe_cuts_at_half_where_stage_2_matches_priors():
  """The MedMNIST baseline's ACC stands beside the published one, cut at
  0.5; every other stage 2 cuts where validation's prevalence says."""
  from configs import base, medmnist_baseline  # noqa: PLC0415
  assert medmnist_baseline.get_config().finetune.decision_threshold == "medmnist"
  assert base.get_config().finetune.decision_threshold == "val_prior"


def test_weight_average_blends_float_leaves_step_by_step():
  """avg_k = d avg_(k-1) + (1 - d) w_k from the starting weights; integer
  leaves (rng counters) follow the trained state."""
  decay, trajectory = 0.5, [2.0, 4.0, 8.0]

  def step(state, batch):
    return state.replace(params={"w": jnp.asarray(trajectory[batch])},
                         rest={"count": state.rest["count"] + 1}), {}

  state = TrainState(step=jnp.zeros((), jnp.int32),
                     params={"w": jnp.asarray(1.0)},
                     rest={"count": jnp.asarray(0)}, opt_state=(), extra={},
                     rng=jnp.zeros((2,), jnp.uint32))
  state = classifier.start_average(state)
  averaged = classifier.with_weight_average(step, decay)
  for i in range(3):
    state, _ = averaged(state, i)
  params, rest = classifier.evaluated_weights(state)
  want = 1.0
  for w in trajectory:
    want = decay * want + (1 - decay) * w
  assert float(params["w"]) == pytest.approx(want)  # 6.0625, the trained 8.0
  assert int(rest["count"]) == 3
  assert float(state.params["w"]) == 8.0  # training itself is untouched
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match="finetune.weight_average"):
      classifier.weight_average_decay(_ft(weight_average=bad))


def test_weight_average_changes_what_is_scored_not_what_is_trained(
    balanced_run, tmp_path, medmnist_dir):
  plain_dir, plain, plain_evals = balanced_run
  averaged, averaged_evals = _scratch_run(
      tmp_path, medmnist_dir, **BALANCED, **{"finetune.weight_average": 0.5})
  assert averaged["weight_average"] == 0.5 and "weight_average" not in plain
  train_losses = [_train_losses(d, cell) for d, cell in
                  ((plain_dir, plain), (tmp_path, averaged))]
  assert train_losses[0] and train_losses[0] == train_losses[1]
  assert ([r["val/loss"] for r in plain_evals]
          != [r["val/loss"] for r in averaged_evals])


def _train_losses(workdir, cell) -> list:
  path = workdir / "logs" / f"scratch_n{cell['n_train']}_s0" / "metrics.jsonl"
  return [row["train/loss"] for row in map(json.loads, path.open())
          if "train/loss" in row]


def test_stochastic_depth_changes_training_and_is_recorded(
    balanced_run, tmp_path, medmnist_dir):
  """`finetune.drop_path` reaches the encoder every cell trains: the same
  cell's train losses move, the cell and the run record the rate."""
  plain_dir, plain, _ = balanced_run
  dropping, _ = _scratch_run(tmp_path, medmnist_dir, **BALANCED,
                             **{"finetune.drop_path": 0.5})
  assert dropping["drop_path"] == 0.5 and "drop_path" not in plain
  plain_losses = _train_losses(plain_dir, plain)
  assert plain_losses and _train_losses(tmp_path, dropping) != plain_losses
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["model"]["drop_path_rate"] == 0.5
