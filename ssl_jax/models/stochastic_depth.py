"""Stochastic depth (Huang et al., ECCV 2016), the fine-tuning regulariser
of MAE and DeiT recipes, shared by the ResNet and the ViT.

In training, each sample skips a residual branch with probability `rate`
(the kept branches scaled by 1 / (1 - rate), so evaluation needs no
change). Rates rise linearly with depth, 0 at the first block to the
configured rate at the last, as timm and the MAE fine-tune do.

Pure-functional: the randomness is an explicit key handed down by the
training call (`drop_key`), never state held in the model, so weights,
checkpoints and exports look the same with or without it. Stage 2 sets
the rate (`finetune.drop_path`) and its losses pass the key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def check_rate(rate: float, field: str = "model.drop_path_rate") -> float:
  rate = float(rate)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"{field}={rate}: expected a probability in [0, 1) "
                     "(0 = off; MAE fine-tunes ViT-B with 0.1)")
  return rate


def depth_rates(rate: float, blocks: int) -> list[float]:
  """Each block's drop rate: linear from 0 (first) to `rate` (last)."""
  return [float(r) for r in np.linspace(0.0, rate, blocks)] if blocks else []


def block_keys(rate: float, drop_key: Array | None, train: bool,
               blocks: int) -> list[Array | None]:
  """One key per block for a training call of an encoder with `rate` > 0;
  Nones (nothing dropped) in evaluation or at rate 0. A training call
  without a key is refused: dropping nothing would silently train a
  different network than the config asks for."""
  if not train or rate == 0.0:
    return [None] * blocks
  if drop_key is None:
    raise ValueError(
        f"model.drop_path_rate={rate} drops residual branches in training, "
        "and this training call passed no drop_key: stage 2's losses pass "
        "one (set it with finetune.drop_path); pretraining objectives do not")
  return list(jax.random.split(drop_key, blocks))


def drop_path(branch: Array, rate: float, key: Array | None) -> Array:
  """`branch` [B, ...] with each sample's branch zeroed with probability
  `rate` and the rest scaled by 1 / (1 - rate); unchanged without a key."""
  if key is None or rate == 0.0:
    return branch
  keep = 1.0 - rate
  shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
  kept = jax.random.bernoulli(key, keep, shape)
  return jnp.where(kept, branch / jnp.asarray(keep, branch.dtype),
                   jnp.zeros((), branch.dtype))
