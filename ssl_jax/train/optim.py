"""Optimizers and learning-rate schedules by name; every number in config.

LARS (You et al. 2017) is the large-batch SimCLR optimizer; AdamW the ViT/MAE
default (with weight_decay 0 it is Adam). Weight decay (and LARS trust
ratio) skip biases and norm scales, as in SimCLR and MAE.

Schedules (`optim.schedule`): `cosine` (linear warmup, then cosine to
`final_lr_fraction` of the peak; the SSL papers' schedule) and `step`
(linear warmup, then the peak multiplied by `decay_factor` at each fraction
of the run in `decay_at`: MedMNIST v2's recipe is decay_at=(0.5, 0.75),
decay_factor=0.1 over 100 epochs). Fractions, not step numbers, so one
recipe serves every run length and label fraction.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax.registry import Registry

Schedule = Callable[[int], float]
OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry("optimizer")
# (config, peak lr, warmup steps, total steps) -> schedule
SCHEDULES: Registry[Callable[..., Schedule]] = Registry("learning-rate schedule")


def decay_mask(params):
  """True for matrices/kernels, False for biases and norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


@OPTIMIZERS.register("adamw")
def _adamw(schedule: Schedule, cfg: ml_collections.ConfigDict):
  return optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                     weight_decay=cfg.weight_decay, mask=decay_mask)


@OPTIMIZERS.register("lars")
def _lars(schedule: Schedule, cfg: ml_collections.ConfigDict):
  return optax.lars(schedule, weight_decay=cfg.weight_decay,
                    weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask,
                    momentum=cfg.get("momentum", 0.9))


@OPTIMIZERS.register("sgd")
def _sgd(schedule: Schedule, cfg: ml_collections.ConfigDict):
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=cfg.get("momentum", 0.9), nesterov=True))


def check(cfg: ml_collections.ConfigDict, total_steps: int,
          field: str = "optim", steps_field: str = "train.steps") -> None:
  """Refuses numbers that train wrongly without failing (a negative lr is
  gradient ascent), naming the field: lr > 0, weight_decay >= 0,
  0 <= warmup_steps <= steps, final_lr_fraction and betas/momentum in
  [0, 1), grad_clip_norm >= 0, sam_rho >= 0."""
  def fail(key: str, want: str) -> None:
    raise ValueError(f"config.{field}.{key}={cfg[key]!r}; expected {want}")

  if not cfg.lr > 0:
    fail("lr", "> 0 (the peak learning rate; a negative one ascends the loss)")
  if cfg.get("weight_decay", 0.0) < 0:
    fail("weight_decay", ">= 0")
  warmup = cfg.get("warmup_steps", 0)
  if warmup < 0:
    fail("warmup_steps", ">= 0")
  if warmup > total_steps:
    fail("warmup_steps", f"<= config.{steps_field}={total_steps} (warmup "
         f"longer than the run never reaches the peak lr); set "
         f"--config.{field}.warmup_steps={total_steps} or less")
  if not 0.0 <= cfg.get("final_lr_fraction", 0.0) <= 1.0:
    fail("final_lr_fraction", "in [0, 1]")
  if cfg.get("grad_clip_norm", 0.0) < 0:
    fail("grad_clip_norm", ">= 0 (0 = no clipping)")
  if cfg.get("sam_rho", 0.0) < 0:
    fail("sam_rho", ">= 0 (0 = plain gradients; > 0 = sharpness-aware radius)")
  for key in ("b1", "b2", "momentum"):
    if key in cfg and cfg[key] is not None and not 0.0 <= cfg[key] < 1.0:
      fail(key, "in [0, 1)")
  if cfg.get("schedule", "cosine") not in SCHEDULES:
    fail("schedule", f"one of {', '.join(SCHEDULES.names())}")
  if cfg.get("schedule", "cosine") == "step":
    decay_at = tuple(cfg.get("decay_at", ()))
    if not decay_at or list(decay_at) != sorted(decay_at) or not all(
        0.0 < f < 1.0 for f in decay_at):
      fail("decay_at", "increasing fractions of the run in (0, 1), e.g. "
           "(0.5, 0.75)")
    if not 0.0 < cfg.get("decay_factor", 0.1) <= 1.0:
      fail("decay_factor", "in (0, 1]")


@SCHEDULES.register("cosine")
def _cosine(cfg: ml_collections.ConfigDict, peak: float, warmup: int,
            total_steps: int) -> Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=peak * cfg.get("final_lr_fraction", 0.0))


@SCHEDULES.register("step")
def _step(cfg: ml_collections.ConfigDict, peak: float, warmup: int,
          total_steps: int) -> Schedule:
  """MultiStepLR: x decay_factor from each boundary step on (counted from
  the run's start, after any warmup)."""
  factor = cfg.get("decay_factor", 0.1)
  boundaries = jnp.asarray([max(int(round(f * total_steps)), warmup)
                            for f in cfg.decay_at])

  def schedule(count):
    decays = jnp.sum(count >= boundaries)
    value = peak * factor ** decays
    if warmup:
      value = jnp.where(count < warmup, peak * count / warmup, value)
    return value

  return schedule


def make_schedule(cfg: ml_collections.ConfigDict, batch_size: int,
                  total_steps: int) -> Schedule:
  """`cfg.schedule` (default cosine) from its peak lr, scaled by batch/256
  when asked; warmup is capped below the run length."""
  peak = cfg.lr * (batch_size / 256 if cfg.get("scale_by_batch", False) else 1.0)
  return SCHEDULES.get(cfg.get("schedule", "cosine"))(
      cfg, peak, warmup_length(cfg, total_steps), total_steps)


def warmup_length(cfg: ml_collections.ConfigDict, total_steps: int) -> int:
  """Steps of linear warmup a run of `total_steps` gets: `warmup_steps`,
  capped below the run length so the peak lr is reached."""
  return min(cfg.get("warmup_steps", 0), max(total_steps - 1, 0))


def make_optimizer(cfg: ml_collections.ConfigDict, batch_size: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
  schedule = make_schedule(cfg, batch_size, total_steps)
  tx = OPTIMIZERS.get(cfg.name)(schedule, cfg)
  if cfg.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx, schedule
