"""Objectives by name: `objectives.get('simclr')`. See `base.py` for the contract.

Files follow the review's categories (contrastive, self-prediction, ...);
importing this package registers every objective. Images and volumes share
one implementation per method (views and encoders say what the rank is):
`simclr_3d` and `mae_3d` are configs, not objectives.
"""
from ssl_jax.objectives import adversarial, combined, contrastive, generative, innate, longitudinal, multimodal, self_prediction, supervised  # noqa: F401  (registers)
from ssl_jax.objectives.base import OBJECTIVES, Bound, Objective, RunContext, bind

get = OBJECTIVES.get
names = OBJECTIVES.names

__all__ = ["Bound", "Objective", "OBJECTIVES", "RunContext", "bind", "get",
           "names"]
