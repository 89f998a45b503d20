"""Frozen-feature probes: weighted kNN and a linear classifier.

Why: SSL encoders are compared by how well their *frozen* features separate
the labels, with probes cheap enough to run after every pretraining job.
Both probes take numpy features and return numpy probabilities in the
layout `metrics` expects, so evaluation never touches model parameters.
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
  class).
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

  def logits(self, feats: np.ndarray) -> np.ndarray:
    x = (np.asarray(feats, np.float32) - self.mean) / self.std
    return x @ self.w + self.b

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
  mean, std = _standardise(train_feats)
  x = (np.asarray(train_feats, np.float32) - mean) / std
  xv = (np.asarray(val_feats, np.float32) - mean) / std
  y, yv = _targets(train_labels, task), _targets(val_labels, task)
  if len(x) != len(y) or len(xv) != len(yv):
    raise ValueError('features and labels differ in length')

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
