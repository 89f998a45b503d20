"""kNN and linear probes on synthetic features with known answers."""
import numpy as np
import pytest

from ssl_jax.evaluation import inference
from ssl_jax.evaluation import metrics
from ssl_jax.evaluation import probes

# Small, fast settings shared by the linear-probe tests (one compile each).
FAST = dict(epochs=20, lr=0.05, batch_size=128, eval_every=5)


def _clusters(seed, n, num_classes=5, dim=16, spread=0.3):
  """Gaussian blobs around random unit directions: separable by cosine."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_classes, dim))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  y = rng.integers(0, num_classes, n)
  return centers[y] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim), y


def _knn_reference(train, labels, query, num_classes, k, temperature):
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  query = query / np.linalg.norm(query, axis=1, keepdims=True)
  sims = query @ train.T
  out = np.zeros((len(query), num_classes))
  for i, row in enumerate(sims):
    idx = np.argsort(-row, kind='stable')[:k]
    np.add.at(out[i], labels[idx], np.exp(row[idx] / temperature))
  return out / out.sum(1, keepdims=True)


def test_knn_separable_clusters():
  x, y = _clusters(0, 600)
  probs = probes.knn_predict(x[:500], y[:500], x[500:], num_classes=5)
  assert probs.shape == (100, 5)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  assert metrics.accuracy(y[500:], probs, 'multi-class') >= 0.99


def test_knn_matches_reference_and_chunking():
  rng = np.random.default_rng(1)
  train, query = rng.normal(size=(50, 8)), rng.normal(size=(13, 8))
  labels = rng.integers(0, 3, 50)
  want = _knn_reference(train, labels, query, 3, k=7, temperature=0.1)
  for chunk_size in (4, 256):  # 13 queries: a remainder chunk, then one
    got = probes.knn_predict(train, labels, query, num_classes=3, k=7,
                             temperature=0.1, chunk_size=chunk_size)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_knn_clips_k():
  rng = np.random.default_rng(2)
  train, query = rng.normal(size=(10, 4)), rng.normal(size=(3, 4))
  labels = rng.integers(0, 2, (10, 1))  # MedMNIST [N, 1] labels
  big = probes.knn_predict(train, labels, query, num_classes=2, k=100)
  exact = probes.knn_predict(train, labels, query, num_classes=2, k=10)
  np.testing.assert_allclose(big, exact)
  np.testing.assert_allclose(big.sum(1), 1.0, rtol=1e-5)


def test_knn_multi_label():
  x, y = _clusters(3, 300, num_classes=4)
  # Five labels, each a function of the cluster: one-hot plus "cluster < 2".
  multi_hot = np.concatenate([np.eye(4)[y], (y < 2)[:, None]], 1).astype(int)
  probs = probes.knn_predict(x[:250], multi_hot[:250], x[250:],
                             num_classes=5, k=10)
  assert probs.shape == (50, 5) and probs.min() >= 0 and probs.max() <= 1
  assert metrics.auroc(multi_hot[250:], probs,
                       'multi-label, binary-class') > 0.99


def _linear_problem(seed, n, dim=20, random_labels=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 5, dim) + 3.0
  w = rng.normal(size=dim)
  y = ((x - 3.0) @ w > 0).astype(int)
  if random_labels:
    y = rng.integers(0, 2, n)
  return x, y


def test_linear_probe_separable():
  x, y = _linear_problem(0, 1600)
  probe = probes.fit_linear_probe(x[:1000], y[:1000], x[1000:1300],
                                  y[1000:1300], num_classes=2,
                                  task='binary-class', **FAST)
  probs = probe.predict_proba(x[1300:])
  assert probs.shape == (300, 2)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
  assert metrics.auroc(y[1300:], probs, 'binary-class') > 0.99
  # The choice is the best (weight decay, epoch) seen on val.
  assert probe.val_metric == 'auroc'
  assert probe.weight_decay in (0., 1e-4, 1e-3, 1e-2)
  assert len(probe.history) == 4 * 4  # 4 weight decays x 4 evaluations
  assert probe.val_score == max(s for _, _, s in probe.history)
  assert (probe.weight_decay, probe.epoch, probe.val_score) in probe.history


def test_linear_probe_random_labels_is_chance():
  x, y = _linear_problem(1, 3000, random_labels=True)
  probe = probes.fit_linear_probe(x[:1000], y[:1000], x[1000:1500],
                                  y[1000:1500], num_classes=2,
                                  task='binary-class', **FAST)
  test_auc = metrics.auroc(y[1500:], probe.predict_proba(x[1500:]),
                           'binary-class')
  assert abs(test_auc - 0.5) < 0.06


def test_linear_probe_deterministic_and_picks_weight_decay():
  x, y = _clusters(4, 700, num_classes=3, spread=2.0)
  fit = lambda seed, wds: probes.fit_linear_probe(
      x[:500], y[:500], x[500:], y[500:], num_classes=3, task='multi-class',
      weight_decays=wds, seed=seed, **FAST)
  a, b, c = fit(0, (0., 1e-2)), fit(0, (0., 1e-2)), fit(1, (0., 1e-2))
  np.testing.assert_array_equal(a.w, b.w)
  assert (a.weight_decay, a.epoch) == (b.weight_decay, b.epoch)
  assert not np.array_equal(a.w, c.w)  # the seed orders the minibatches
  # Huge decay shrinks the weights to ~0 and loses; a single one is taken.
  assert fit(0, (1e3, 0.)).weight_decay == 0.
  assert fit(0, (1e-3,)).weight_decay == 1e-3


def test_linear_probe_multi_label_and_val_loss_fallback():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(600, 12))
  y = (x[:, :3] + 0.3 * rng.normal(size=(600, 3)) > 0).astype(int)
  task = 'multi-label, binary-class'
  probe = probes.fit_linear_probe(x[:400], y[:400], x[400:500], y[400:500],
                                  num_classes=3, task=task, **FAST)
  probs = probe.predict_proba(x[500:])
  assert probs.shape == (100, 3) and probs.min() > 0 and probs.max() < 1
  assert metrics.auroc(y[500:], probs, task) > 0.95
  # Val with a single class: AUROC is undefined, so val loss decides.
  yb = y[:, 0]
  single = np.zeros(100, int)
  probe = probes.fit_linear_probe(x[:400], yb[:400], x[400:500], single,
                                  num_classes=2, task='binary-class', **FAST)
  assert probe.val_metric == 'loss'
  assert probe.val_score == min(s for _, _, s in probe.history)


def test_linear_probe_rejects_bad_task():
  x, y = _linear_problem(0, 50)
  with pytest.raises(ValueError, match='unknown task'):
    probes.fit_linear_probe(x, y, x, y, num_classes=2, task='binary')


def test_a_split_smaller_than_a_batch_pads_to_the_next_power_of_two():
  assert inference.padded_size(78, 256, 1) == 128   # BreastMNIST val
  assert inference.padded_size(156, 256, 1) == 256  # its test set
  assert inference.padded_size(600, 256, 1) == 256
  assert inference.padded_size(5, 256, 8) == 8      # a multiple of the devices
  assert inference.padded_size(20, 256, 6) == 36
  assert inference.padded_size(1, 256, 1) == 1
  assert inference.padded_size(20, 24, 8) == 24     # never above the batch
