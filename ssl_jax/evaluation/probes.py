"""Frozen-feature probes: weighted kNN and two linear classifiers.

Why: SSL encoders are compared by how well their *frozen* features separate
the labels, with probes cheap enough to run after every pretraining job.
Every probe takes numpy features and returns numpy probabilities in the
layout `metrics` expects, so evaluation never touches model parameters.

Two linear probes, because they answer different questions:
- `fit_linear_probe`: minibatch Adam with early stopping on val (the SSL
  papers' linear evaluation, cheap on large sets);
- `fit_logreg`: L2-regularised logistic regression solved to convergence by
  full-batch L-BFGS (the sklearn-style probe of e.g. the CLIP/VTAB
  evaluations): no learning rate or epoch budget to tune, so differences
  between encoders cannot come from an under-trained probe.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.evaluation import metrics


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('k', 'chunk_size'))
def _knn_votes(train: jax.Array, votes: jax.Array, query: jax.Array,
               temperature: jax.Array, *, k: int,
               chunk_size: int) -> jax.Array:
  train = _l2_normalize(train)

  def one(q):
    sims, idx = jax.lax.top_k(train @ q, k)
    # exp(sim / T) of Wu et al.; shifting by the max cancels in the
    # normalisation and keeps exp finite for small T.
    weights = jnp.exp((sims - sims[0]) / temperature)
    return weights @ votes[idx] / weights.sum()

  # lax.map with batch_size vmaps over `chunk_size` queries at a time, so
  # memory stays at chunk_size x N similarities.
  return jax.lax.map(one, _l2_normalize(query), batch_size=chunk_size)


def knn_predict(train_feats: np.ndarray, train_labels: np.ndarray,
                query_feats: np.ndarray, *, num_classes: int, k: int = 20,
                temperature: float = 0.07,
                chunk_size: int = 256) -> np.ndarray:
  """Weighted kNN probabilities [M, C] (Wu et al. 2018; DINO's kNN eval).

  Cosine similarity to the k nearest train features, each neighbour voting
  for its label with weight exp(sim / temperature). Single-label
  `train_labels` ([N] or [N, 1] ints) give class probabilities summing to 1;
  multi-hot [N, C] labels give per-label probabilities (weighted means).
  k is clipped to N.
  """
  labels = np.asarray(train_labels)
  if labels.ndim == 2 and labels.shape[1] == 1 and num_classes != 1:
    labels = labels[:, 0]
  if labels.ndim == 1:
    votes = np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]
  elif labels.shape[1] == num_classes:
    votes = labels.astype(np.float32)
  else:
    raise ValueError(f'train_labels {labels.shape} do not match '
                     f'num_classes={num_classes}')
  train = np.asarray(train_feats, np.float32)
  if len(train) != len(votes):
    raise ValueError(f'{len(train)} train features but {len(votes)} labels')
  k = max(1, min(k, len(train)))
  probs = _knn_votes(train, votes, np.asarray(query_feats, np.float32),
                     jnp.float32(temperature), k=k, chunk_size=chunk_size)
  return np.asarray(probs)


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A fitted linear probe: standardisation, weights, and how it was chosen.

  `history` holds (weight_decay, epoch, val_score) for every candidate
  evaluated; `val_metric` says whether the score is val AUROC (higher is
  better) or val cross-entropy (lower is better, used when val has one
  class). For `fit_logreg`, `epoch` counts L-BFGS iterations and
  `converged` says whether the gradient norm reached the tolerance.
  """
  mean: np.ndarray  # [D]
  std: np.ndarray  # [D]
  w: np.ndarray  # [D, C]
  b: np.ndarray  # [C]
  task: str
  weight_decay: float
  epoch: int
  val_metric: str
  val_score: float
  history: tuple[tuple[float, int, float], ...] = ()
  converged: bool | None = None

  def logits(self, feats: np.ndarray) -> np.ndarray:
    x = (np.asarray(feats, np.float32) - self.mean) / self.std
    return x @ self.w + self.b

  def on_raw_features(self) -> tuple[np.ndarray, np.ndarray]:
    """(kernel [D, C], bias [C]) giving the same logits on unstandardised
    features: the standardisation folded in, as a network's linear head."""
    kernel = self.w / self.std[:, None]
    return kernel, self.b - (self.mean / self.std) @ self.w

  def predict_proba(self, feats: np.ndarray) -> np.ndarray:
    """Softmax probabilities [M, C], or per-label sigmoids for multi-label."""
    return _probs(self.logits(feats), self.task == metrics.MULTI_LABEL)


def _probs(logits: np.ndarray, multi_label: bool) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  if multi_label:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # sigmoid without overflow
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def _cross_entropy(logits: jax.Array, y: jax.Array,
                   multi_label: bool) -> jax.Array:
  """Per-example loss; multi-label sums over labels so each label is its own
  logistic regression with the same weight-decay meaning as binary."""
  if multi_label:
    return optax.sigmoid_binary_cross_entropy(logits, y).sum(-1)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _penalised_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array,
                    weight_decays: jax.Array, multi_label: bool) -> jax.Array:
  """Sum over K independent probes of mean CE + wd/2 |W|^2 (bias unpenalised).

  The K probes (one per weight decay) are stacked, so one Adam over the stack
  trains them independently on identical minibatches.
  """
  logits = jnp.einsum('nd,kdc->knc', x, params['w']) + params['b'][:, None]
  ce = jax.vmap(lambda z: _cross_entropy(z, y, multi_label).mean())(logits)
  l2 = 0.5 * weight_decays * jnp.sum(params['w'] ** 2, axis=(1, 2))
  return jnp.sum(ce + l2)


_ADAM = optax.scale_by_adam()


@functools.partial(jax.jit, static_argnames=('multi_label', 'batch_size'))
def _train_epochs(params, opt_state, x, y, weight_decays, key, lr, total_steps,
                  start_epoch, stop_epoch, *, multi_label: bool,
                  batch_size: int):
  """Epochs [start_epoch, stop_epoch) of Adam with a cosine learning rate.

  Epoch bounds are traced, so resuming between validation checkpoints does
  not recompile. Each epoch visits a fresh permutation; the last batch wraps
  around so every step has the same shape.
  """
  n = x.shape[0]
  full_batch = batch_size >= n
  steps = 1 if full_batch else -(-n // batch_size)
  grad_fn = jax.grad(_penalised_loss)

  def step(carry, idx):
    params, opt_state = carry
    xb, yb = (x, y) if full_batch else (x[idx], y[idx])
    grads = grad_fn(params, xb, yb, weight_decays, multi_label)
    updates, opt_state = _ADAM.update(grads, opt_state)
    t = opt_state.count - 1  # Adam advanced its step count already.
    lr_t = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * t / total_steps))
    params = jax.tree.map(lambda p, u: p - lr_t * u, params, updates)
    return (params, opt_state), None

  def epoch(e, carry):
    if full_batch:
      idx = jnp.zeros((1, 1), jnp.int32)  # unused
    else:
      perm = jax.random.permutation(jax.random.fold_in(key, e), n)
      idx = perm[jnp.arange(steps * batch_size) % n].reshape(steps, -1)
    carry, _ = jax.lax.scan(step, carry, idx)
    return carry

  return jax.lax.fori_loop(start_epoch, stop_epoch, epoch, (params, opt_state))


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Train mean/std; constant features keep std 1 rather than blow up."""
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0)
  std = np.where(std > 1e-6, std, 1.0)
  return mean.astype(np.float32), std.astype(np.float32)


def _val_score(y: np.ndarray, logits: np.ndarray,
               task: str) -> tuple[str, float]:
  """('auroc', AUROC) when val AUROC is defined, else ('loss', CE)."""
  multi_label = task == metrics.MULTI_LABEL
  try:
    return 'auroc', metrics.auroc(y, _probs(logits, multi_label), task,
                                  ignore_absent_classes=True)
  except ValueError:
    ce = _cross_entropy(jnp.asarray(logits), jnp.asarray(y), multi_label)
    return 'loss', float(ce.mean())


def _targets(labels: np.ndarray, task: str) -> np.ndarray:
  y = np.asarray(labels)
  if task == metrics.MULTI_LABEL:
    return y.astype(np.float32)
  return y.reshape(len(y), -1)[:, 0].astype(np.int32)


def _standardised_split(train_feats, train_labels, val_feats, val_labels,
                        task: str):
  """(mean, std, x, x_val, y, y_val): features standardised with the train
  statistics, labels as the probes' targets."""
  mean, std = _standardise(train_feats)
  x = (np.asarray(train_feats, np.float32) - mean) / std
  xv = (np.asarray(val_feats, np.float32) - mean) / std
  y, yv = _targets(train_labels, task), _targets(val_labels, task)
  if len(x) != len(y) or len(xv) != len(yv):
    raise ValueError('features and labels differ in length')
  return mean, std, x, xv, y, yv


def fit_linear_probe(train_feats: np.ndarray, train_labels: np.ndarray,
                     val_feats: np.ndarray, val_labels: np.ndarray, *,
                     num_classes: int, task: str,
                     weight_decays: Sequence[float] = (0., 1e-4, 1e-3, 1e-2),
                     epochs: int = 100, lr: float = 1e-2,
                     batch_size: int = 1024, eval_every: int = 10,
                     seed: int = 0) -> LinearProbe:
  """Softmax (sigmoid for multi-label) probe on standardised frozen features.

  All weight decays (an L2 penalty wd/2 |W|^2 on the mean loss, so a value
  means the same for any lr; sklearn's C = 1 / (wd * N)) train at once as a
  stack, with Adam and a cosine lr over `epochs` of minibatches of
  `batch_size` (full batch when batch_size >= N). Every `eval_every` epochs
  each candidate is scored on val (AUROC, or val loss when val has a single
  class) and the best (weight decay, epoch) is kept: the decay sweep and
  early stopping in one pass. Deterministic given `seed`.
  """
  metrics._check_task(task)  # pylint: disable=protected-access
  if not weight_decays or epochs < 1 or eval_every < 1 or batch_size < 1:
    raise ValueError('need weight_decays, and epochs, eval_every and '
                     'batch_size >= 1')
  multi_label = task == metrics.MULTI_LABEL
  mean, std, x, xv, y, yv = _standardised_split(
      train_feats, train_labels, val_feats, val_labels, task)

  wds = jnp.asarray(weight_decays, jnp.float32)
  num_wd, dim = len(weight_decays), x.shape[1]
  params = {'w': jnp.zeros((num_wd, dim, num_classes), jnp.float32),
            'b': jnp.zeros((num_wd, num_classes), jnp.float32)}
  opt_state = _ADAM.init(params)
  batch_size = min(batch_size, len(x))
  total_steps = epochs * -(-len(x) // batch_size)
  x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
  key = jax.random.key(seed)

  history, best = [], None
  stops = sorted(set(range(eval_every, epochs, eval_every)) | {epochs})
  start = 0
  for stop in stops:
    params, opt_state = _train_epochs(
        params, opt_state, x_dev, y_dev, wds, key, jnp.float32(lr),
        jnp.float32(total_steps), start, stop, multi_label=multi_label,
        batch_size=batch_size)
    start = stop
    w, b = np.asarray(params['w']), np.asarray(params['b'])
    for i, wd in enumerate(weight_decays):
      name, score = _val_score(yv, xv @ w[i] + b[i], task)
      history.append((float(wd), stop, score))
      rank = score if name == 'auroc' else -score
      if best is None or rank > best[0]:
        best = (rank, name, score, float(wd), stop, w[i].copy(), b[i].copy())

  _, name, score, wd, epoch, w_best, b_best = best
  return LinearProbe(mean=mean, std=std, w=w_best, b=b_best, task=task,
                     weight_decay=wd, epoch=epoch, val_metric=name,
                     val_score=score, history=tuple(history))


@functools.partial(jax.jit, static_argnames=('multi_label', 'num_classes',
                                             'max_iters', 'memory_size'))
def _lbfgs_logreg(x: jax.Array, y: jax.Array, l2: jax.Array, tol: jax.Array,
                  *, multi_label: bool, num_classes: int, max_iters: int,
                  memory_size: int):
  """Minimises mean CE + l2/2 |W|^2 from zero with L-BFGS (zoom line search)
  until |grad| < tol or max_iters; returns (params, iterations, |grad|)."""

  def loss(params):
    logits = x @ params['w'] + params['b']
    ce = _cross_entropy(logits, y, multi_label).mean()
    return ce + 0.5 * l2 * jnp.sum(params['w'] ** 2)

  solver = optax.lbfgs(memory_size=memory_size)
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value,
                                   grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  def grad_norm(state):
    return optax.tree_utils.tree_norm(optax.tree_utils.tree_get(state, 'grad'))

  def going(carry):
    count = optax.tree_utils.tree_get(carry[1], 'count')
    return (count == 0) | ((count < max_iters) & (grad_norm(carry[1]) >= tol))

  params = {'w': jnp.zeros((x.shape[1], num_classes), jnp.float32),
            'b': jnp.zeros((num_classes,), jnp.float32)}
  params, state = jax.lax.while_loop(going, step, (params, solver.init(params)))
  # The state's gradient belongs to the last evaluated point, the final params.
  return params, optax.tree_utils.tree_get(state, 'count'), grad_norm(state)


def fit_logreg(train_feats: np.ndarray, train_labels: np.ndarray,
               val_feats: np.ndarray, val_labels: np.ndarray, *,
               num_classes: int, task: str,
               l2s: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
               max_iters: int = 500, tol: float = 1e-5,
               memory_size: int = 10) -> LinearProbe:
  """Logistic regression on standardised frozen features, solved to
  convergence for each L2 strength; the best on val is kept.

  The objective is mean cross-entropy (sigmoid per label for multi-label) +
  l2/2 |W|^2, bias unpenalised (sklearn's C = 1 / (l2 * N)). Each L2 is
  solved from zero by full-batch L-BFGS until the gradient norm is below
  `tol` (or `max_iters`, recorded as `converged=False`); candidates are
  ranked by val AUROC (val loss when val has a single class), ties going to
  the stronger L2. Deterministic: no minibatches, no random init.
  """
  metrics._check_task(task)  # pylint: disable=protected-access
  if not l2s or min(l2s) <= 0 or max_iters < 1:
    raise ValueError('fit_logreg needs positive l2s (an unpenalised '
                     'separable problem has no minimiser) and max_iters >= 1')
  multi_label = task == metrics.MULTI_LABEL
  mean, std, x, xv, y, yv = _standardised_split(
      train_feats, train_labels, val_feats, val_labels, task)

  history, best = [], None
  for l2 in sorted(l2s, reverse=True):  # strongest first: it wins ties
    params, iters, gnorm = _lbfgs_logreg(
        jnp.asarray(x), jnp.asarray(y), jnp.float32(l2), jnp.float32(tol),
        multi_label=multi_label, num_classes=num_classes,
        max_iters=max_iters, memory_size=memory_size)
    w, b = np.asarray(params['w']), np.asarray(params['b'])
    name, score = _val_score(yv, xv @ w + b, task)
    history.append((float(l2), int(iters), score))
    rank = score if name == 'auroc' else -score
    if best is None or rank > best[0]:
      best = (rank, name, score, float(l2), int(iters),
              bool(float(gnorm) < tol), w, b)

  _, name, score, l2, iters, converged, w_best, b_best = best
  return LinearProbe(mean=mean, std=std, w=w_best, b=b_best, task=task,
                     weight_decay=l2, epoch=iters, val_metric=name,
                     val_score=score, history=tuple(history),
                     converged=converged)
