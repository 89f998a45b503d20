"""Stage 2's target regularizers: mixup and label smoothing on the
supervised and distillation losses, their ranges, and FixMatch's refusal."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import augment, views
from ssl_jax.evaluation.protocols import PROTOCOLS
from ssl_jax.jobs import common, finetune
from ssl_jax.objectives import base, supervised
from ssl_jax.objectives.contrastive import nt_xent
from tests.tiny import tiny_config


def test_mixup_blends_each_image_and_its_targets_with_one_partner_by_one_lam():
  batch = 8
  images = jnp.arange(batch, dtype=jnp.float32).reshape(batch, 1, 1, 1)
  targets = jnp.eye(batch)  # row i's target names image i
  mixed_images, mixed_targets = supervised.mixed(jax.random.key(3), images,
                                                 targets, alpha=0.4)
  mixed_targets = np.asarray(mixed_targets)
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, atol=1e-6)
  lams, partners = [], []
  for row in range(batch):
    own = mixed_targets[row, row]
    others = np.delete(mixed_targets[row], row)
    if own < 1.0 - 1e-6:  # blended with another image
      partner = int(np.argmax(np.where(np.arange(batch) == row, -1.0,
                                       mixed_targets[row])))
      assert others.sum() == pytest.approx(1.0 - own, abs=1e-6)
    else:
      partner = row
    lams.append(own)
    partners.append(partner)
    # The image blends the same two images by the same weights.
    expected = own * row + (1.0 - own) * partner
    assert float(mixed_images[row, 0, 0, 0]) == pytest.approx(expected,
                                                             abs=1e-5)
  # One lam for the batch (rows whose partner is themselves read 1).
  blended = [lam for lam, p, r in zip(lams, partners, range(batch)) if p != r]
  assert blended and 0.0 < blended[0] < 1.0
  np.testing.assert_allclose(blended, blended[0], atol=1e-6)
  assert sorted(partners) == list(range(batch))  # a permutation of the batch


def test_label_smoothing_moves_a_share_to_uniform():
  one_hot = supervised.label_targets(jnp.asarray([2, 0]), 4, False)
  np.testing.assert_allclose(supervised.smoothed(one_hot, 0.2, False),
                             [[0.05, 0.05, 0.85, 0.05],
                              [0.85, 0.05, 0.05, 0.05]], atol=1e-6)
  multi_hot = supervised.label_targets(jnp.asarray([[1, 0, 1]]), 3, True)
  np.testing.assert_allclose(supervised.smoothed(multi_hot, 0.2, True),
                             [[0.9, 0.1, 0.9]], atol=1e-6)


def _linear_model(kernel):
  return lambda x, train: x.reshape(x.shape[0], -1) @ kernel


def _loss_inputs(num_classes=3):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(6, 4, 4, 1)).astype(np.uint8)
  labels = rng.integers(0, num_classes, size=6)
  kernel = jnp.asarray(rng.normal(size=(16, num_classes)), jnp.float32)
  ctx = types.SimpleNamespace(policy=augment.get("none"),
                              info=types.SimpleNamespace(
                                  num_classes=num_classes))
  return images, labels, kernel, ctx


def _hparams(**fields):
  return ml_collections.ConfigDict(dict(
      dict(multi_label=False, class_weights=None, temperature=1.0,
           mixup_alpha=0.0, label_smoothing=0.0), **fields))


@pytest.mark.parametrize("objective", ["supervised", "distillation"])
def test_label_smoothing_trains_on_cross_entropy_against_smoothed_targets(
    objective):
  images, labels, kernel, ctx = _loss_inputs()
  one_hot = np.eye(3, dtype=np.float32)[labels]
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels),
           "target": jnp.asarray(one_hot)}
  make = {"supervised": supervised.make_supervised_loss,
          "distillation": supervised.make_distillation_loss}[objective]
  loss_fn = make(_hparams(label_smoothing=0.3), ctx)
  loss, _, _ = loss_fn(_linear_model(kernel), batch, jax.random.key(0), {})
  logits = np.asarray(_linear_model(kernel)(
      augment.standardize(jnp.asarray(images, jnp.float32) / 255.0), True))
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  expected = -((one_hot * 0.7 + 0.1) * log_probs).sum(-1).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  plain, _, _ = make(_hparams(), ctx)(_linear_model(kernel), batch,
                                      jax.random.key(0), {})
  assert float(plain) != pytest.approx(expected, rel=1e-3)


def test_mixup_trains_on_the_blend_the_regularizer_draws():
  images, labels, kernel, ctx = _loss_inputs()
  hp = _hparams(mixup_alpha=0.4)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  rng = jax.random.key(5)
  loss, metrics, _ = supervised.make_supervised_loss(hp, ctx)(
      _linear_model(kernel), batch, rng, {})
  x = augment.standardize(jnp.asarray(images, jnp.float32) / 255.0)
  x, targets = supervised.regularized_targets(
      jax.random.fold_in(rng, 1), x, jnp.eye(3)[labels],
      *supervised.target_regularizers(hp), False)
  expected = supervised.soft_target_loss(_linear_model(kernel)(x, True),
                                         targets, False)
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  hard, _ = supervised.classification_loss(
      _linear_model(kernel)(x, True), jnp.asarray(labels), False)
  assert float(loss) != pytest.approx(float(hard), rel=1e-3)
  assert 0.0 <= float(metrics["train_acc"]) <= 1.0


def test_without_regularizers_the_loss_is_the_labelled_cross_entropy():
  images, labels, kernel, ctx = _loss_inputs()
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  loss, _, _ = supervised.make_supervised_loss(_hparams(), ctx)(
      _linear_model(kernel), batch, jax.random.key(0), {})
  x = augment.standardize(jnp.asarray(images, jnp.float32) / 255.0)
  hard, _ = supervised.classification_loss(_linear_model(kernel)(x, True),
                                           jnp.asarray(labels), False)
  assert float(loss) == float(hard)


def test_stage2_objective_carries_the_finetune_regularizers():
  config = tiny_config()
  config.finetune.mixup_alpha = 0.2
  config.finetune.label_smoothing = 0.1
  info = types.SimpleNamespace(multi_label=False)
  objective = finetune.stage2_config(config, None, info).objective
  assert (objective.name, objective.mixup_alpha,
          objective.label_smoothing) == ("supervised", 0.2, 0.1)


@pytest.mark.parametrize("field,value,message", [
    ("mixup_alpha", -0.1, r"config.finetune.mixup_alpha=-0.1: expected >= 0"),
    ("label_smoothing", 1.0,
     r"config.finetune.label_smoothing=1.0: expected a share in \[0, 1\)"),
])
def test_regularizers_out_of_range_are_refused_before_anything_runs(
    field, value, message):
  config = tiny_config()
  config.finetune[field] = value
  with pytest.raises(ValueError, match=message):
    common.validate(config)


def test_fixmatch_refuses_mixup_and_label_smoothing():
  config = tiny_config()
  config.finetune.label_smoothing = 0.1
  ctx = types.SimpleNamespace(config=config, info=types.SimpleNamespace(
      multi_label=False))
  for name in ("fixmatch", "scratch_fixmatch"):
    with pytest.raises(ValueError, match="'scratch_fixmatch' take no "
                       "finetune.mixup_alpha or label_smoothing"):
      PROTOCOLS.get(name).check(ctx)
  # A FixMatch teacher trains without them; its students take them.
  config.finetune.distill_teacher = "fixmatch"
  PROTOCOLS.get("distill").check(ctx)
  hp = _hparams(mixup_alpha=0.2)
  with pytest.raises(ValueError, match="'fixmatch' takes no mixup_alpha"):
    supervised.make_fixmatch_loss(hp, types.SimpleNamespace(policy=None))


def test_mixup_within_rows_leaves_the_other_rows_exactly_as_they_were():
  batch = 8
  images = jnp.arange(batch, dtype=jnp.float32).reshape(batch, 1, 1, 1) + 0.1
  targets = jnp.eye(batch)
  rows = jnp.asarray([1, 0, 1, 1, 0, 1, 0, 1], jnp.float32)
  inside = [0, 2, 3, 5, 7]
  partners = np.asarray(supervised.partners_within(jax.random.key(1), rows))
  assert sorted(partners[inside]) == inside  # a permutation of those rows
  np.testing.assert_array_equal(partners[[1, 4, 6]], [1, 4, 6])
  mixed_images, mixed_targets = supervised.mixed(
      jax.random.key(2), images, targets, alpha=0.4, rows=rows)
  for row in (1, 4, 6):
    assert float(mixed_images[row, 0, 0, 0]) == float(images[row, 0, 0, 0])
    np.testing.assert_array_equal(mixed_targets[row], targets[row])
  mixed_targets = np.asarray(mixed_targets)
  moved = [r for r in inside if mixed_targets[r, r] < 1.0 - 1e-6]
  assert moved  # with these keys some rows are blended
  for row in moved:
    partner = int(np.argmax(np.where(np.arange(batch) == row, -1.0,
                                     mixed_targets[row])))
    assert partner in inside
    lam = mixed_targets[row, row]
    assert lam == pytest.approx(mixed_targets[moved[0], moved[0]], abs=1e-6)
    assert float(mixed_images[row, 0, 0, 0]) == pytest.approx(
        lam * (row + 0.1) + (1 - lam) * (partner + 0.1), abs=1e-5)


def _fixmatch_hparams(**fields):
  return _hparams(**dict(dict(
      threshold=0.6, threshold_rule="fixed", threshold_momentum=0.999,
      unlabelled_weight=1.0, strong_policy="none", alignment="none",
      alignment_momentum=0.99, class_prior=None, labelled_mixup_alpha=0.0,
      contrastive_weight=0.0, contrastive_temperature=0.1,
      contrastive_dim=4), **fields))


def test_fixmatch_mixes_its_labelled_rows_and_leaves_the_unlabelled_term():
  """With `labelled_mixup_alpha` the labelled term is the soft-target loss
  on the labelled rows' blend; the unlabelled term (no BatchNorm here) is
  the one without mixup, to the last bit."""
  images, labels, kernel, ctx = _loss_inputs()
  ctx.spatial_dims = 2
  labelled = np.array([1, 0, 1, 1, 0, 1], np.float32)
  batch = {"image": jnp.asarray(images),
           "label": jnp.asarray(np.where(labelled > 0, labels, -1)),
           "labelled": jnp.asarray(labelled)}
  rng = jax.random.key(0)  # its lam is 0.58
  model = _linear_model(kernel)
  loss, metrics, _ = supervised.make_fixmatch_loss(
      _fixmatch_hparams(labelled_mixup_alpha=0.4), ctx)(model, batch, rng,
                                                        {"pseudo_label_stats": {}})
  _, plain_metrics, _ = supervised.make_fixmatch_loss(
      _fixmatch_hparams(), ctx)(model, batch, rng, {"pseudo_label_stats": {}})
  x = augment.standardize(jnp.asarray(images, jnp.float32) / 255.0)
  weak_x, targets = supervised.mixed(
      jax.random.fold_in(rng, 1), x, jnp.eye(3)[np.maximum(batch["label"], 0)],
      0.4, rows=jnp.asarray(labelled))
  labelled_loss = supervised.soft_target_loss(
      model(weak_x, True), targets, False, weights=jnp.asarray(labelled))
  unlabelled_loss, _ = supervised.consistency_loss(
      jax.nn.softmax(model(x, True)), model(x, True),
      jnp.asarray(1.0 - labelled), 0.6)
  assert float(metrics["unlabelled_loss"]) == float(
      plain_metrics["unlabelled_loss"]) == pytest.approx(
          float(unlabelled_loss), rel=1e-6)
  assert float(loss) == pytest.approx(
      float(labelled_loss + unlabelled_loss), rel=1e-6)
  hard, _ = supervised.classification_loss(
      model(weak_x, True), batch["label"], False,
      weights=jnp.asarray(labelled))
  assert float(labelled_loss) != pytest.approx(float(hard), rel=1e-3)
  with pytest.raises(ValueError, match="labelled_mixup_alpha=-1.0: expected"):
    supervised.make_fixmatch_loss(
        _fixmatch_hparams(labelled_mixup_alpha=-1.0), ctx)


class _ProjectingModel:
  """A linear classifier with a linear projector beside its head."""

  def __init__(self, kernel, projection):
    self.kernel, self.projection = kernel, projection

  def __call__(self, x, train):
    return self.logits_and_projection(x, train=train)[0]

  def logits_and_projection(self, x, *, train):
    flat = x.reshape(x.shape[0], -1)
    return flat @ self.kernel, flat @ self.projection


def test_fixmatch_contrastive_term_adds_nt_xent_between_the_two_views():
  """`contrastive_weight` adds that weight times NT-Xent between each
  row's weak and strong projections (every row, labelled or not) to the
  unchanged FixMatch loss; negative weights and mixup beside it are
  refused."""
  images, labels, kernel, ctx = _loss_inputs()
  ctx.spatial_dims = 2
  projection = jnp.asarray(np.random.default_rng(1).normal(size=(16, 4)),
                           jnp.float32)
  labelled = np.array([1, 0, 1, 1, 0, 1], np.float32)
  batch = {"image": jnp.asarray(images),
           "label": jnp.asarray(np.where(labelled > 0, labels, -1)),
           "labelled": jnp.asarray(labelled)}
  model, rng = _ProjectingModel(kernel, projection), jax.random.key(0)
  extra = {"pseudo_label_stats": {}}
  # A strong view that differs from the weak one, so the term is not trivial.
  strong = dict(strong_policy="simclr")
  plain, plain_metrics, _ = supervised.make_fixmatch_loss(
      _fixmatch_hparams(**strong), ctx)(model, batch, rng, extra)
  joint, metrics, _ = supervised.make_fixmatch_loss(
      _fixmatch_hparams(contrastive_weight=0.5, contrastive_temperature=0.2,
                        **strong), ctx)(model, batch, rng, extra)
  assert "contrastive_loss" not in plain_metrics
  k_weak, k_strong = jax.random.split(rng)
  weak_x = views.train_view(ctx.policy, k_weak, batch["image"])
  strong_x = views.train_view(
      base.view_policy({"policy": "simclr"}, 2), k_strong, batch["image"])
  assert not np.allclose(weak_x, strong_x)
  expected, _ = nt_xent(weak_x.reshape(6, -1) @ projection,
                        strong_x.reshape(6, -1) @ projection, 0.2)
  assert float(metrics["contrastive_loss"]) == pytest.approx(
      float(expected), rel=1e-5)
  assert float(joint) == pytest.approx(float(plain) + 0.5 * float(expected),
                                       rel=1e-5)
  for fields, message in (
      (dict(contrastive_weight=-1.0), "contrastive_weight=-1.0: expected"),
      (dict(contrastive_weight=1.0, labelled_mixup_alpha=0.2),
       "contrastive_weight and labelled_mixup_alpha exclude each other"),
      (dict(contrastive_weight=1.0, contrastive_temperature=0.0),
       "contrastive_temperature=0.0: expected > 0")):
    with pytest.raises(ValueError, match=message):
      supervised.make_fixmatch_loss(_fixmatch_hparams(**fields), ctx)
