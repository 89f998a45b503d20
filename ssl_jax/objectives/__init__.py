"""Objectives by name: `objectives.get('simclr')`. See `base.py` for the contract.

Files follow the review's categories (contrastive, self-prediction, ...);
importing this package registers every objective.
"""
from ssl_jax.objectives import combined, contrastive, generative, innate, self_prediction, supervised  # noqa: F401  (registers)
from ssl_jax.objectives import volumetric  # noqa: F401  (registers simclr_3d, mae_3d)
from ssl_jax.objectives.base import OBJECTIVES, Objective

get = OBJECTIVES.get
names = OBJECTIVES.names

__all__ = ["Objective", "OBJECTIVES", "get", "names"]
