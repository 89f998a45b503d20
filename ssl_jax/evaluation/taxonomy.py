"""Names the benchmark's tables and plots share: the review's strategies
(each Objective's `.category`) and what each stage-2 protocol trains."""

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
# What each protocol trains: plot (c) contrasts end-to-end with frozen.
PROTOCOL_KIND = {
    "finetune": "end-to-end", "scratch": "end-to-end",
    "last_k": "partial fine-tune", "linear": "frozen", "logreg": "frozen",
    "knn": "frozen", "early_layer": "frozen", "combine": "frozen",
}
# (method, protocol) of the from-scratch baseline: no pretraining, trained
# end to end with the same network, steps and optimizer.
SCRATCH = ("none", "finetune")
