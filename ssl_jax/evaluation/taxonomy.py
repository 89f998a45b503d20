"""Names the benchmark's tables and plots share: the review's strategies
(each Objective's `.category`) and the from-scratch baseline. What each
stage-2 protocol trains is said where it is registered
(`protocols.register(kind=...)`; `protocols.kinds()`)."""

# The review's four strategies, their combination, supervised pretraining,
# and `none` (random init / from scratch), in the order reports show them.
CATEGORY_ORDER = ("none", "innate", "generative", "contrastive",
                  "self_prediction", "combined", "supervised")
CATEGORY_LABELS = {
    "none": "none (random init / from scratch)",
    "innate": "innate relationship", "generative": "generative",
    "contrastive": "contrastive", "self_prediction": "self-prediction",
    "combined": "combined", "supervised": "supervised pretraining",
}
# (method, protocol) of the from-scratch baseline: no pretraining, trained
# end to end with the same network, steps and optimizer.
SCRATCH = ("none", "finetune")
