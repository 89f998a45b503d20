"""Metrics against sklearn and against MedMNIST's evaluator conventions."""
import numpy as np
import pytest
from sklearn import metrics as skm

from ssl_jax.evaluation import metrics

SEEDS = range(5)


def _softmax(z):
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _single_label(seed, n=300, c=4, ties=True):
  """Labels [N] and softmax probs [N, C], loosely informative; with ties."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, c, n)
  probs = _softmax(rng.normal(size=(n, c)) + np.eye(c)[y])
  if ties:
    probs = np.round(probs, 1)  # heavy ties, rows no longer sum to 1
  return y, probs


def _multi_label(seed, n=300, num_labels=5):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, (n, num_labels))
  probs = np.round(1 / (1 + np.exp(-(rng.normal(size=y.shape) + y))), 1)
  return y, probs


# MedMNIST's medmnist/evaluator.py getAUC / getACC, rewritten from the spec.
def medmnist_get_auc(y_true, y_score, task):
  y_true, y_score = y_true.squeeze(), y_score.squeeze()
  if task == 'multi-label, binary-class':
    return sum(skm.roc_auc_score(y_true[:, i], y_score[:, i])
               for i in range(y_score.shape[1])) / y_score.shape[1]
  if task == 'binary-class':
    if y_score.ndim == 2:
      y_score = y_score[:, -1]
    return skm.roc_auc_score(y_true, y_score)
  auc = 0
  for i in range(y_score.shape[1]):
    auc += skm.roc_auc_score((y_true == i).astype(float), y_score[:, i])
  return auc / y_score.shape[1]


def medmnist_get_acc(y_true, y_score, task, threshold=0.5):
  y_true, y_score = y_true.squeeze(), y_score.squeeze()
  if task == 'multi-label, binary-class':
    y_pre = y_score > threshold
    return sum(skm.accuracy_score(y_true[:, i], y_pre[:, i])
               for i in range(y_true.shape[1])) / y_true.shape[1]
  if task == 'binary-class':
    if y_score.ndim == 2:
      y_score = y_score[:, -1]
    return skm.accuracy_score(y_true, y_score > threshold)
  return skm.accuracy_score(y_true, np.argmax(y_score, axis=-1))


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('ties', [True, False])
def test_auroc_binary_matches_sklearn(seed, ties):
  y, probs = _single_label(seed, c=2, ties=ties)
  score = probs[:, 1]
  np.testing.assert_allclose(metrics.auroc_binary(y, score),
                             skm.roc_auc_score(y, score), rtol=0, atol=1e-12)


def test_auroc_binary_edge_cases():
  y = np.array([0, 0, 1, 1])
  assert metrics.auroc_binary(y, np.array([.1, .2, .3, .4])) == 1.0
  assert metrics.auroc_binary(y, np.array([.4, .3, .2, .1])) == 0.0
  assert metrics.auroc_binary(y, np.full(4, .5)) == 0.5


@pytest.mark.parametrize('seed', SEEDS)
def test_multiclass_auroc_is_mean_of_one_vs_rest(seed):
  y, probs = _single_label(seed)
  per_class = [skm.roc_auc_score(y == i, probs[:, i]) for i in range(4)]
  np.testing.assert_allclose(
      metrics.auroc_per_class(y, probs, 'multi-class'), per_class, atol=1e-12)
  np.testing.assert_allclose(metrics.auroc(y, probs, 'multi-class'),
                             np.mean(per_class), atol=1e-12)
  # sklearn's own OvR macro needs rows summing to 1 (no rounding).
  y, probs = _single_label(seed, ties=False)
  np.testing.assert_allclose(
      metrics.auroc(y, probs, 'ordinal-regression'),
      skm.roc_auc_score(y, probs, multi_class='ovr', average='macro'),
      atol=1e-12)


@pytest.mark.parametrize('seed', SEEDS)
def test_multilabel_auroc_matches_sklearn_macro(seed):
  y, probs = _multi_label(seed)
  task = 'multi-label, binary-class'
  np.testing.assert_allclose(metrics.auroc(y, probs, task),
                             skm.roc_auc_score(y, probs, average='macro'),
                             atol=1e-12)
  np.testing.assert_allclose(metrics.auroc_per_class(y, probs, task),
                             skm.roc_auc_score(y, probs, average=None),
                             atol=1e-12)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('task', ['binary-class', 'multi-class',
                                  'ordinal-regression',
                                  'multi-label, binary-class'])
def test_matches_medmnist_evaluator(seed, task):
  if task == 'multi-label, binary-class':
    y, probs = _multi_label(seed)
  else:
    y, probs = _single_label(seed, c=2 if task == 'binary-class' else 5)
    probs[:7, -1] = 0.5  # exercise the strict `> 0.5` threshold
    y = y[:, None]  # MedMNIST stores labels as [N, 1]
  np.testing.assert_allclose(metrics.auroc(y, probs, task),
                             medmnist_get_auc(y, probs, task), atol=1e-12)
  np.testing.assert_allclose(metrics.accuracy(y, probs, task),
                             medmnist_get_acc(y, probs, task), atol=1e-12)


def test_binary_accepts_positive_scores():
  y, probs = _single_label(0, c=2)
  for metric_fn in (metrics.auroc, metrics.accuracy, metrics.macro_f1):
    assert metric_fn(y, probs, 'binary-class') == metric_fn(
        y, probs[:, 1], 'binary-class')


@pytest.mark.parametrize('seed', SEEDS)
def test_accuracy_and_f1_match_sklearn(seed):
  y, probs = _single_label(seed, ties=False)
  pred = probs.argmax(-1)
  assert metrics.accuracy(y, probs, 'multi-class') == pytest.approx(
      skm.accuracy_score(y, pred), abs=1e-12)
  assert metrics.macro_f1(y, probs, 'multi-class') == pytest.approx(
      skm.f1_score(y, pred, average='macro'), abs=1e-12)
  # Binary: macro over both classes at the 0.5 threshold.
  y, probs = _single_label(seed, c=2)
  pred = (probs[:, 1] > 0.5).astype(int)
  assert metrics.macro_f1(y, probs, 'binary-class') == pytest.approx(
      skm.f1_score(y, pred, average='macro'), abs=1e-12)
  # Multi-label: macro over labels, one label never positive nor predicted.
  y, probs = _multi_label(seed)
  y[:, 0], probs[:, 0] = 0, 0.1
  assert metrics.macro_f1(y, probs, 'multi-label, binary-class') == (
      pytest.approx(skm.f1_score(y, probs > 0.5, average='macro',
                                 zero_division=0), abs=1e-12))


def test_f1_with_class_never_predicted_or_absent():
  y = np.array([0, 0, 1, 1, 2, 2])
  probs = np.eye(4)[[0, 1, 1, 1, 3, 0]]  # class 2 never predicted, 3 absent
  assert metrics.macro_f1(y, probs, 'multi-class') == pytest.approx(
      skm.f1_score(y, probs.argmax(-1), average='macro', zero_division=0))


@pytest.mark.parametrize('seed', SEEDS)
def test_sensitivity_specificity(seed):
  y, probs = _single_label(seed, c=2)
  tn, fp, fn, tp = skm.confusion_matrix(y, probs[:, 1] > 0.5).ravel()
  sens, spec = metrics.sensitivity_specificity(y, probs)
  assert sens == pytest.approx(tp / (tp + fn))
  assert spec == pytest.approx(tn / (tn + fp))


def test_classification_metrics_keys():
  y, probs = _single_label(0, c=2)
  out = metrics.classification_metrics(y, probs, 'binary-class')
  assert list(out) == ['auroc', 'accuracy', 'balanced_accuracy', 'f1',
                       'sensitivity', 'specificity']
  y, probs = _single_label(0)
  assert list(metrics.classification_metrics(y, probs, 'multi-class')) == [
      'auroc', 'accuracy', 'balanced_accuracy', 'f1']


@pytest.mark.parametrize('seed', SEEDS)
def test_balanced_accuracy_and_log_loss_match_sklearn(seed):
  y, probs = _single_label(seed, ties=False)
  assert metrics.balanced_accuracy(y, probs, 'multi-class') == pytest.approx(
      skm.balanced_accuracy_score(y, probs.argmax(-1)), abs=1e-12)
  assert metrics.log_loss(y, probs, 'multi-class') == pytest.approx(
      skm.log_loss(y, probs, labels=np.arange(probs.shape[1])), rel=1e-6)
  y, probs = _single_label(seed, c=2)
  assert metrics.balanced_accuracy(y, probs, 'binary-class') == pytest.approx(
      skm.balanced_accuracy_score(y, probs[:, 1] > 0.5), abs=1e-12)
  assert metrics.log_loss(y, probs[:, 1], 'binary-class') == pytest.approx(
      skm.log_loss(y, probs[:, 1]), rel=1e-6)


def test_balanced_accuracy_exposes_the_majority_class_predictor():
  y = np.array([0] * 73 + [1] * 27)
  always_majority = np.tile([0.9, 0.1], (100, 1))
  assert metrics.accuracy(y, always_majority, 'binary-class') == 0.73
  assert metrics.balanced_accuracy(y, always_majority, 'binary-class') == 0.5
  # Multi-label: per label (TPR + TNR) / 2, here one label right, one at chance.
  y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
  probs = np.array([[0.9, 0.1], [0.1, 0.1], [0.8, 0.2], [0.2, 0.3]])
  assert metrics.balanced_accuracy(
      y, probs, 'multi-label, binary-class') == pytest.approx(0.75)


@pytest.mark.parametrize('seed', SEEDS)
def test_balanced_threshold_is_the_best_cutoff_of_an_exhaustive_search(seed):
  """Every cut-off between sorted scores (and beyond both ends) is tried;
  none gives a higher balanced accuracy (sklearn's) than the chosen one."""
  rng = np.random.default_rng(seed)
  y = (rng.random(80) < 0.3).astype(int)
  p = np.round(0.3 * rng.random(80) + 0.1 * y, 3)  # ranks, all below 0.5
  t = metrics.balanced_threshold(y, p, 'binary-class')
  best = skm.balanced_accuracy_score(y, p > t)
  grid = np.r_[np.unique(p), p.min() - 1, 0.5]
  assert best >= max(skm.balanced_accuracy_score(y, p > g) for g in grid) - 1e-12
  assert best > 0.5 and t < 0.5  # ranked above chance: off the majority class


def test_balanced_threshold_keeps_half_when_scores_separate_nothing():
  y = np.array([0, 1, 0, 1, 0])
  assert metrics.balanced_threshold(y, np.full(5, 0.3), 'binary-class') == 0.5
  # Several cut-offs tie: the one nearest 0.5 is kept.
  y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
  assert metrics.balanced_threshold(y, p, 'binary-class') == 0.5


def test_balanced_threshold_per_label_and_none_for_argmax():
  y = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
  p = np.array([[0.1, 0.9], [0.3, 0.2], [0.15, 0.8], [0.35, 0.1]])
  t = metrics.balanced_threshold(y, p, 'multi-label, binary-class')
  assert t[0] == pytest.approx(0.225) and t[1] == 0.5
  out = metrics.classification_metrics(y, p, 'multi-label, binary-class',
                                       threshold=t)
  assert out['balanced_accuracy'] == 1.0 and out['accuracy'] == 1.0
  y, probs = _single_label(0)
  assert metrics.balanced_threshold(y, probs, 'multi-class') is None
  assert metrics.THRESHOLD_RULES['medmnist'](y, probs, 'multi-class') == 0.5


@pytest.mark.parametrize('seed', SEEDS)
def test_prior_threshold_calls_as_many_positives_as_validation_holds(seed):
  """Scores all above 0.5 (the 1 %-label failure): the cut-off moves inside
  them and predicts exactly the validation count of positives."""
  rng = np.random.default_rng(seed)
  y = (rng.random(78) < 0.27).astype(int)
  p = 0.6 + 0.25 * rng.random(78) + 0.1 * y  # ranks, all above 0.5
  t = metrics.prior_threshold(y, p, 'binary-class')
  assert 0.6 < t < 0.95
  assert int((p > t).sum()) == int(y.sum())
  assert metrics.balanced_accuracy(y, p, 'binary-class', threshold=t) > 0.5
  assert metrics.balanced_accuracy(y, p, 'binary-class') == 0.5  # at 0.5


def test_prior_threshold_per_label_half_for_one_class_none_for_argmax():
  y = np.array([[0, 1], [1, 1], [0, 1], [0, 1]])
  p = np.array([[0.1, 0.9], [0.3, 0.2], [0.15, 0.8], [0.2, 0.1]])
  assert metrics.prior_threshold(y, p, 'multi-label, binary-class') == [
      pytest.approx(0.25), 0.5]  # label 1 holds one class: nothing to match
  y, probs = _single_label(0)
  assert metrics.prior_threshold(y, probs, 'multi-class') is None


def test_thresholded_metrics_cut_where_told():
  y = np.array([0, 0, 0, 1, 1])
  p = np.array([0.1, 0.2, 0.3, 0.35, 0.4])
  at_half = metrics.classification_metrics(y, p, 'binary-class')
  at_cut = metrics.classification_metrics(y, p, 'binary-class', threshold=0.32)
  assert at_half['balanced_accuracy'] == 0.5 and at_half['sensitivity'] == 0.0
  assert at_cut['accuracy'] == 1.0 and at_cut['f1'] == 1.0
  assert at_cut['auroc'] == at_half['auroc'] == 1.0


def test_single_class_raises_clearly():
  with pytest.raises(ValueError, match='only one class in y_true'):
    metrics.auroc_binary(np.zeros(5), np.arange(5.))
  with pytest.raises(ValueError, match='only one class in y_true'):
    metrics.auroc(np.ones(5), np.arange(5.), 'binary-class')
  y, probs = _single_label(0, c=3)
  y[y == 1] = 0  # class 1 absent from y_true
  with pytest.raises(ValueError, match=r'class/label \[1\]'):
    metrics.auroc(y, probs, 'multi-class')
  per_class = metrics.auroc_per_class(y, probs, 'multi-class')
  assert np.isnan(per_class[1]) and not np.isnan(per_class[[0, 2]]).any()
  assert metrics.auroc(y, probs, 'multi-class', ignore_absent_classes=True) == (
      pytest.approx(np.mean(per_class[[0, 2]])))
  with pytest.raises(ValueError, match='unknown task'):
    metrics.auroc(y, probs, 'multiclass')


def test_bootstrap_ci_contains_point_and_narrows():
  widths = []
  for n in (100, 2000):
    y, probs = _single_label(0, n=n, c=2, ties=False)
    point = metrics.auroc(y, probs, 'binary-class')
    low, high = metrics.bootstrap_ci(y, probs, 'binary-class', metrics.auroc,
                                     num_samples=300)
    assert low < point < high
    widths.append(high - low)
  assert widths[1] < 0.5 * widths[0]
  # Same seed, same interval.
  assert metrics.bootstrap_ci(y, probs, 'binary-class', metrics.accuracy,
                              num_samples=50, seed=3) == metrics.bootstrap_ci(
                                  y, probs, 'binary-class', metrics.accuracy,
                                  num_samples=50, seed=3)


def test_bootstrap_ci_skips_single_class_resamples():
  y = np.array([1] + [0] * 9)  # ~35% of resamples have no positive
  score = np.linspace(0, 1, 10)[::-1]
  low, high = metrics.bootstrap_ci(y, score, 'binary-class', metrics.auroc,
                                   num_samples=200)
  assert 0.0 <= low <= high <= 1.0
  with pytest.raises(ValueError, match='only one class'):
    metrics.bootstrap_ci(np.zeros(10), score, 'binary-class', metrics.auroc)


def test_delong_on_two_classes_as_multi_class_is_binary_delong():
  """Macro AUROC over [1 - p, p] averages two equal one-vs-rest AUROCs;
  the multi-class variance must reduce to DeLong's binary one exactly."""
  rng = np.random.default_rng(7)
  y = (rng.random(90) < 0.35).astype(int)
  a = np.round(rng.random(90) * 0.6 + 0.4 * y, 1)  # ties
  b = rng.random(90) * 0.8 + 0.2 * y
  binary = metrics.delong_paired(y, a, b)
  multi = metrics.delong_paired(y, np.stack([1 - a, a], 1),
                                np.stack([1 - b, b], 1), task=metrics.MULTI_CLASS)
  for key in ('auroc_a', 'auroc_b', 'difference', 'se', 'p_value'):
    assert multi[key] == pytest.approx(binary[key], rel=1e-9)


def _stratified_bootstrap_se(y, a, b, task, rng, draws=300):
  """SD of the AUROC difference over resamples of each class's images."""
  groups = [np.flatnonzero(y == c) for c in np.unique(y)]
  diffs = []
  for _ in range(draws):
    idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
    diffs.append(metrics.auroc(y[idx], a[idx], task)
                 - metrics.auroc(y[idx], b[idx], task))
  return np.std(diffs, ddof=1)


@pytest.mark.parametrize('task', [metrics.MULTI_CLASS, metrics.ORDINAL])
def test_delong_multi_class_matches_auroc_and_a_bootstrap(task):
  """Macro AUROCs as `auroc` reports them; the standard error of their
  difference within 15 % of a class-stratified bootstrap's."""
  rng = np.random.default_rng(11)
  y = rng.integers(0, 5, 500)
  shared = rng.normal(size=(500, 5))  # correlated scorers, as paired cells are
  a = _softmax(shared + rng.normal(size=(500, 5)) + 1.2 * np.eye(5)[y])
  b = _softmax(shared + rng.normal(size=(500, 5)) + 0.8 * np.eye(5)[y])
  out = metrics.delong_paired(y, a, b, task=task)
  assert out['auroc_a'] == pytest.approx(metrics.auroc(y, a, task))
  assert out['auroc_b'] == pytest.approx(metrics.auroc(y, b, task))
  boot = _stratified_bootstrap_se(y, a, b, task, rng)
  assert out['se'] == pytest.approx(boot, rel=0.15)
  assert out['difference'] > 0 and out['p_value'] < 0.05


def test_delong_multi_class_holds_its_level_under_the_null():
  rng = np.random.default_rng(1)
  null = []
  for _ in range(300):
    y = rng.integers(0, 4, 160)
    a, b = (_softmax(rng.normal(size=(160, 4)) + np.eye(4)[y]) for _ in range(2))
    null.append(metrics.delong_paired(y, a, b, task=metrics.MULTI_CLASS)['p_value'])
  assert 0.02 < np.mean(np.array(null) < 0.05) < 0.09


def test_delong_on_one_label_as_multi_label_is_binary_delong():
  """One label: the images' influences give DeLong's binary variance up to
  its (m - 1) / m and n / (n - 1) small-sample factors."""
  rng = np.random.default_rng(5)
  y = (rng.random(200) < 0.35).astype(int)
  a = rng.random(200) * 0.6 + 0.4 * y
  b = rng.random(200) * 0.8 + 0.2 * y
  binary = metrics.delong_paired(y, a, b)
  multi = metrics.delong_paired(y[:, None], a[:, None], b[:, None],
                                task=metrics.MULTI_LABEL)
  for key in ('auroc_a', 'auroc_b', 'difference'):
    assert multi[key] == pytest.approx(binary[key], rel=1e-12)
  assert multi['se'] == pytest.approx(binary['se'], rel=0.03)


def _correlated_multi_label(rng, n, b_strength, num_labels=4):
  """Labels that share images (a common factor), and two correlated
  scorers (signal 3 for a, 2 * `b_strength` for b) whose errors share a
  per-image part across labels: the labels' AUROC errors then move
  together, and treating them as independent would understate the
  standard error by about a third."""
  common = rng.normal(size=(n, 1))
  y = (common + rng.normal(size=(n, num_labels)) > 0.3).astype(int)
  shared = rng.normal(size=(n, num_labels))

  def scorer(strength):
    noise = 2 * rng.normal(size=(n, 1)) + 0.5 * rng.normal(size=y.shape)
    return 1 / (1 + np.exp(-(shared + noise + 2 * strength * y)))
  return y, scorer(1.5), scorer(b_strength)


def test_delong_multi_label_matches_auroc_and_an_image_bootstrap():
  rng = np.random.default_rng(13)
  y, a, b = _correlated_multi_label(rng, 400, b_strength=1.0)
  out = metrics.delong_paired(y, a, b, task=metrics.MULTI_LABEL)
  assert out['auroc_a'] == pytest.approx(metrics.auroc(y, a, metrics.MULTI_LABEL))
  assert out['auroc_b'] == pytest.approx(metrics.auroc(y, b, metrics.MULTI_LABEL))
  diffs = []
  for _ in range(300):
    idx = rng.integers(0, len(y), len(y))
    diffs.append(metrics.auroc(y[idx], a[idx], metrics.MULTI_LABEL)
                 - metrics.auroc(y[idx], b[idx], metrics.MULTI_LABEL))
  assert out['se'] == pytest.approx(np.std(diffs, ddof=1), rel=0.15)
  assert out['difference'] > 0 and out['p_value'] < 0.05


def test_delong_multi_label_holds_its_level_under_the_null():
  rng = np.random.default_rng(2)
  null = []
  for _ in range(300):
    y, a, b = _correlated_multi_label(rng, 160, b_strength=1.5)
    null.append(metrics.delong_paired(y, a, b, task=metrics.MULTI_LABEL)['p_value'])
  assert 0.02 < np.mean(np.array(null) < 0.05) < 0.09


def test_delong_refuses_what_it_cannot_test():
  y, probs = _multi_label(0, n=40)
  y[:, 3] = 0
  y[7, 3] = 1
  with pytest.raises(ValueError, match='2 positive and 2 negative test images '
                     'of each label; label 3 has 1 of 40 positive'):
    metrics.delong_paired(y, probs, probs, task=metrics.MULTI_LABEL)
  with pytest.raises(ValueError, match=r'probs shaped like y_true \(40, 5\)'):
    metrics.delong_paired(y, probs, probs[:, :4], task=metrics.MULTI_LABEL)
  y = np.array([0, 0, 1, 1, 2, 2, 2])
  probs = _softmax(np.eye(3)[y])
  with pytest.raises(ValueError, match='undefined for class/label'):
    metrics.delong_paired(y[:4], probs[:4], probs[:4], task=metrics.MULTI_CLASS)
  with pytest.raises(ValueError, match='class 1 has 1'):
    metrics.delong_paired(np.delete(y, 2), np.delete(probs, 2, 0),
                          np.delete(probs, 2, 0), task=metrics.MULTI_CLASS)


def test_mean_sd():
  assert metrics.mean_sd([0.7]) == (0.7, 0.0)
  mean, sd = metrics.mean_sd([1.0, 2.0, 4.0])
  assert mean == pytest.approx(7 / 3)
  assert sd == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
  with pytest.raises(ValueError):
    metrics.mean_sd([])


def _delong_by_pairs(y, a, b):
  """DeLong's variance from the full pos x neg comparison matrix, O(n^2)."""
  pos, neg = y == 1, y == 0
  parts = []
  for s in (a, b):
    psi = ((s[pos][:, None] > s[neg][None, :])
           + 0.5 * (s[pos][:, None] == s[neg][None, :]))
    parts.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
  cov = (np.cov([p[1] for p in parts]) / pos.sum()
         + np.cov([p[2] for p in parts]) / neg.sum())
  return parts[0][0] - parts[1][0], np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


@pytest.mark.parametrize('seed', SEEDS)
def test_delong_matches_the_pairwise_definition(seed):
  rng = np.random.default_rng(seed)
  y = (rng.random(120) < 0.3).astype(int)
  a = np.round(y + rng.normal(0, 1.0, 120), 1)  # ties within and across
  b = np.round(0.5 * y + rng.normal(0, 1.0, 120), 1)
  out = metrics.delong_paired(y, a, b)
  diff, se = _delong_by_pairs(y, a, b)
  assert out['auroc_a'] == pytest.approx(skm.roc_auc_score(y, a))
  assert out['auroc_b'] == pytest.approx(skm.roc_auc_score(y, b))
  assert out['difference'] == pytest.approx(diff)
  assert out['se'] == pytest.approx(se)
  low, high = out['ci']
  assert low < out['difference'] < high
  assert high - low == pytest.approx(2 * 1.959964 * se, rel=1e-5)


def test_delong_p_values_hold_their_level_and_find_real_gaps():
  """Two equally good, independent scorers: p < 0.05 about 5 % of the time;
  a much better scorer: p < 0.05 nearly always."""
  rng = np.random.default_rng(0)
  null, real = [], []
  for _ in range(400):
    y = (rng.random(150) < 0.3).astype(int)
    a, b = (y + rng.normal(0, 1.0, 150) for _ in range(2))
    null.append(metrics.delong_paired(y, a, b)['p_value'])
    real.append(metrics.delong_paired(y, 3 * y + rng.normal(0, 1.0, 150), b)['p_value'])
  assert 0.02 < np.mean(np.array(null) < 0.05) < 0.09
  assert np.mean(np.array(real) < 0.05) > 0.95
  y = np.array([0, 1, 0, 1, 1])
  same = metrics.delong_paired(y, np.arange(5.0), np.arange(5.0))
  assert same['difference'] == 0.0 and same['p_value'] == 1.0
  with pytest.raises(ValueError, match='only one class'):
    metrics.delong_paired(np.zeros(5), np.arange(5.0), np.arange(5.0))
