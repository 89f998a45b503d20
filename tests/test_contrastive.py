"""Contrastive objectives: each loss against numpy, state updates, and a few
real train steps per method on a fixed BreastMNIST batch."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl_jax.models.heads import MLPHead
from ssl_jax.objectives import contrastive as C
from tests.tiny import FAST_COMPILE


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _f32(*xs):
  return [jnp.asarray(x, jnp.float32) for x in xs]


# ------------------------------------------------------------ MoCo --

def test_infonce_with_queue_matches_numpy():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  queue = _np_normalize(rng.normal(size=(5, 4)))
  qn, kn = _np_normalize(q), _np_normalize(k)
  expected = np.mean([
      -np.log(np.exp(qn[i] @ kn[i] / 0.2)
              / (np.exp(qn[i] @ kn[i] / 0.2)
                 + sum(np.exp(qn[i] @ queue[j] / 0.2) for j in range(5))))
      for i in range(3)])
  loss, _ = C.infonce_with_queue(*_f32(q, k, queue), 0.2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_enqueue_overwrites_the_oldest_and_wraps_around():
  queue = jnp.arange(5, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))
  keys = -jnp.arange(1, 5, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))
  new, ptr = C.enqueue(queue, jnp.asarray(3, jnp.int32), keys)
  # Rows 3, 4 then 0, 1 take the 4 keys; row 2 (the oldest left) survives.
  np.testing.assert_array_equal(new[:, 0], [-3, -4, 2, -1, -2])
  assert int(ptr) == 2 and ptr.dtype == jnp.int32


def test_moco_v3_loss_is_2tau_times_in_batch_infonce():
  rng = np.random.default_rng(1)
  q, k = _np_normalize(rng.normal(size=(4, 3))), _np_normalize(rng.normal(size=(4, 3)))
  t = 0.2
  ce = -np.mean(np.diag(_np_log_softmax(q @ k.T / t)))
  loss, _ = C.moco_v3_loss(*_f32(q, k), t)
  np.testing.assert_allclose(float(loss), 2 * t * ce, rtol=1e-5)


# ------------------------------------------------------ BYOL, SimSiam --

def test_byol_and_simsiam_losses_match_numpy_and_collapse_values():
  rng = np.random.default_rng(2)
  p, z = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
  cos = np.sum(_np_normalize(p) * _np_normalize(z), -1)
  np.testing.assert_allclose(float(C.byol_loss(*_f32(p, z))),
                             np.mean(np.sum((_np_normalize(p) - _np_normalize(z)) ** 2, -1)),
                             rtol=1e-5)
  np.testing.assert_allclose(float(C.byol_loss(*_f32(p, z))), np.mean(2 - 2 * cos), rtol=1e-5)
  np.testing.assert_allclose(float(C.simsiam_loss(*_f32(p, z))), -np.mean(cos), rtol=1e-5)
  # Aligned vectors (any positive scale): BYOL 0, SimSiam its minimum -1.
  np.testing.assert_allclose(float(C.byol_loss(*_f32(p, 3 * p))), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(C.simsiam_loss(*_f32(p, p))), -1.0, rtol=1e-6)
  # The target side gets no gradient.
  g = jax.grad(lambda z: C.byol_loss(jnp.asarray(p, jnp.float32), z))(jnp.asarray(z, jnp.float32))
  assert float(jnp.abs(g).sum()) == 0.0


# ------------------------------------------------------ DINO, SwAV --

def _np_swapped_ce(targets, log_probs):
  losses = [-np.mean(np.sum(targets[i] * log_probs[v], -1))
            for i in range(len(targets)) for v in range(len(log_probs)) if v != i]
  return np.mean(losses)


def test_dino_loss_and_center_match_numpy():
  rng = np.random.default_rng(3)
  student, teacher = rng.normal(size=(4, 3, 5)), rng.normal(size=(2, 3, 5))
  center = rng.normal(size=(5,)) * 0.1
  t_probs = np.exp(_np_log_softmax((teacher - center) / 0.04))
  expected = _np_swapped_ce(t_probs, _np_log_softmax(student / 0.1))
  loss = C.dino_loss(*_f32(student, teacher, center), 0.1, 0.04)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  new = C.update_center(*_f32(center, teacher), 0.9)
  np.testing.assert_allclose(new, 0.9 * center + 0.1 * teacher.mean((0, 1)), rtol=1e-5)


def _np_sinkhorn(scores, eps, iters):
  """SwAV's reference code (distributed_sinkhorn on one process)."""
  q = np.exp(scores / eps).T
  q /= q.sum()
  k, b = q.shape
  for _ in range(iters):
    q /= q.sum(1, keepdims=True)
    q /= k
    q /= q.sum(0, keepdims=True)
    q /= b
  return (q * b).T


def test_sinkhorn_matches_numpy_and_equipartitions():
  rng = np.random.default_rng(4)
  scores = np.tanh(rng.normal(size=(8, 4)))
  got = C.sinkhorn(jnp.asarray(scores, jnp.float32), 0.05, 3)
  np.testing.assert_allclose(got, _np_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got.sum(1), np.ones(8), rtol=1e-5)  # codes
  many = C.sinkhorn(jnp.asarray(scores, jnp.float32), 0.05, 200)
  np.testing.assert_allclose(many.sum(0), np.full(4, 2.0), rtol=1e-3)  # N/K each


def test_swav_loss_matches_numpy():
  rng = np.random.default_rng(5)
  scores = np.tanh(rng.normal(size=(3, 6, 4)))
  codes = np.stack([_np_sinkhorn(s, 0.05, 3) for s in scores[:2]])
  expected = _np_swapped_ce(codes, _np_log_softmax(scores / 0.1))
  got = C.swav_loss(*_f32(scores, codes), 0.1)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


# ------------------------------------------------- Barlow Twins, VICReg --

def test_barlow_twins_matches_numpy_and_dimensional_collapse():
  rng = np.random.default_rng(6)
  z1, z2 = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
  norm = lambda z: (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # noqa: E731
  c = norm(z1).T @ norm(z2) / 7
  off = c - np.diag(np.diag(c))
  expected = np.sum((1 - np.diag(c)) ** 2) + 0.01 * np.sum(off ** 2)
  loss, _ = C.barlow_twins_loss(*_f32(z1, z2), 0.01)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # Every dimension carrying the same signal: C is all ones, so the
  # invariance term is 0 and the redundancy term is lambda * D * (D - 1).
  same = np.repeat(rng.normal(size=(7, 1)), 4, axis=1)
  loss, terms = C.barlow_twins_loss(*_f32(same, same), 0.01)
  np.testing.assert_allclose(float(terms["on_diag"]), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(loss), 0.01 * 4 * 3, rtol=1e-4)


def test_vicreg_matches_numpy_and_collapse_variance():
  rng = np.random.default_rng(7)
  z1, z2 = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) * 0.5

  def var(z):
    return np.mean(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4)))

  def cov(z):
    c = np.cov(z.T)
    return (np.sum(c ** 2) - np.sum(np.diag(c) ** 2)) / 3

  inv = np.mean((z1 - z2) ** 2)
  expected = 25 * inv + 25 * (var(z1) + var(z2)) / 2 + 1 * (cov(z1) + cov(z2))
  loss, _ = C.vicreg_loss(*_f32(z1, z2), sim_weight=25, var_weight=25, cov_weight=1)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # All embeddings identical: std 0, the hinge is gamma - sqrt(eps) per dim.
  same = np.ones((6, 3))
  _, terms = C.vicreg_loss(*_f32(same, same), sim_weight=25, var_weight=25,
                           cov_weight=1, gamma=2.0)
  np.testing.assert_allclose(float(terms["variance"]), 2.0 - 1e-2, rtol=1e-6)
  assert float(terms["invariance"]) == 0 and float(terms["covariance"]) == 0


# ------------------------------------------------------ teacher state --

def test_cosine_momentum_and_ema_formula():
  np.testing.assert_allclose(float(C.cosine_momentum(0, 0.99, 100)), 0.99, rtol=1e-7)
  np.testing.assert_allclose(float(C.cosine_momentum(50, 0.99, 100)), 0.995, rtol=1e-7)
  np.testing.assert_allclose(float(C.cosine_momentum(100, 0.99, 100)), 1.0)
  teacher = {"a": jnp.array([1.0, 2.0]), "b": {0: jnp.array(4.0)}}
  online = {"a": jnp.array([3.0, 2.0]), "b": {0: jnp.array(0.0)}}
  new = C.ema(teacher, online, 0.75)
  np.testing.assert_allclose(new["a"], [1.5, 2.0])
  np.testing.assert_allclose(new["b"][0], 3.0)


def test_teacher_starts_as_copy_keeps_bn_stats_and_follows_new_params():
  import ml_collections
  rngs = nnx.Rngs(0)
  model = C.EncoderProjector(MLPHead(3, 8, 6, rngs=rngs), MLPHead(6, 8, 4, rngs=rngs))
  hp = ml_collections.ConfigDict({"momentum": 0.5, "momentum_cosine": False})
  extra = C.init_teacher_extra(model, hp, None)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit  # traced, as inside the train step
  def forward(params, rest, teacher):
    online = nnx.merge(graphdef, params, rest, copy=True)
    out, teacher = C.apply_teacher(online, teacher, x)
    return out, online(x, train=True), teacher

  out, online_out, teacher = forward(params, rest, extra["teacher"])
  np.testing.assert_allclose(out, online_out, rtol=1e-6)
  # Train-mode BN: the teacher's own running statistics moved.
  assert not np.allclose(teacher["rest"]["encoder"]["norms"][0]["mean"],
                         extra["teacher"]["rest"]["encoder"]["norms"][0]["mean"])
  new_params = jax.tree.map(lambda p: p + 1.0, params)
  updated = C.ema_update_extra(dict(extra, teacher=teacher), new_params, 0,
                               hp, None)
  kernel = lambda t: t["params"]["projector"]["layers"][0]["kernel"]  # noqa: E731
  np.testing.assert_allclose(kernel(updated["teacher"]),
                             kernel(extra["teacher"]) + 0.5, rtol=1e-6)


def test_multi_crop_shapes_and_vit_local_size():
  from ssl_jax import augment, models
  images = jnp.zeros((3, 28, 28, 1), jnp.uint8)
  crop = jax.jit(lambda rng: C.multi_crop(
      augment.get("medical_safe"), rng, images, global_area=(0.4, 1.0),
      local_area=(0.05, 0.4), num_local=2, local_size=12))
  rng = jax.random.PRNGKey(0)
  g, loc = crop.lower(rng).compile(FAST_COMPILE)(rng)
  assert g.shape == (2, 3, 28, 28, 1) and loc.shape == (2, 3, 12, 12, 1)
  # Shapes only (nnx.eval_shape): building real weights eagerly is slow here.
  vit = nnx.eval_shape(lambda: models.get("vit_tiny")(
      in_channels=1, image_size=28, rngs=nnx.Rngs(0), depth=1, hidden_dim=16,
      num_heads=2))
  assert C.local_crop_size(vit, 12) == 28  # fixed sin-cos grid: model size
  resnet = nnx.eval_shape(lambda: models.get("resnet18")(
      in_channels=1, image_size=28, rngs=nnx.Rngs(0)))
  assert C.local_crop_size(resnet, 12) == 12  # global pooling: any size
