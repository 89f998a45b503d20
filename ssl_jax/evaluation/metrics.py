"""Classification metrics for medical benchmarks, in plain numpy.

Why numpy and not sklearn: the core stays light (numpy + jax + optax), yet the
numbers must be comparable with published MedMNIST tables. So every metric
reproduces `medmnist/evaluator.py` (`getAUC`, `getACC`) or sklearn exactly,
and tests/test_metrics.py checks that against sklearn.

Tasks are MedMNIST's strings: 'binary-class', 'multi-class',
'ordinal-regression' (scored like multi-class) and 'multi-label,
binary-class'. Single-label `y_true` is [N] or [N, 1] integer labels;
multi-label `y_true` is [N, L] in {0, 1}. `probs` is [N, C] (softmax) or
[N, L] (sigmoid); binary-class also takes [N] positive-class scores.

Undefined metrics (AUROC with a single class in `y_true`) raise ValueError
instead of returning NaN: a silent NaN in a results table is worse than a
crash, and callers (e.g. `bootstrap_ci`) decide what to do.
"""
from __future__ import annotations

import statistics
from typing import Callable, Sequence

import numpy as np

BINARY = 'binary-class'
MULTI_CLASS = 'multi-class'
ORDINAL = 'ordinal-regression'
MULTI_LABEL = 'multi-label, binary-class'
TASKS = (BINARY, MULTI_CLASS, ORDINAL, MULTI_LABEL)

# (y_true, probs, task) -> float; `auroc`, `accuracy` and `macro_f1` fit.
MetricFn = Callable[[np.ndarray, np.ndarray, str], float]


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f'unknown task {task!r}; allowed: {", ".join(TASKS)}')


def _labels(y_true: np.ndarray, task: str) -> np.ndarray:
  """Integer labels: [N] for single-label tasks, [N, L] for multi-label."""
  y = np.asarray(y_true)
  if task != MULTI_LABEL and y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]  # MedMNIST stores labels as [N, 1].
  want = 2 if task == MULTI_LABEL else 1
  if y.ndim != want:
    raise ValueError(f'{task} needs y_true with {want} dims, got {y.shape}')
  if not np.all(np.equal(np.mod(y, 1), 0)):
    raise ValueError('y_true must hold integer labels')
  return y.astype(np.int64)


def _probs(probs: np.ndarray, task: str, n: int) -> np.ndarray:
  """Scores as float64: [N] positive-class for binary, else [N, C]."""
  p = np.asarray(probs, dtype=np.float64)
  if task == BINARY and p.ndim == 2:
    p = p[:, -1]  # MedMNIST getAUC/getACC use the last column.
  want = 1 if task == BINARY else 2
  if p.ndim != want or p.shape[0] != n:
    raise ValueError(f'{task} needs probs of {want} dims and {n} rows, '
                     f'got {p.shape}')
  if np.isnan(p).any():
    raise ValueError('probs contain NaN')
  return p


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks with ties sharing their mean rank (scipy's 'average')."""
  order = np.argsort(x, kind='stable')
  xs = x[order]
  first = np.r_[True, xs[1:] != xs[:-1]]
  group = np.cumsum(first) - 1
  starts = np.flatnonzero(first)
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x), dtype=np.float64)
  ranks[order] = ((starts + 1 + ends) / 2.0)[group]
  return ranks


def auroc_binary(y_true: np.ndarray, score: np.ndarray) -> float:
  """AUROC as the Mann-Whitney U statistic: P(score_pos > score_neg) + ties/2.

  Equals sklearn.metrics.roc_auc_score (up to float rounding) without
  building the ROC curve. Raises ValueError if y_true holds only one class.
  """
  y = np.asarray(y_true).reshape(-1)
  s = np.asarray(score, dtype=np.float64).reshape(-1)
  if y.shape != s.shape:
    raise ValueError(f'y_true {y.shape} and score {s.shape} differ in length')
  if not np.isin(y, (0, 1)).all():
    raise ValueError('auroc_binary needs y_true in {0, 1}')
  if np.isnan(s).any():
    raise ValueError('score contains NaN')
  pos = y == 1
  n_pos = int(pos.sum())
  n_neg = len(y) - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError(
        f'AUROC is undefined: only one class in y_true ({n_pos} positives, '
        f'{n_neg} negatives); it needs both')
  u = _average_ranks(s)[pos].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def auroc_per_class(y_true: np.ndarray, probs: np.ndarray,
                    task: str) -> np.ndarray:
  """One AUROC per class (one-vs-rest) or per label; NaN where undefined.

  Binary-class gives one value (the positive class). A class whose
  one-vs-rest problem has a single class in y_true gets NaN, so a report can
  show which classes are missing from a split.
  """
  _check_task(task)
  y = _labels(y_true, task)
  p = _probs(probs, task, len(y))
  if task == BINARY:
    columns = [(y, p)]
  elif task == MULTI_LABEL:
    if y.shape != p.shape:
      raise ValueError(f'y_true {y.shape} and probs {p.shape} differ')
    columns = [(y[:, i], p[:, i]) for i in range(p.shape[1])]
  else:
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
      raise ValueError(f'labels must lie in [0, {p.shape[1]}), got '
                       f'[{y.min()}, {y.max()}]')
    columns = [((y == i).astype(np.int64), p[:, i])
               for i in range(p.shape[1])]
  out = np.full(len(columns), np.nan)
  for i, (yi, pi) in enumerate(columns):
    if 0 < yi.sum() < len(yi):
      out[i] = auroc_binary(yi, pi)
  return out


def auroc(y_true: np.ndarray, probs: np.ndarray, task: str, *,
          ignore_absent_classes: bool = False) -> float:
  """AUROC as MedMNIST's getAUC: binary, or the mean of per-class OvR/labels.

  MedMNIST averages over *all* classes, so by default a class missing from
  y_true raises (as sklearn would there). `ignore_absent_classes=True`
  averages over the classes whose one-vs-rest problem is defined instead.
  """
  _check_task(task)
  if task == BINARY:
    y = _labels(y_true, task)
    return auroc_binary(y, _probs(probs, task, len(y)))
  per_class = auroc_per_class(y_true, probs, task)
  missing = np.flatnonzero(np.isnan(per_class))
  if len(missing) == len(per_class):
    raise ValueError('AUROC is undefined: every class/label has only one '
                     'class in y_true')
  if len(missing) and not ignore_absent_classes:
    raise ValueError(
        f'AUROC is undefined for class/label {missing.tolist()}: only one '
        'class in y_true for its one-vs-rest problem; pass '
        'ignore_absent_classes=True to average over the others')
  return float(np.nanmean(per_class))


def _predictions(p: np.ndarray, task: str, threshold) -> np.ndarray:
  """Hard labels: MedMNIST thresholds with a strict `>` (multi-label: a
  threshold or one per label), else argmax."""
  if task in (BINARY, MULTI_LABEL):
    return (p > np.asarray(threshold, np.float64)).astype(np.int64)
  return np.argmax(p, axis=-1)


def accuracy(y_true: np.ndarray, probs: np.ndarray, task: str, *,
             threshold: float = 0.5) -> float:
  """Accuracy as MedMNIST's getACC (multi-label: mean per-label accuracy)."""
  _check_task(task)
  y = _labels(y_true, task)
  p = _probs(probs, task, len(y))
  pred = _predictions(p, task, threshold)
  if task == MULTI_LABEL:
    return float(np.mean([np.mean(pred[:, i] == y[:, i])
                          for i in range(y.shape[1])]))
  return float(np.mean(pred == y))


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
  """F1 = 2tp / (2tp + fp + fn); 0 when undefined, as sklearn's default."""
  tp = np.sum((y == 1) & (pred == 1))
  fp = np.sum((y == 0) & (pred == 1))
  fn = np.sum((y == 1) & (pred == 0))
  denom = 2 * tp + fp + fn
  return float(2 * tp / denom) if denom else 0.0


def macro_f1(y_true: np.ndarray, probs: np.ndarray, task: str, *,
             threshold: float = 0.5) -> float:
  """Macro F1 as sklearn f1_score(average='macro').

  Single-label (binary too): mean over the labels present in y_true or the
  predictions, so binary averages the F1 of both classes. Multi-label: mean
  over all labels, a label with no positives and no predictions scoring 0.
  """
  _check_task(task)
  y = _labels(y_true, task)
  p = _probs(probs, task, len(y))
  pred = _predictions(p, task, threshold)
  if task == MULTI_LABEL:
    return float(np.mean([_f1(y[:, i], pred[:, i])
                          for i in range(y.shape[1])]))
  classes = np.union1d(y, pred)
  return float(np.mean([_f1(y == c, pred == c) for c in classes]))


def sensitivity_specificity(y_true: np.ndarray, probs: np.ndarray, *,
                            threshold: float = 0.5) -> tuple[float, float]:
  """(TPR, TNR) of a binary classifier at `threshold` (strict `>`).

  Raises ValueError when y_true lacks positives or negatives.
  """
  y = _labels(y_true, BINARY)
  pred = _predictions(_probs(probs, BINARY, len(y)), BINARY, threshold)
  n_pos = int(np.sum(y == 1))
  n_neg = len(y) - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError('sensitivity/specificity are undefined: only one class '
                     'in y_true')
  sens = np.sum((pred == 1) & (y == 1)) / n_pos
  spec = np.sum((pred == 0) & (y == 0)) / n_neg
  return float(sens), float(spec)


def balanced_accuracy(y_true: np.ndarray, probs: np.ndarray, task: str, *,
                      threshold: float = 0.5) -> float:
  """Mean recall over the classes present in y_true (sklearn's
  balanced_accuracy_score); multi-label: mean over labels of (TPR + TNR) / 2.
  Why beside ACC: on a 73 % majority class, ACC 0.73 can mean a classifier
  that never predicts the minority; balanced accuracy then reads 0.5."""
  _check_task(task)
  y = _labels(y_true, task)
  pred = _predictions(_probs(probs, task, len(y)), task, threshold)
  if task == MULTI_LABEL:
    per_label = []
    for i in range(y.shape[1]):
      recalls = [np.mean(pred[y[:, i] == c, i] == c) for c in (0, 1)
                 if np.any(y[:, i] == c)]
      per_label.append(np.mean(recalls))
    return float(np.mean(per_label))
  return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def log_loss(y_true: np.ndarray, probs: np.ndarray, task: str, *,
             eps: float = float(np.finfo(np.float64).eps)) -> float:
  """Mean cross-entropy of the probabilities (multi-label: mean per-label
  BCE); stage 2 breaks ties in val AUROC with it."""
  _check_task(task)
  y = _labels(y_true, task)
  p = np.clip(np.asarray(probs, np.float64), eps, 1.0 - eps)
  if task == MULTI_LABEL:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
  if task == BINARY and p.ndim == 1:
    p = np.stack([1.0 - p, p], axis=-1)
  return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           task: str, *, threshold=0.5) -> dict[str, float]:
  """The headline numbers, AUROC first (MedMNIST's ranking metric); the
  others at `threshold` (one per label for multi-label; argmax tasks
  ignore it)."""
  out = {
      'auroc': auroc(y_true, probs, task),
      'accuracy': accuracy(y_true, probs, task, threshold=threshold),
      'balanced_accuracy': balanced_accuracy(y_true, probs, task,
                                             threshold=threshold),
      'f1': macro_f1(y_true, probs, task, threshold=threshold),
  }
  if task == BINARY:
    out['sensitivity'], out['specificity'] = sensitivity_specificity(
        y_true, probs, threshold=threshold)
  return out


def _balanced_cutoff(y: np.ndarray, p: np.ndarray) -> float:
  """The cut-off t (predict positive where p > t) with the highest mean of
  sensitivity and specificity on (y, p); ties go to the t nearest 0.5, and
  0.5 itself is a candidate, so scores that separate nothing keep it.
  Counts come from the sorted scores (O(N log N), any split size)."""
  order = np.argsort(p, kind='stable')
  scores, positive = p[order], y[order] == 1
  values = np.unique(scores)
  candidates = np.r_[0.5, (values[1:] + values[:-1]) / 2.0,
                     values[0] - 1e-6, values[-1]]
  # Rows at or below each candidate are predicted negative.
  below = np.searchsorted(scores, candidates, side='right')
  pos_below = np.r_[0, np.cumsum(positive)][below]
  neg_below = below - pos_below
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  recalls = ([(n_pos - pos_below) / n_pos] if n_pos else []) + (
      [neg_below / n_neg] if n_neg else [])
  balanced = np.mean(recalls, axis=0)
  best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
  return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def _cut_per_task(cutoff, y_true: np.ndarray, probs: np.ndarray, task: str):
  """`cutoff(y, p)` for a binary task, one per label for multi-label, None
  for argmax tasks (multi-class and ordinal predict the top class)."""
  _check_task(task)
  y = _labels(y_true, task)
  p = _probs(probs, task, len(y))
  if task == BINARY:
    return cutoff(y, p)
  if task == MULTI_LABEL:
    return [cutoff(y[:, i], p[:, i]) for i in range(y.shape[1])]
  return None


def fixed_threshold(y_true: np.ndarray, probs: np.ndarray, task: str):
  """MedMNIST's 0.5 (with a strict `>`), whatever the scores."""
  del y_true, probs, task
  return 0.5


def balanced_threshold(y_true: np.ndarray, probs: np.ndarray, task: str):
  """The cut-off that maximises balanced accuracy on these (validation)
  scores: a float for binary tasks, one per label for multi-label, None
  for argmax tasks.

  Why: a classifier can rank well (AUROC 0.65) while every score sits
  below 0.5, e.g. the early checkpoint validation picks at 1 % of the
  labels; at 0.5 it then predicts only the majority class. The operating
  point is chosen on validation and applied unchanged to test, so test
  labels never shape it. (Measured on the demo it did not pay: docs/results.md
  "Quick runs".)
  """
  return _cut_per_task(_balanced_cutoff, y_true, probs, task)


def _prior_cutoff(y: np.ndarray, p: np.ndarray) -> float:
  """The cut-off with as many rows of p above it as y holds positives
  (midway between the two scores around that rank); 0.5 where y holds a
  single class, which gives no rate to match."""
  n_pos, n = int((y == 1).sum()), len(y)
  if n_pos in (0, n):
    return 0.5
  scores = np.sort(p)
  return float((scores[n - n_pos - 1] + scores[n - n_pos]) / 2.0)


def prior_threshold(y_true: np.ndarray, probs: np.ndarray, task: str):
  """The cut-off at which validation predicts as many positives as it holds
  (per label for multi-label; None for argmax tasks).

  Why: a classifier fitted to a handful of images can rank unseen ones well
  while scoring all of them on one side of 0.5 (at 1 % of BreastMNIST,
  5 images, AUROC 0.77 with every test image called benign). Matching the
  predicted-positive rate to validation's prevalence re-places the cut-off
  inside the scores from one count of validation labels, which is far less
  noisy on 78 images than `balanced_threshold`'s search; test only applies
  it.
  """
  return _cut_per_task(_prior_cutoff, y_true, probs, task)


# finetune.decision_threshold -> (y_val, probs_val, task) -> threshold.
THRESHOLD_RULES = {'medmnist': fixed_threshold, 'val_balanced': balanced_threshold,
                   'val_prior': prior_threshold}


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, task: str,
                 metric_fn: MetricFn, *, num_samples: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
  """Percentile bootstrap (1 - alpha) interval, resampling test examples.

  Why: test sets in medical imaging are small, so a point estimate alone
  overstates what a 0.5-point AUROC gain means. Resamples on which
  `metric_fn` raises ValueError (a resample holding a single class, so AUROC
  is undefined) are skipped, not counted; the metric is first evaluated on
  the full set so that real errors still surface. Raises ValueError if every
  resample is skipped.
  """
  y = np.asarray(y_true)
  p = np.asarray(probs)
  if len(y) != len(p):
    raise ValueError(f'y_true has {len(y)} rows, probs {len(p)}')
  metric_fn(y, p, task)
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_samples):
    idx = rng.integers(0, len(y), len(y))
    try:
      values.append(metric_fn(y[idx], p[idx], task))
    except ValueError:
      continue
  if not values:
    raise ValueError('every bootstrap resample was degenerate (single class)')
  low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
  return float(low), float(high)


def _delong_components(y: np.ndarray, score: np.ndarray
                       ) -> tuple[float, np.ndarray, np.ndarray]:
  """AUROC and DeLong's structural components of one score vector: per
  positive, the share of negatives it outranks (ties: 1/2); per negative,
  the share of positives that outrank it. Midranks, O(n log n)
  (Sun & Xu 2014)."""
  pos, neg = score[y == 1], score[y == 0]
  m, n = len(pos), len(neg)
  joint = _average_ranks(np.concatenate([pos, neg]))
  v_pos = (joint[:m] - _average_ranks(pos)) / n
  v_neg = 1.0 - (joint[m:] - _average_ranks(neg)) / m
  return float(v_pos.mean()), v_pos, v_neg


def _auroc_and_shares(y: np.ndarray, p: np.ndarray, task: str
                      ) -> tuple[float, np.ndarray]:
  """AUROC as `auroc` computes it, and each image's share of its estimate:
  DeLong's structural components scaled to their class sizes (V10 / m on
  a one-vs-rest problem's positives, V01 / n on its negatives), averaged
  over the classes the macro AUROC averages. Summed over the images they
  give the estimate (twice over), so their spread is its noise."""
  if task == BINARY:
    columns = [(y, p)]
  else:
    columns = [((y == k).astype(np.int64), p[:, k]) for k in range(p.shape[1])]
  shares, aurocs = np.zeros(len(y)), []
  for yk, score in columns:
    value, v_pos, v_neg = _delong_components(yk, score)
    shares[yk == 1] += v_pos / len(v_pos)
    shares[yk == 0] += v_neg / len(v_neg)
    aurocs.append(value)
  return float(np.mean(aurocs)), shares / len(columns)


def _multi_label_variance(y: np.ndarray, scores: Sequence[np.ndarray]
                          ) -> tuple[float, float, float]:
  """Both macro AUROCs over labels, and their difference's variance.

  An image is a positive of some labels and a negative of others, so no
  class partition holds sizes fixed; the images themselves are the draw.
  Each image's centred share of each label's estimate (DeLong's
  structural component minus that label's AUROC, over its positives' or
  negatives' count) summed over its labels is its influence on the macro
  AUROC; the variance is the images' spread of the paired influences, so
  labels that share images (and their errors) are weighed together.
  """
  n, num_labels = y.shape
  for k in range(num_labels):
    count = int(y[:, k].sum())
    if min(count, n - count) < 2:
      raise ValueError(f"DeLong's test needs at least 2 positive and 2 "
                       f"negative test images of each label; label {k} has "
                       f"{count} of {n} positive")
  aurocs, influence = np.zeros(2), np.zeros(n)
  for side, (p, sign) in enumerate(zip(scores, (1.0, -1.0))):
    for k in range(num_labels):
      yk = y[:, k]
      value, v_pos, v_neg = _delong_components(yk, p[:, k])
      influence[yk == 1] += sign * (v_pos - value) / len(v_pos) / num_labels
      influence[yk == 0] += sign * (v_neg - value) / len(v_neg) / num_labels
      aurocs[side] += value / num_labels
  return float(aurocs[0]), float(aurocs[1]), n / (n - 1) * float(
      np.sum(influence ** 2))


def delong_paired(y_true: np.ndarray, score_a: np.ndarray,
                  score_b: np.ndarray, *, task: str = BINARY,
                  alpha: float = 0.05) -> dict:
  """DeLong, DeLong & Clarke-Pearson (1988): two AUROCs on the same images.

  Why: SSL and scratch classifiers are scored on one test set, so their
  AUROCs are correlated; the paired test weighs their difference against
  the test set's sampling noise (what seeds-paired intervals leave out).
  Binary tasks as DeLong wrote it; multi-class and ordinal tasks for
  MedMNIST's macro one-vs-rest AUROC, by the same U-statistic argument:
  each image's share of the difference (`_auroc_and_shares`), its
  variance summed over the true classes, whose sizes are held fixed as
  DeLong holds the positives' and negatives'. For binary tasks that sum
  is DeLong's S10 / m + S01 / n exactly. Multi-label tasks' mean AUROC
  over labels by the images' influences (`_multi_label_variance`).
  Scores as `auroc` takes them. Returns both AUROCs, their difference
  (a − b), its standard error, a normal (1 − alpha) interval and the
  two-sided p-value.
  """
  _check_task(task)
  y = _labels(y_true, task)
  scores = [_probs(s, task, len(y)) for s in (score_a, score_b)]
  if task == MULTI_LABEL:
    for s in scores:
      if s.shape != y.shape:
        raise ValueError(f"{task} needs probs shaped like y_true {y.shape}, "
                         f"got {s.shape}")
    auroc_a, auroc_b, variance = _multi_label_variance(y, scores)
  else:
    auroc(y, scores[0], task)  # checks labels and that every class is present
    classes, sizes = np.unique(y, return_counts=True)
    if sizes.min() < 2:
      raise ValueError(f"DeLong's test needs at least 2 test images of each "
                       f"class; class {classes[sizes.argmin()]} has 1")
    (auroc_a, shares_a), (auroc_b, shares_b) = (
        _auroc_and_shares(y, s, task) for s in scores)
    paired = shares_a - shares_b
    variance = sum(len(paired[y == c]) * np.var(paired[y == c], ddof=1)
                   for c in classes)
  diff = auroc_a - auroc_b
  se = float(np.sqrt(max(variance, 0.0)))
  normal = statistics.NormalDist()
  half = normal.inv_cdf(1 - alpha / 2) * se
  p_value = 2 * (1 - normal.cdf(abs(diff) / se)) if se > 0 else (
      1.0 if diff == 0 else 0.0)
  return {'auroc_a': auroc_a, 'auroc_b': auroc_b, 'difference': diff,
          'se': se, 'ci': (diff - half, diff + half), 'p_value': float(p_value)}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample SD (ddof=1) over seeds/folds; SD is 0.0 for one value."""
  v = np.asarray(values, dtype=np.float64).reshape(-1)
  if v.size == 0:
    raise ValueError('mean_sd needs at least one value')
  sd = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
  return float(np.mean(v)), sd
