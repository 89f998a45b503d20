"""Stage 2's FixMatch (`fixmatch`, `scratch_fixmatch`): the consistency term,
the batches' masked labels, and a run that reads no label outside the
labelled subset."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.evaluation import classifier
from ssl_jax.evaluation.protocols import PROTOCOLS
from ssl_jax.objectives import supervised
from tests.test_benchmark_protocols import contexts  # noqa: F401
from tests.test_distill import unmoved_by_unlabelled_labels


def test_consistency_keeps_only_confident_unlabelled_rows():
  weak = jnp.asarray([[4.0, 0.0], [0.2, 0.0], [0.0, 5.0], [6.0, 0.0]])
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


def test_the_feed_masks_every_label_outside_the_subset():
  labels = np.array([[0], [1], [1], [0], [1]])
  feed = classifier.semi_supervised_feed(labels, np.array([1, 3]))
  np.testing.assert_array_equal(feed.rows, np.arange(5))
  np.testing.assert_array_equal(feed.labels.reshape(-1), [-1, 1, -1, 0, -1])
  np.testing.assert_array_equal(feed.extra["labelled"], [0, 1, 0, 1, 0])


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
