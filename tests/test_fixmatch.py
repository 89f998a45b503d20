"""Stage 2's FixMatch (`fixmatch`, `scratch_fixmatch`): the consistency term,
the batches' masked labels, and a run that reads no label outside the
labelled subset."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.evaluation import classifier
from ssl_jax.evaluation.protocols import PROTOCOLS
from ssl_jax.objectives import supervised
from ssl_jax.train.metrics_writer import read_rows
from tests.test_benchmark_protocols import contexts  # noqa: F401
from tests.test_distill import unmoved_by_unlabelled_labels


def test_consistency_keeps_only_confident_unlabelled_rows():
  weak = jax.nn.softmax(
      jnp.asarray([[4.0, 0.0], [0.2, 0.0], [0.0, 5.0], [6.0, 0.0]]))
  strong = jnp.asarray([[1.0, 0.0], [0.0, 3.0], [0.5, 0.0], [0.0, 2.0]])
  unlabelled = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # row 3 is labelled
  loss, kept = supervised.consistency_loss(weak, strong, unlabelled, 0.95)
  # Row 0 (p = 0.98, pseudo 0) and row 2 (p = 0.99, pseudo 1) are kept; row
  # 1 is not confident, row 3 labelled. The mean is over the 3 unlabelled.
  ce = lambda z, y: float(-jax.nn.log_softmax(z)[y])  # noqa: E731
  expected = (ce(strong[0], 0) + ce(strong[2], 1)) / 3
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(kept) == pytest.approx(2 / 3)
  # Class weights weigh by the pseudo-label's class, normaliser too.
  weighted, _ = supervised.consistency_loss(weak, strong, unlabelled, 0.95,
                                            class_weights=(1.0, 3.0))
  assert float(weighted) == pytest.approx(
      (ce(strong[0], 0) + 3 * ce(strong[2], 1)) / (1 + 1 + 3), rel=1e-6)
  # No gradient reaches the weak view: it only names the pseudo-label.
  grad = jax.grad(lambda w: supervised.consistency_loss(
      w, strong, unlabelled, 0.95)[0])(weak)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)
  nothing, none_kept = supervised.consistency_loss(weak, strong, unlabelled, 1.0)
  assert float(nothing) == 0.0 and float(none_kept) == 0.0


def test_self_adaptive_bars_follow_the_unlabelled_predictions():
  """FreeMatch's statistics move toward the unlabelled rows' mean
  confidence and class probabilities; the class predicted less gets the
  lower bar; labelled rows count for nothing."""
  stats = supervised.self_adaptive_stats(2)
  np.testing.assert_allclose(stats["class_probs"], [0.5, 0.5])
  probs = jnp.asarray([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.0, 1.0]])
  unlabelled = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # row 3 is labelled
  new = supervised.update_self_adaptive(stats, probs, unlabelled, 0.9)
  # Unlabelled means: top probability 0.8, class probabilities (2/3, 1/3).
  assert float(new["confidence"]) == pytest.approx(0.9 * 0.5 + 0.1 * 0.8)
  class_probs = 0.9 * 0.5 + 0.1 * np.array([2 / 3, 1 / 3])
  np.testing.assert_allclose(new["class_probs"], class_probs, rtol=1e-6)
  bars = np.asarray(supervised.self_adaptive_bars(new, 0.95, 2))
  np.testing.assert_allclose(
      bars, 0.53 * class_probs / class_probs.max(), rtol=1e-6)
  assert bars[1] < bars[0] == pytest.approx(0.53)
  unchanged = supervised.update_self_adaptive(new, probs, 0.0 * unlabelled, 0.9)
  for key in new:
    np.testing.assert_array_equal(unchanged[key], new[key])


def test_bars_per_class_keep_rows_by_their_pseudo_label():
  weak = jax.nn.softmax(  # p 0.98, 0.73, 0.99
      jnp.asarray([[4.0, 0.0], [0.0, 1.0], [0.0, 5.0]]))
  strong = jnp.zeros((3, 2))
  unlabelled = jnp.ones(3)
  fixed = supervised.fixed_bars({}, 0.95, 2)
  assert (supervised.consistency_loss(weak, strong, unlabelled, fixed)
          == supervised.consistency_loss(weak, strong, unlabelled, 0.95))
  _, kept = supervised.consistency_loss(weak, strong, unlabelled,
                                        jnp.asarray([0.95, 0.7]))
  assert float(kept) == pytest.approx(1.0)  # class 1's bar lets row 1 in
  _, kept = supervised.consistency_loss(weak, strong, unlabelled,
                                        jnp.asarray([0.99, 0.95]))
  assert float(kept) == pytest.approx(1 / 3)  # only row 2 (0.993)
  with pytest.raises(ValueError, match="threshold_rule must be one of "
                     r"\['fixed', 'self_adaptive'\], got 'adaptive'"):
    supervised.threshold_rule("adaptive")


def test_alignment_rescales_by_the_target_over_the_running_mean():
  """ReMixMatch's distribution alignment: the running mean of the
  unlabelled rows' predictions is bias-corrected (after one batch it is
  that batch's mean, whatever the momentum), labelled rows and batches
  without unlabelled rows leave it unmoved, and each row is multiplied by
  target / mean and renormalised."""
  probs = jnp.asarray([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.0, 1.0]])
  unlabelled = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # row 3 is labelled
  stats = supervised.update_alignment(supervised.alignment_stats(2), probs,
                                      unlabelled, 0.99)
  mean = np.array([2.2, 0.8]) / 3  # rows 0-2
  np.testing.assert_allclose(stats["mean"] / stats["weight"], mean, rtol=1e-6)
  again = supervised.update_alignment(stats, probs, 0.0 * unlabelled, 0.99)
  for key in stats:
    np.testing.assert_array_equal(again[key], stats[key])
  target = jnp.asarray([0.5, 0.5])
  out = np.asarray(supervised.aligned(probs, stats, target))
  expected = np.asarray(probs) * 0.5 / mean
  np.testing.assert_allclose(out, expected / expected.sum(1, keepdims=True),
                             rtol=1e-5)
  # The model over-predicts class 0 (mean 0.73); aligned to uniform, row 1
  # (0.7) and row 2 (0.6) fall to class 1, and the rows' mean moves to the
  # target.
  np.testing.assert_array_equal(out.argmax(1), [0, 1, 1, 1])
  assert abs(out[:3].mean(0)[0] - 0.5) < abs(mean[0] - 0.5)
  # A second batch weighs in with 1 - momentum.
  other = jnp.asarray([[0.2, 0.8]] * 4)
  later = supervised.update_alignment(stats, other, jnp.ones(4), 0.9)
  np.testing.assert_allclose(
      later["mean"] / later["weight"],
      (0.9 * 0.01 * mean + 0.1 * np.array([0.2, 0.8])) / (0.9 * 0.01 + 0.1),
      rtol=1e-5)


def test_alignment_targets_and_their_refusals():
  target = lambda alignment, class_prior=None, num_classes=2: (  # noqa: E731
      supervised.alignment_target(types.SimpleNamespace(
          alignment=alignment, class_prior=class_prior), num_classes))
  assert target("none") is None
  np.testing.assert_allclose(target("uniform", num_classes=4), 0.25)
  np.testing.assert_allclose(target("class_prior", (0.25, 0.75)), [0.25, 0.75])
  with pytest.raises(ValueError, match="alignment must be one of "
                     r"\['class_prior', 'none', 'uniform'\], got 'prior'"):
    target("prior")
  with pytest.raises(ValueError, match="needs objective.class_prior, 2 "
                     r"class proportions; got \(1.0,\)"):
    target("class_prior", (1.0,))


def test_self_adaptive_rule_trains_in_stage_2(contexts, tmp_path):  # noqa: F811
  """`finetune.fixmatch_threshold_rule='self_adaptive'` reaches the step:
  its statistics live in the train state (a trainer of its own init), and
  from the uniform start (momentum 0.999, a few steps) its bars stay near
  1/2, where a fixed 0.95 bar lets almost nothing in."""
  ctx, _ = contexts
  config = ctx.config.copy_and_resolve_references()
  config.finetune.fixmatch_threshold_rule = "self_adaptive"
  adaptive = dataclasses.replace(ctx, config=config, workdir=str(tmp_path))
  train_idx = ctx.subset(0.1, 0)
  preds = PROTOCOLS.get("fixmatch")(adaptive, train_idx, 0)
  assert preds.probs["test"].shape == (len(ctx.labels("test")), 2)
  rows = [r for r in read_rows(tmp_path / f"fixmatch_n{len(train_idx)}_s0")
          if "train/pseudo_label_bar" in r]
  assert rows
  for row in rows:
    assert 0.5 <= row["train/pseudo_label_bar"] < 0.55, row
    assert row["train/pseudo_label_rate"] > 0.9, row
  fixed = dataclasses.replace(ctx, workdir=str(tmp_path / "fixed"))
  PROTOCOLS.get("fixmatch")(fixed, train_idx, 0)
  rows = read_rows(tmp_path / "fixed" / f"fixmatch_n{len(train_idx)}_s0")
  rows = [r for r in rows if "train/pseudo_label_bar" in r]
  assert rows
  for row in rows:
    assert row["train/pseudo_label_bar"] == pytest.approx(0.95), row
    assert row["train/pseudo_label_rate"] < 0.1, row


def test_the_feed_masks_every_label_outside_the_subset():
  labels = np.array([[0], [1], [1], [0], [1]])
  feed = classifier.semi_supervised_feed(labels, np.array([1, 3]))
  np.testing.assert_array_equal(feed.rows, np.arange(5))
  np.testing.assert_array_equal(feed.labels.reshape(-1), [-1, 1, -1, 0, -1])
  np.testing.assert_array_equal(feed.extra["labelled"], [0, 1, 0, 1, 0])


def test_a_labelled_share_repeats_each_labelled_row_to_make_it():
  labels = np.arange(100) % 2
  train_idx = np.array([4, 9])
  feed = classifier.semi_supervised_feed(labels, train_idx, 0.125)
  # 98 unlabelled rows once; 7 copies of each labelled row: 14 / 112.
  assert classifier.labelled_repeats(2, 98, 0.125) == 7
  assert len(feed.rows) == 112
  assert feed.extra["labelled"].mean() == pytest.approx(0.125)
  counts = np.bincount(feed.rows, minlength=100)
  np.testing.assert_array_equal(np.flatnonzero(counts == 7), train_idx)
  assert set(counts[np.setdiff1d(np.arange(100), train_idx)]) == {1}
  # Every row keeps its own label column: labels where labelled, else -1.
  np.testing.assert_array_equal(
      feed.labels, np.where(feed.extra["labelled"] > 0, labels[feed.rows], -1))
  # 0, or a share the subset already holds, keeps every row once.
  for share in (0.0, 0.01):
    natural = classifier.semi_supervised_feed(labels, train_idx, share)
    np.testing.assert_array_equal(natural.rows, np.arange(100))


def test_fixmatch_reads_no_label_outside_the_labelled_subset(contexts):  # noqa: F811
  ctx, _ = contexts
  unmoved_by_unlabelled_labels(ctx, "fixmatch", ctx.subset(0.1, 0))


def test_a_multi_label_task_is_refused(contexts):  # noqa: F811
  ctx, _ = contexts
  multi = dataclasses.replace(
      ctx, info=dataclasses.replace(ctx.info, multi_label=True))
  for name in ("fixmatch", "scratch_fixmatch"):
    with pytest.raises(ValueError, match="needs a single-label task; "
                       "breastmnist is multi-label"):
      PROTOCOLS.get(name).check(multi)
  PROTOCOLS.get("distill").check(multi)  # its default teacher is `finetune`
  multi.config.finetune.distill_teacher = "fixmatch"
  try:
    for name in ("distill", "scratch_distill"):
      with pytest.raises(ValueError, match="needs a single-label task"):
        PROTOCOLS.get(name).check(multi)
  finally:
    multi.config.finetune.distill_teacher = "finetune"


def test_an_unknown_threshold_rule_is_refused_before_any_cell(contexts):  # noqa: F811
  ctx, _ = contexts
  for field, value, message in (
      ("fixmatch_threshold_rule", "adaptive",
       r"\['fixed', 'self_adaptive'\], got 'adaptive'"),
      ("fixmatch_alignment", "prior",
       r"\['class_prior', 'none', 'uniform'\], got 'prior'")):
    config = ctx.config.copy_and_resolve_references()
    config.finetune[field] = value
    for name in ("fixmatch", "scratch_fixmatch"):
      with pytest.raises(ValueError, match=f"{field} must be one of {message}"):
        PROTOCOLS.get(name).check(dataclasses.replace(ctx, config=config))
  config = ctx.config.copy_and_resolve_references()
  config.finetune.fixmatch_labelled_share = 1.0
  with pytest.raises(ValueError, match=r"fixmatch_labelled_share=1.0: "
                     r"expected a share in \[0, 1\)"):
    PROTOCOLS.get("fixmatch").check(dataclasses.replace(ctx, config=config))


def test_alignment_reads_only_the_labelled_subsets_proportions(
    contexts, tmp_path):  # noqa: F811
  """`finetune.fixmatch_alignment='class_prior'` trains in stage 2 with the
  labelled subset's class proportions as its target (not the split's), and
  still reads no other label."""
  ctx, _ = contexts
  config = ctx.config.copy_and_resolve_references()
  config.finetune.fixmatch_alignment = "class_prior"
  aligned = dataclasses.replace(ctx, config=config, workdir=str(tmp_path))
  train_idx = ctx.subset(0.1, 0)
  unmoved_by_unlabelled_labels(aligned, "fixmatch", train_idx)
  subset = np.bincount(ctx.labels("train")[train_idx].reshape(-1),
                       minlength=2) / len(train_idx)
  split = np.bincount(ctx.labels("train").reshape(-1), minlength=2)
  assert not np.allclose(subset, split / split.sum())  # tells them apart
  priors = [t.config.objective.class_prior for t in ctx.compiled.values()
            if getattr(t, "config", None) is not None
            and t.config.objective.get("alignment") == "class_prior"]
  assert len(priors) == 1
  np.testing.assert_allclose(priors[0], subset)
  rows = [r for r in read_rows(tmp_path / f"fixmatch_n{len(train_idx)}_s0")
          if "train/pseudo_label_rate" in r]
  assert rows and all(0.0 <= r["train/pseudo_label_rate"] <= 1.0 for r in rows)


def test_fixmatch_mixup_reaches_cells_and_teachers_and_is_range_checked(
    contexts, monkeypatch):  # noqa: F811
  """`finetune.fixmatch_mixup_alpha` trains a FixMatch cell's labelled
  rows mixed (its objective's `labelled_mixup_alpha`), and a negative
  value is refused before any FixMatch run, a teacher's too."""
  ctx, _ = contexts
  config = ctx.config.copy_and_resolve_references()
  config.finetune.fixmatch_mixup_alpha = 0.4
  built = []
  real_trainer_for = classifier.trainer_for
  def recording(*args, objective, **kwargs):
    built.append(objective["labelled_mixup_alpha"])
    return real_trainer_for(*args, objective=objective, **kwargs)
  monkeypatch.setattr(classifier, "trainer_for", recording)
  mixing = dataclasses.replace(ctx, config=config)
  preds = PROTOCOLS.get("fixmatch")(mixing, ctx.subset(0.1, 0), 0)
  assert built == [0.4]
  assert np.isfinite(preds.probs["test"]).all()
  config.finetune.fixmatch_mixup_alpha = -0.5
  config.finetune.distill_teacher = "fixmatch"
  for name in ("fixmatch", "distill"):
    with pytest.raises(ValueError, match=r"fixmatch_mixup_alpha=-0.5: "
                       "expected >= 0"):
      PROTOCOLS.get(name).check(mixing)


def test_fixmatch_contrastive_term_trains_a_projector_that_predicting_drops(
    contexts, tmp_path):  # noqa: F811
  """`finetune.fixmatch_contrastive_weight` trains FixMatch with a
  projector beside the head (logged NT-Xent), which scores and teaches
  without it: a function-matching student, built without one, takes the
  FixMatch teacher's network. Bad values are refused before any run."""
  ctx, _ = contexts
  config = ctx.config.copy_and_resolve_references()
  config.finetune.update(fixmatch_contrastive_weight=1.0,
                         distill_teacher="fixmatch",
                         distill_targets="function_matching")
  joint = dataclasses.replace(ctx, config=config, workdir=str(tmp_path),
                              compiled={})
  train_idx = ctx.subset(0.1, 0)
  teacher = PROTOCOLS.get("fixmatch")(joint, train_idx, 0)
  assert np.isfinite(teacher.probs["test"]).all()
  params, _ = teacher.networks[0]
  assert "projector" in params
  rows = [r for r in read_rows(tmp_path / f"fixmatch_n{len(train_idx)}_s0")
          if "train/contrastive_loss" in r]
  assert rows and all(np.isfinite(r["train/contrastive_loss"]) for r in rows)
  slot = supervised.teacher_slot(*teacher.networks[0])
  assert "projector" not in slot["params"] and "head" in slot["params"]
  student = PROTOCOLS.get("distill")(joint, train_idx, 0)
  assert np.isfinite(student.probs["test"]).all()
  for fields, message in (
      (dict(fixmatch_contrastive_weight=-1.0),
       r"fixmatch_contrastive_weight=-1.0: expected >= 0"),
      (dict(fixmatch_contrastive_temperature=0.0),
       r"fixmatch_contrastive_temperature=0.0: expected > 0"),
      (dict(fixmatch_mixup_alpha=0.2), "exclude each other")):
    bad = config.copy_and_resolve_references()
    bad.finetune.update(fields)
    for name in ("fixmatch", "distill"):
      with pytest.raises(ValueError, match=message):
        PROTOCOLS.get(name).check(dataclasses.replace(ctx, config=bad))
