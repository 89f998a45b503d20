"""Contrastive and joint-embedding objectives: two views of one image agree.

Every method of the review's contrastive family, each a pure loss traced
inside the one jitted step:

- SimCLR (Chen et al., ICML 2020): NT-Xent over the global batch.
- MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv:2003.04297): momentum key
  encoder and a FIFO queue of negative keys.
- MoCo v3 (Chen, Xie & He, ICCV 2021): no queue; a predictor on the query
  branch, in-batch keys from the momentum encoder, symmetric loss.
- BYOL (Grill et al., NeurIPS 2020): EMA target, predictor, 2 - 2 cos.
- SimSiam (Chen & He, CVPR 2021): stop-gradient instead of a target network.
- DINO (Caron et al., ICCV 2021): self-distillation with a centred,
  sharpened EMA teacher and multi-crop.
- Barlow Twins (Zbontar et al., ICML 2021): cross-correlation towards I.
- VICReg (Bardes et al., ICLR 2022): invariance, variance, covariance.
- SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn codes.

Global batch: under `jax.jit` with a data-sharded batch, every sum over the
batch (SimCLR negatives, BatchNorm statistics, Barlow Twins' correlation,
SwAV's Sinkhorn, DINO's centre) spans all devices by construction, as
SyncBN does in the papers; no hand-written all-gathers.

EMA teachers (MoCo, BYOL, DINO) live in `extra`, not in the model: `extra
["teacher"]` holds plain dicts of the teacher's params and BatchNorm
statistics for the model's `encoder` and `projector`. The loss merges them
into the online parts' graph (`nnx.merge` with the online graphdef), runs
the teacher in train mode (batch statistics, as the reference codes do) and
returns its new statistics in `extra`; `update_extra` then moves the teacher
towards the *new* online params (exact, no one-step lag). The optimizer never
sees the teacher, and the fine-tune job still reads only `encoder`.

Positive pairs: every method takes its two (global) views from `pair_views`:
view 1 of `batch['image']`, view 2 of `batch['pair_image']` when the input
pipeline supplies a partner (same patient, study, series slice or metadata;
data_pipelines/pairs.py), else of the image itself. DINO and SwAV take
global crop 2 from the partner and their local crops from the anchor.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import augment, views
from ssl_jax.models.heads import MLPHead
from ssl_jax.objectives import base

Array = jax.Array

# The online parts an EMA teacher copies; `model.<part>` in this order.
TEACHER_PARTS = ("encoder", "projector")


# ------------------------------------------------------------ pure losses --

def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


def cosine(a: Array, b: Array) -> Array:
  """Row-wise cosine similarity of [N, D] arrays, in float32."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def nt_xent(z1: Array, z2: Array, temperature: float) -> tuple[Array, Array]:
  """NT-Xent: each of the 2N views has one positive and 2N-2 negatives.

  Returns (loss, top-1 accuracy of finding the positive among 2N-1 others).
  """
  n = z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2], axis=0).astype(jnp.float32))
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(log_prob, positive[:, None], axis=-1))
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == positive)
  return loss, accuracy


def infonce_with_queue(q: Array, k: Array, queue: Array,
                       temperature: float) -> tuple[Array, Array]:
  """MoCo's InfoNCE: query i's positive is key i, negatives the K queued keys.

  q, k: [N, D] (normalised here); queue: [K, D] of normalised past keys.
  Returns (loss, accuracy of ranking the positive first among K + 1).
  """
  q = l2_normalize(q.astype(jnp.float32))
  k = l2_normalize(k.astype(jnp.float32))
  positive = jnp.sum(q * k, axis=-1, keepdims=True)
  negative = q @ queue.astype(jnp.float32).T
  logits = jnp.concatenate([positive, negative], axis=1) / temperature
  loss = -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == 0)
  return loss, accuracy


def enqueue(queue: Array, ptr: Array, keys: Array) -> tuple[Array, Array]:
  """MoCo's FIFO: writes `keys` at `ptr`, wrapping, over the oldest entries.

  Needs N <= K. Returns (new queue, new pointer); the pointer is the index
  of the oldest entry, i.e. where the next batch goes.
  """
  size, n = queue.shape[0], keys.shape[0]
  index = (ptr + jnp.arange(n)) % size
  return (queue.at[index].set(keys.astype(queue.dtype)),
          ((ptr + n) % size).astype(ptr.dtype))


def moco_v3_loss(q: Array, k: Array, temperature: float) -> tuple[Array, Array]:
  """MoCo v3's ctr(q, k): in-batch InfoNCE, scaled by 2 tau as in the paper.

  Query i's positive is key i, the other N - 1 keys are its negatives.
  The 2 tau factor makes the gradient scale independent of tau.
  """
  q = l2_normalize(q.astype(jnp.float32))
  k = l2_normalize(k.astype(jnp.float32))
  logits = q @ k.T / temperature
  loss = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == jnp.arange(q.shape[0]))
  return 2.0 * temperature * loss, accuracy


def byol_loss(p: Array, z: Array) -> Array:
  """BYOL's normalised MSE ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), mean over N.

  The target z gets no gradient (it comes from the EMA network).
  """
  return jnp.mean(2.0 - 2.0 * cosine(p, jax.lax.stop_gradient(z)))


def simsiam_loss(p: Array, z: Array) -> Array:
  """SimSiam's D(p, stopgrad(z)) = -cos(p, z), mean over N.

  The stop-gradient is what prevents collapse (Chen & He 2021).
  """
  return -jnp.mean(cosine(p, jax.lax.stop_gradient(z)))


def swapped_cross_entropy(targets: Array, log_probs: Array) -> Array:
  """Mean of -sum_k t_i log p_v over pairs (target view i, other view v).

  targets: [T, N, K] distributions from the T global views; log_probs:
  [V, N, K] for all V views, the first T of them the same global views (a
  view never predicts its own target). Shared by DINO and multi-crop SwAV.
  """
  num_t, num_v = targets.shape[0], log_probs.shape[0]
  ce = -jnp.einsum("tnk,vnk->tv", targets, log_probs) / targets.shape[1]
  pairs = ~jnp.eye(num_t, num_v, dtype=bool)
  return jnp.sum(jnp.where(pairs, ce, 0.0)) / jnp.sum(pairs)


def dino_loss(student_logits: Array, teacher_logits: Array, center: Array,
              student_temp: float, teacher_temp: float) -> Array:
  """DINO's self-distillation cross-entropy (Caron et al. 2021).

  student_logits: [V, N, K] (the first 2 views the global crops);
  teacher_logits: [2, N, K] on the global crops only. The teacher is centred
  (minus `center`, against one dimension dominating) and sharpened (low
  teacher_temp, against the uniform collapse); each teacher view supervises
  every *other* student view.
  """
  teacher = jax.nn.softmax(
      jax.lax.stop_gradient(teacher_logits.astype(jnp.float32) - center)
      / teacher_temp, axis=-1)
  student = jax.nn.log_softmax(student_logits.astype(jnp.float32)
                               / student_temp, axis=-1)
  return swapped_cross_entropy(teacher, student)


def update_center(center: Array, teacher_logits: Array,
                  momentum: float) -> Array:
  """DINO's centre: EMA of the teacher's mean output over views and batch."""
  batch_mean = jnp.mean(teacher_logits.astype(jnp.float32), axis=(0, 1))
  return momentum * center + (1.0 - momentum) * batch_mean


def barlow_twins_loss(z1: Array, z2: Array, lambd: float, eps: float = 1e-5
                      ) -> tuple[Array, dict[str, Array]]:
  """Barlow Twins: the cross-correlation of batch-normalised embeddings -> I.

  sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2, with C = z1n^T z2n / N
  and zn normalised per dimension over the batch (BatchNorm without affine,
  biased variance, eps as BatchNorm's).
  """
  def standardize(z):
    z = z.astype(jnp.float32)
    return (z - z.mean(0)) * jax.lax.rsqrt(z.var(0) + eps)

  c = standardize(z1).T @ standardize(z2) / z1.shape[0]
  diagonal = jnp.diagonal(c)
  on_diag = jnp.sum((1.0 - diagonal) ** 2)
  off_diag = jnp.sum(c * c) - jnp.sum(diagonal * diagonal)
  return on_diag + lambd * off_diag, {"on_diag": on_diag, "off_diag": off_diag}


def vicreg_loss(z1: Array, z2: Array, *, sim_weight: float, var_weight: float,
                cov_weight: float, gamma: float = 1.0, eps: float = 1e-4
                ) -> tuple[Array, dict[str, Array]]:
  """VICReg (Bardes et al. 2022): invariance + variance + covariance.

  invariance: mean squared distance of the pair; variance: hinge
  mean_d max(0, gamma - sqrt(Var(z_d) + eps)) per branch, averaged over the
  two; covariance: squared off-diagonal covariances / D, summed over the two
  (unbiased (co)variances, as the official code).
  """
  z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
  n, d = z1.shape

  def variance(z):
    std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
    return jnp.mean(jax.nn.relu(gamma - std))

  def covariance(z):
    z = z - z.mean(0)
    cov = z.T @ z / (n - 1)
    return (jnp.sum(cov * cov) - jnp.sum(jnp.diagonal(cov) ** 2)) / d

  terms = {"invariance": jnp.mean((z1 - z2) ** 2),
           "variance": (variance(z1) + variance(z2)) / 2,
           "covariance": covariance(z1) + covariance(z2)}
  loss = (sim_weight * terms["invariance"] + var_weight * terms["variance"]
          + cov_weight * terms["covariance"])
  return loss, terms


def sinkhorn(scores: Array, epsilon: float, iterations: int) -> Array:
  """SwAV's codes: an equipartition of N samples over K prototypes.

  Sinkhorn-Knopp on exp(scores / epsilon) (Cuturi 2013; Caron et al. 2020):
  alternately rescale prototypes to mass 1/K and samples to mass 1/N.
  scores: [N, K]; returns [N, K] codes, each row a distribution. The sums
  over N run over the global batch under jit with a sharded batch.
  """
  scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
  q = jnp.exp((scores - jnp.max(scores)) / epsilon).T  # [K, N]; max cancels
  q = q / jnp.sum(q)
  k, n = q.shape
  for _ in range(iterations):
    q = q / jnp.sum(q, axis=1, keepdims=True) / k
    q = q / jnp.sum(q, axis=0, keepdims=True) / n
  return (q * n).T


def swav_loss(scores: Array, codes: Array, temperature: float) -> Array:
  """SwAV's swapped prediction: each global view's code from every other view.

  scores: [V, N, K] prototype scores of all views (the first 2 global);
  codes: [2, N, K] Sinkhorn codes of the global views.
  """
  log_probs = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature,
                                 axis=-1)
  return swapped_cross_entropy(jax.lax.stop_gradient(codes), log_probs)


# --------------------------------------------------------- EMA teachers --

def cosine_momentum(step: Array, base: float, total_steps: int) -> Array:
  """BYOL's schedule tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2.

  tau rises from tau_base at k = 0 to 1 at k = K (also MoCo v3 and DINO).
  """
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1),
                      0.0, 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema(teacher, online, momentum: Array | float):
  """teacher <- m * teacher + (1 - m) * online, leaf by leaf, keeping dtypes."""
  return jax.tree.map(
      lambda t, o: (momentum * t + (1.0 - momentum) * o).astype(t.dtype),
      teacher, online)


def init_teacher(model: nnx.Module, parts=TEACHER_PARTS) -> dict:
  """The teacher starts as a copy of the online parts, as plain dicts.

  {'params': {part: ...}, 'rest': {part: ...}}; `rest` is the BatchNorm
  statistics. Copies, so the donated state never holds one buffer twice.
  """
  params, rest = {}, {}
  for part in parts:
    _, p, r = nnx.split(getattr(model, part), nnx.Param, ...)
    params[part] = jax.tree.map(jnp.copy, nnx.to_pure_dict(p))
    rest[part] = jax.tree.map(jnp.copy, nnx.to_pure_dict(r))
  return {"params": params, "rest": rest}


def apply_teacher(model: nnx.Module, teacher: dict, x: Array,
                  parts=TEACHER_PARTS) -> tuple[Array, dict]:
  """Runs the teacher on x; returns (stop-gradient output, updated teacher).

  Each part is the online part's graph merged with the teacher's arrays. It
  runs in train mode (batch statistics, as BYOL/MoCo/DINO do) and its new
  BatchNorm statistics come back in the returned teacher.
  """
  rest = {}
  for part in parts:
    module = nnx.merge(nnx.graphdef(getattr(model, part)),
                       teacher["params"][part], teacher["rest"][part],
                       copy=True)
    x = module(x, train=True)
    rest[part] = nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.Param)))
  return jax.lax.stop_gradient(x), dict(teacher, rest=rest)


def teacher_momentum(step: Array, hp: base.HParams,
                     ctx: base.RunContext) -> Array:
  """`momentum`, raised to 1 over the run by the cosine schedule if asked."""
  if hp.momentum_cosine:
    return cosine_momentum(step, hp.momentum, ctx.total_steps)
  return jnp.asarray(hp.momentum, jnp.float32)


def ema_update_extra(extra: dict, params: nnx.State, step: Array,
                     hp: base.HParams, ctx: base.RunContext) -> dict:
  """update_extra of the EMA methods: the teacher follows the NEW params."""
  online = {part: nnx.to_pure_dict(params[part]) for part in TEACHER_PARTS}
  teacher = extra["teacher"]
  new_params = ema(teacher["params"], online, teacher_momentum(step, hp, ctx))
  return dict(extra, teacher=dict(teacher, params=new_params))


def init_teacher_extra(model: nnx.Module,
                       hp: base.HParams, ctx: base.RunContext) -> dict:
  del hp, ctx
  return {"teacher": init_teacher(model)}


# ---------------------------------------------------------------- models --

class EncoderProjector(nnx.Module):
  """Encoder + projection head; the head is dropped after pretraining."""

  def __init__(self, encoder: nnx.Module, projector: nnx.Module):
    self.encoder = encoder
    self.projector = projector

  def __call__(self, x: Array, *, train: bool) -> Array:
    return self.projector(self.encoder(x, train=train), train=train)


class SiameseNet(nnx.Module):
  """Encoder + projector + predictor: the online branch of BYOL, SimSiam and
  MoCo v3. Returns (projection z, prediction p)."""

  def __init__(self, encoder: nnx.Module, projector: nnx.Module,
               predictor: nnx.Module):
    self.encoder = encoder
    self.projector = projector
    self.predictor = predictor

  def __call__(self, x: Array, *, train: bool) -> tuple[Array, Array]:
    z = self.projector(self.encoder(x, train=train), train=train)
    return z, self.predictor(z, train=train)


class Prototypes(nnx.Module):
  """Bias-free linear layer with L2-normalised weight columns.

  SwAV's prototypes (normalised in the forward pass rather than projected
  after each step: same scores, weight-norm gradient) and DINO's
  weight-normalised last layer with the norm fixed to 1.
  """

  def __init__(self, in_dim: int, num_prototypes: int, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(
        rngs.params(), (in_dim, num_prototypes)))

  def __call__(self, x: Array) -> Array:
    return x.astype(jnp.float32) @ l2_normalize(self.kernel[...].T).T


class PrototypeHead(nnx.Module):
  """MLP -> L2 normalise -> prototypes: DINO's head and SwAV's projector.

  With normalised inputs and prototypes the outputs are cosine scores.
  """

  def __init__(self, mlp: nnx.Module, prototypes: Prototypes):
    self.mlp = mlp
    self.prototypes = prototypes

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    return self.prototypes(l2_normalize(self.mlp(x, train=train)))


def _projector(obj: base.HParams, in_dim: int,
               rngs: nnx.Rngs) -> MLPHead:
  return MLPHead(in_dim, obj.proj_hidden_dim, obj.proj_dim,
                 num_layers=obj.proj_layers, use_bn=obj.proj_bn,
                 last_bn=obj.proj_last_bn, rngs=rngs)


def build_encoder_projector(hp: base.HParams,
                            ctx: base.RunContext,
                            rngs: nnx.Rngs) -> EncoderProjector:
  """SimCLR, MoCo v2, Barlow Twins, VICReg: encoder + MLP projector."""
  encoder = ctx.encoder(rngs)
  projector = _projector(hp, encoder.feature_dim, rngs)
  return EncoderProjector(encoder, projector)


def build_siamese(hp: base.HParams, ctx: base.RunContext,
                  rngs: nnx.Rngs) -> SiameseNet:
  """BYOL, SimSiam, MoCo v3: encoder + projector + predictor."""
  encoder = ctx.encoder(rngs)
  projector = _projector(hp, encoder.feature_dim, rngs)
  predictor = MLPHead(hp.proj_dim, hp.pred_hidden_dim, hp.proj_dim,
                      num_layers=hp.pred_layers,
                      last_bn=hp.pred_last_bn, rngs=rngs)
  return SiameseNet(encoder, projector, predictor)


def build_prototype_net(hp: base.HParams, ctx: base.RunContext,
                        rngs: nnx.Rngs) -> EncoderProjector:
  """DINO, SwAV: encoder + (MLP -> normalise -> `num_prototypes` outputs)."""
  encoder = ctx.encoder(rngs)
  head = PrototypeHead(_projector(hp, encoder.feature_dim, rngs),
                       Prototypes(hp.proj_dim, hp.num_prototypes, rngs=rngs))
  return EncoderProjector(encoder, head)


# ----------------------------------------------------------------- views --

def pair_views(policy: augment.Policy, rng: Array, batch: dict[str, Array],
               out_size: int | None = None) -> tuple[Array, Array]:
  """The positive pair: a view of `batch['image']` and, with an independent
  key, a view of `batch['pair_image']` (the image itself when absent).

  Without a partner this is exactly `views.two_views` (same key split).
  """
  images = batch["image"]
  k1, k2 = jax.random.split(rng)
  return (views.apply(policy, k1, images, out_size=out_size),
          views.apply(policy, k2, batch.get("pair_image", images),
                        out_size=out_size))


def multi_crop(policy: augment.Policy, rng: Array, images: Array, *,
               global_area: tuple[float, float],
               local_area: tuple[float, float], num_local: int,
               local_size: int, partners: Array | None = None
               ) -> tuple[Array, Array | None]:
  """Multi-crop (Caron et al. 2020): 2 global crops at the image size plus
  `num_local` small crops resampled to `local_size`, all in [0, 1].

  Returns ([2, N, H, W, C], [num_local, N, s, s, C] or None). Crop areas
  replace the policy's; its flips and jitter are kept. Global crop 2 comes
  from `partners` when given; local crops always from `images`.
  """
  global_policy = dataclasses.replace(
      policy, crop_min_area=global_area[0], crop_max_area=global_area[1])
  k_global, k_local = jax.random.split(rng)
  pair = {"image": images}
  if partners is not None:
    pair["pair_image"] = partners
  global_views = jnp.stack(pair_views(global_policy, k_global, pair))
  if num_local == 0:
    return global_views, None
  local_policy = dataclasses.replace(
      policy, crop_min_area=local_area[0], crop_max_area=local_area[1])
  tiled = jnp.tile(images, (num_local, 1, 1, 1))  # view-major, per-image keys
  local_views = views.apply(local_policy, k_local, tiled, out_size=local_size)
  return global_views, local_views.reshape(
      (num_local, images.shape[0]) + local_views.shape[1:])


def local_crop_size(encoder: nnx.Module, size: int) -> int:
  """The size local crops are fed at.

  ResNet pools globally, so it takes any size. Our ViT's fixed sin-cos grid
  fits only its own image size: there local crops (still small regions) are
  resampled to that size.
  """
  return size if encoder.patch_size is None else encoder.image_size


def _merge_views(views: Array) -> Array:
  """[V, N, ...] -> [V * N, ...]: one forward, BatchNorm over all V views."""
  return views.reshape((-1,) + views.shape[2:])


def _split_views(x: Array, num_views: int) -> Array:
  return x.reshape((num_views, -1) + x.shape[1:])


def _multi_crop_views(obj: base.HParams, model: nnx.Module,
                      policy: augment.Policy, rng: Array,
                      batch: dict[str, Array]):
  return multi_crop(
      policy, rng, batch["image"], global_area=tuple(obj.global_crop_area),
      local_area=tuple(obj.local_crop_area), num_local=obj.num_local_crops,
      local_size=local_crop_size(model.encoder, obj.local_crop_size),
      partners=batch.get("pair_image"))


def _multi_crop_forward(model: nnx.Module, global_views: Array,
                        local_views: Array | None) -> Array:
  """Student outputs [2 + n, N, K]: one forward per resolution (as DINO and
  SwAV group crops by size), so BatchNorm statistics stay per size."""
  out = _split_views(model(augment.standardize(_merge_views(global_views)),
                           train=True), 2)
  if local_views is None:
    return out
  local = model(augment.standardize(_merge_views(local_views)), train=True)
  return jnp.concatenate([out, _split_views(local, local_views.shape[0])])


# ---------------------------------------------------------------- losses --

def _two_view_batch(policy: augment.Policy, rng: Array,
                    batch: dict[str, Array],
                    out_size: int | None = None) -> Array:
  """Both views standardised and concatenated [2N, ...]: one forward pass."""
  v1, v2 = pair_views(policy, rng, batch, out_size)
  return augment.standardize(jnp.concatenate([v1, v2]))


def make_simclr_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy
  temperature, view_size = hp.temperature, hp.view_size

  def loss_fn(model, batch, rng, extra):
    # One forward over both views: BatchNorm sees the full 2N global batch.
    z1, z2 = jnp.split(model(_two_view_batch(policy, rng, batch, view_size),
                             train=True), 2)
    loss, accuracy = nt_xent(z1, z2, temperature)
    return loss, {"contrastive_acc": accuracy}, extra

  return loss_fn


def init_moco_v2_extra(model: nnx.Module,
                       hp: base.HParams, ctx: base.RunContext) -> dict:
  """Teacher copy + a queue of random unit keys (as MoCo) + its pointer."""
  rng = jax.random.fold_in(jax.random.PRNGKey(ctx.seed), 0x5EED)
  queue = l2_normalize(jax.random.normal(rng, (hp.queue_size, hp.proj_dim)))
  return {"teacher": init_teacher(model), "queue": queue,
          "queue_ptr": jnp.zeros((), jnp.int32)}


def make_moco_v2_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Queries from the online net on view 1, keys from the momentum net on
  view 2 (the paper's asymmetric loss); this batch's keys are enqueued after
  the loss is taken, so a query never sees its own key as a negative."""
  policy = ctx.policy
  temperature = hp.temperature
  if hp.queue_size < ctx.global_batch:
    raise ValueError(
        f"objective.queue_size={hp.queue_size} must be >= "
        f"train.batch_size={ctx.global_batch}")

  def loss_fn(model, batch, rng, extra):
    v1, v2 = pair_views(policy, rng, batch)
    q = model(augment.standardize(v1), train=True)
    k, teacher = apply_teacher(model, extra["teacher"], augment.standardize(v2))
    k = l2_normalize(k.astype(jnp.float32))
    loss, accuracy = infonce_with_queue(q, k, extra["queue"], temperature)
    queue, ptr = enqueue(extra["queue"], extra["queue_ptr"], k)
    extra = dict(extra, teacher=teacher, queue=queue, queue_ptr=ptr)
    return loss, {"contrastive_acc": accuracy}, extra

  return loss_fn


def _siamese_forward(model, extra, policy, rng, batch):
  """(online predictions p1, p2; teacher projections z1, z2; new teacher)."""
  x = _two_view_batch(policy, rng, batch)
  _, p = model(x, train=True)
  z_teacher, teacher = apply_teacher(model, extra["teacher"], x)
  p1, p2 = jnp.split(p, 2)
  z1, z2 = jnp.split(z_teacher, 2)
  return (p1, p2), (z1, z2), teacher


def make_moco_v3_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy
  temperature = hp.temperature

  def loss_fn(model, batch, rng, extra):
    (q1, q2), (k1, k2), teacher = _siamese_forward(
        model, extra, policy, rng, batch)
    loss12, acc12 = moco_v3_loss(q1, k2, temperature)
    loss21, acc21 = moco_v3_loss(q2, k1, temperature)
    metrics = {"contrastive_acc": (acc12 + acc21) / 2}
    return loss12 + loss21, metrics, dict(extra, teacher=teacher)

  return loss_fn


def make_byol_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy

  def loss_fn(model, batch, rng, extra):
    (p1, p2), (z1, z2), teacher = _siamese_forward(
        model, extra, policy, rng, batch)
    loss = byol_loss(p1, z2) + byol_loss(p2, z1)  # symmetric, as the paper
    return loss, {}, dict(extra, teacher=teacher)

  return loss_fn


def make_simsiam_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy

  def loss_fn(model, batch, rng, extra):
    z, p = model(_two_view_batch(policy, rng, batch), train=True)
    z1, z2 = jnp.split(z, 2)
    p1, p2 = jnp.split(p, 2)
    loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
    # Per-dimension std of normalised z; ~1/sqrt(D) healthy, 0 collapsed.
    z_std = jnp.mean(jnp.std(l2_normalize(z1.astype(jnp.float32)), axis=0))
    return loss, {"z_std": z_std}, extra

  return loss_fn


def init_dino_extra(model: nnx.Module,
                    hp: base.HParams, ctx: base.RunContext) -> dict:
  del ctx
  return {"teacher": init_teacher(model),
          "center": jnp.zeros((hp.num_prototypes,), jnp.float32)}


def make_dino_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Student on all crops, teacher on the 2 global crops only."""
  policy = ctx.policy

  def loss_fn(model, batch, rng, extra):
    global_views, local_views = _multi_crop_views(
        hp, model, policy, rng, batch)
    student = _multi_crop_forward(model, global_views, local_views)
    teacher_out, teacher = apply_teacher(
        model, extra["teacher"],
        augment.standardize(_merge_views(global_views)))
    teacher_out = _split_views(teacher_out, 2)
    loss = dino_loss(student, teacher_out, extra["center"],
                     hp.student_temp, hp.teacher_temp)
    center = update_center(extra["center"], teacher_out, hp.center_momentum)
    probs = jax.nn.softmax((teacher_out - extra["center"]) / hp.teacher_temp)
    entropy = -jnp.mean(jnp.sum(probs * jnp.log(probs + 1e-12), axis=-1))
    return (loss, {"teacher_entropy": entropy},
            dict(extra, teacher=teacher, center=center))

  return loss_fn


def make_barlow_twins_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy
  lambd = hp.lambd

  def loss_fn(model, batch, rng, extra):
    z1, z2 = jnp.split(model(_two_view_batch(policy, rng, batch),
                             train=True), 2)
    loss, terms = barlow_twins_loss(z1, z2, lambd)
    return loss, terms, extra

  return loss_fn


def make_vicreg_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy

  def loss_fn(model, batch, rng, extra):
    z1, z2 = jnp.split(model(_two_view_batch(policy, rng, batch),
                             train=True), 2)
    loss, terms = vicreg_loss(z1, z2, sim_weight=hp.sim_weight,
                              var_weight=hp.var_weight,
                              cov_weight=hp.cov_weight, gamma=hp.gamma)
    return loss, terms, extra

  return loss_fn


def make_swav_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Codes from the global crops' own scores (no gradient), per view as the
  reference code; every crop predicts the codes of the other global crops."""
  policy = ctx.policy

  def loss_fn(model, batch, rng, extra):
    global_views, local_views = _multi_crop_views(
        hp, model, policy, rng, batch)
    scores = _multi_crop_forward(model, global_views, local_views)
    codes = jax.vmap(lambda s: sinkhorn(s, hp.sinkhorn_epsilon,
                                        hp.sinkhorn_iterations))(scores[:2])
    loss = swav_loss(scores, codes, hp.temperature)
    used = jnp.mean(jnp.any(jax.nn.one_hot(jnp.argmax(codes, -1),
                                           codes.shape[-1]) > 0, axis=(0, 1)))
    return loss, {"prototypes_used": used}, extra

  return loss_fn


# -------------------------------------------------------------- registry --
# Hyperparameters with their defaults, one dict per method; the small-data
# values the configs/ used (queue, prototypes and heads sized for MedMNIST).

def projector(hidden: int = 512, dim: int = 128, layers: int = 2, *,
              bn: bool = True, last_bn: bool = False) -> dict:
  """The MLP projector's fields (`_projector`)."""
  return dict(proj_hidden_dim=hidden, proj_dim=dim, proj_layers=layers,
              proj_bn=bn, proj_last_bn=last_bn)


def predictor(hidden: int, layers: int = 2, *, last_bn: bool = False) -> dict:
  return dict(pred_hidden_dim=hidden, pred_layers=layers, pred_last_bn=last_bn)


def teacher(momentum: float = 0.99, cosine: bool = True) -> dict:
  """EMA teacher: momentum, raised to 1 by a cosine over the run if asked."""
  return dict(momentum=momentum, momentum_cosine=cosine)


def crops(global_area: tuple, local_area: tuple, num_local: int = 6,
          local_size: int = 12) -> dict:
  """Multi-crop: crop-area ranges, number and side of the local crops."""
  return dict(global_crop_area=global_area, local_crop_area=local_area,
              num_local_crops=num_local, local_crop_size=local_size)


base.register(base.Objective(
    name="simclr", category="contrastive", uses_pairs=True, ranks=(2, 3),
    paper="Chen et al., ICML 2020 (arXiv:2002.05709)",
    # view_size: side of the views (None: the data's); smaller random resized
    # crops cut the cost of volumes, the encoder still evaluates full ones.
    hparams=dict(projector(), temperature=0.1, view_size=None),
    build_model=build_encoder_projector, make_loss=make_simclr_loss))

base.register(base.Objective(
    name="moco_v2", category="contrastive", uses_pairs=True, ranks=(2, 3),
    paper="He et al., CVPR 2020 (arXiv:1911.05722); Chen et al. 2020 "
          "(arXiv:2003.04297)",
    hparams=dict(projector(bn=False), **teacher(cosine=False),
                 temperature=0.2, queue_size=512),
    build_model=build_encoder_projector, make_loss=make_moco_v2_loss,
    init_extra=init_moco_v2_extra, update_extra=ema_update_extra))

base.register(base.Objective(
    name="moco_v3", category="contrastive", uses_pairs=True, ranks=(2, 3),
    paper="Chen, Xie & He, ICCV 2021 (arXiv:2104.02057)",
    hparams=dict(projector(1024, 128, 3, last_bn=True),
                 **predictor(1024, last_bn=True), **teacher(), temperature=1.0),
    build_model=build_siamese, make_loss=make_moco_v3_loss,
    init_extra=init_teacher_extra, update_extra=ema_update_extra))

base.register(base.Objective(
    name="byol", category="contrastive", uses_pairs=True, ranks=(2, 3),
    paper="Grill et al., NeurIPS 2020 (arXiv:2006.07733)",
    hparams=dict(projector(), **predictor(512), **teacher()),
    build_model=build_siamese, make_loss=make_byol_loss,
    init_extra=init_teacher_extra, update_extra=ema_update_extra))

base.register(base.Objective(
    name="simsiam", category="contrastive", uses_pairs=True, ranks=(2, 3),
    paper="Chen & He, CVPR 2021 (arXiv:2011.10566)",
    hparams=dict(projector(512, 512, 3, last_bn=True), **predictor(128)),
    build_model=build_siamese, make_loss=make_simsiam_loss))

base.register(base.Objective(
    name="dino", category="contrastive", uses_pairs=True,
    paper="Caron et al., ICCV 2021 (arXiv:2104.14294)",
    hparams=dict(projector(512, 128, 3, bn=False), **teacher(),
                 **crops((0.4, 1.0), (0.05, 0.4)), num_prototypes=1024,
                 student_temp=0.1, teacher_temp=0.04, center_momentum=0.9),
    build_model=build_prototype_net, make_loss=make_dino_loss,
    init_extra=init_dino_extra, update_extra=ema_update_extra))

base.register(base.Objective(
    name="barlow_twins", category="contrastive", uses_pairs=True, ranks=(2, 3),
    paper="Zbontar et al., ICML 2021 (arXiv:2103.03230)",
    hparams=dict(projector(1024, 1024, 3), lambd=0.0051),
    build_model=build_encoder_projector, make_loss=make_barlow_twins_loss))

base.register(base.Objective(
    name="vicreg", category="contrastive", uses_pairs=True, ranks=(2, 3),
    paper="Bardes, Ponce & LeCun, ICLR 2022 (arXiv:2105.04906)",
    hparams=dict(projector(1024, 1024, 3), sim_weight=25.0, var_weight=25.0,
                 cov_weight=1.0, gamma=1.0),
    build_model=build_encoder_projector, make_loss=make_vicreg_loss))

base.register(base.Objective(
    name="swav", category="contrastive", uses_pairs=True,
    paper="Caron et al., NeurIPS 2020 (arXiv:2006.09882)",
    hparams=dict(projector(), **crops((0.14, 1.0), (0.05, 0.14)),
                 num_prototypes=100, temperature=0.1, sinkhorn_epsilon=0.05,
                 sinkhorn_iterations=3),
    build_model=build_prototype_net, make_loss=make_swav_loss))
