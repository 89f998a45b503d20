"""The review's comparison, runnable: pretraining methods x stage-2 protocols
x label fractions x seeds on one dataset, every method with the same budget.

Run:  python run.py --config=configs/benchmark.py:dataset=breastmnist --workdir=workdirs/bench
      python run.py --config=configs/benchmark.py:dataset=retinamnist,budget=accelerator --workdir=...
      python run.py --config=configs/benchmark.py:dataset=breastmnist,backbone=vit --workdir=...
      ... --config.benchmark.methods="('none','simclr','byol')" --config.finetune.seeds="(0,)"
Arg: comma-separated key=value pairs: `dataset` (a MedMNIST name, default
breastmnist), `budget` (`cpu`, the default, or `accelerator`) and
`backbone` (`resnet`, the default, or `vit`: needed by mae / simmim).

Methods are config names: `configs/<method>.py`'s `get_config(dataset)` is
loaded and `benchmark.budget` is applied on top (its `model` replaces the
method's backbone, so every method trains the same network; its `train` /
`optim` fields override), so all methods get the same steps, batch and
width. `none` pretrains nothing: its frozen protocols probe a random-init
encoder, its `finetune` cells are the from-scratch baseline. `supervised`
pretrains on the target's training labels (all of them) unless
`benchmark.method_args` names another source (e.g. "supervised=chestmnist",
same channels and size): read it as a reference, not a label-efficient
result. `combine` concatenates the frozen features of the `benchmark.combine`
methods (same seed) and fits the linear probe on them. Stage 2 is one
recipe for every method unless `benchmark.finetune_by_method` gives a
method its own fields, e.g.
--config.benchmark.finetune_by_method="('mae.layer_decay=0.75',)" (MAE's
layer-wise learning rates; report.md names every such field).

Outputs in the workdir: report.md, results.csv, relative_to_scratch.png,
strategies.png, protocols.png, label_efficiency.png, one JSON per finished
cell in cells/<method>/, pretraining runs in pretrain/<method>/seed<k>/.
Rerunning the command resumes: finished cells and pretraining are skipped.

Budget `cpu` (the default): ResNet-18 at width 1/8 (8..64 channels), 28 px,
pretraining 150 steps x 128 images, end-to-end stage 2 for 40 epochs of
the labelled subset (batch 32, at least 100 steps), validated every epoch,
class-balanced loss; 3 methods + none, 5 protocols + combine, 3 label
fractions, 3 seeds: 189 cells and 9 pretraining runs. Measured on
BreastMNIST on the 2-core CPU while three other jobs shared it: 43 min
wall (863 s pretraining + 1,422 s stage 2, summed), peak RSS 2.6 GB.
100% labels, end-to-end test AUROC over 3 seeds: none (scratch) 0.861 +-
0.010, rotation 0.881 +- 0.011, SimCLR 0.891 +- 0.014, supervised 0.879 +-
0.019 (published ResNet-18 (28): 0.901); SimCLR - scratch, paired by seed:
+0.030 [0.013, 0.046] at 100 %, +0.071 [0.014, 0.128] at 10 %. Full
report: docs/benchmark_breastmnist/report.md. Re-run on 2026-12-01 with
selection from the stage-2 warmup's end (end to end and linear only):
SimCLR - scratch +0.056 [0.014, 0.098] at 10 %, +0.034 [-0.028, 0.095]
at 100 %; at 1 % most end-to-end cells predicted only the majority class
at the 0.5 cut-off (9 of 12). Cut at finetune.decision_threshold=
'val_prior' (the default since; same cells, AUROC identical): none do,
end-to-end balanced ACC +0.058 [0.006, 0.109] at 1 %, +0.056 [0.005,
0.107] at 10 %, +0.014 [-0.002, 0.030] at 100 % (docs/benchmark.md).
MedMNIST data: Yang et al., Scientific Data 2023 (CC BY 4.0).
"""

from ml_collections.config_dict import placeholder

from configs import base

ARG_KEYS = ("dataset", "budget", "backbone")

# Per budget: the backbone of every method (by `backbone` arg) and the
# pretraining schedule shared by all of them. The frozen-feature monitor is
# off (the sweep scores every method in stage 2 anyway); turn it on with
# --config.benchmark.budget.train.monitor_every=N.
BUDGETS = {
    "cpu": dict(
        models=dict(
            resnet=dict(name="resnet18", width_multiplier=0.125,
                        stage_sizes=(2, 2, 2, 2)),
            vit=dict(name="vit_tiny", patch_size=4, depth=4, hidden_dim=96,
                     num_heads=3)),
        train=dict(steps=150, batch_size=128, log_every=25, checkpoint_every=50,
                   monitor_every=0),
        optim=dict(warmup_steps=15)),
    "accelerator": dict(
        models=dict(
            resnet=dict(name="resnet18", width_multiplier=1.0,
                        stage_sizes=(2, 2, 2, 2)),
            vit=dict(name="vit_tiny", patch_size=4, depth=12, hidden_dim=192,
                     num_heads=3)),
        train=dict(steps=2000, batch_size=256, log_every=50,
                   checkpoint_every=500, monitor_every=0),
        optim=dict(warmup_steps=100)),
}
# Per backbone: the methods it can pretrain (MAE/SimMIM need a ViT), the
# pair whose features `combine` joins, and the earlier layer to probe.
BACKBONES = {
    "resnet": dict(methods=("none", "simclr", "rotation", "supervised"),
                   combine=("simclr", "rotation"), early_layer="stage3"),
    "vit": dict(methods=("none", "mae", "simclr", "supervised"),
                combine=("mae", "simclr"), early_layer="block3"),
}


def _choose(table: dict, key: str, what: str) -> dict:
  if key not in table:
    raise ValueError(f"{what} {key!r} in the config arg; allowed: "
                     f"{', '.join(sorted(table))}")
  return table[key]


def parse_arg(arg: str) -> dict[str, str]:
  """'dataset=breastmnist,budget=cpu' -> dict; a bare word is the dataset."""
  out = {"dataset": "breastmnist", "budget": "cpu", "backbone": "resnet"}
  for part in filter(None, (arg or "").split(",")):
    key, sep, value = part.partition("=")
    if not sep:
      key, value = "dataset", key
    if key not in ARG_KEYS:
      raise ValueError(f"config arg key {key!r}; allowed: {', '.join(ARG_KEYS)}")
    out[key] = value
  return out


def get_config(arg: str = "dataset=breastmnist"):
  args = parse_arg(arg)
  budget = _choose(BUDGETS, args["budget"], "budget")
  backbone = _choose(BACKBONES, args["backbone"], "backbone")
  c = base.get_config()
  c.job = "benchmark"
  c.data.name = args["dataset"]
  c.benchmark = dict(
      # Folder of the method configs (<method>.py); '' = this checkout's
      # configs/. A fork points it at its own.
      configs_dir="",
      # Config names under configs/; `none` = no pretraining.
      methods=backbone["methods"],
      # Methods whose frozen features the `combine` protocol concatenates.
      combine=backbone["combine"],
      # "method=arg": get_config(arg) instead of get_config(dataset).
      method_args=(),
      # "method.field=value": that method's stage 2 sets finetune.<field>
      # (e.g. "mae.layer_decay=0.75", MAE's own recipe); every other
      # method, and `none`, keep the shared one. Empty = one stage 2 for all.
      finetune_by_method=(),
      # Applied to every method: `model` replaces its backbone, `train` and
      # `optim` fields override its own.
      budget=dict(model=budget["models"][args["backbone"]],
                  train=budget["train"], optim=budget["optim"],
                  # Pretraining views for every method; None keeps each
                  # method's own policy (configs/<method>.py).
                  augment=dict(policy=placeholder(str))),
      progress=True,  # the sweep's cells done / total / ETA bar
  )
  # Informational: the job builds every network, `none` included, from
  # benchmark.budget.model (override that one).
  c.model = c.benchmark.budget.model.to_dict()
  c.train.progress = False  # per-run bars off: the sweep bar is the display
  ft = c.finetune
  ft.protocols = ("finetune", "linear", "logreg", "knn", "early_layer",
                  "combine")
  ft.fractions = base.DEFAULT_FRACTIONS
  ft.seeds = (0, 1, 2)
  # End-to-end stage 2 as the demo runs it. The earlier 100 fixed steps
  # (6 epochs at 100 %) left every end-to-end cell at the majority class.
  base.epoch_stage2(ft, epochs=40)
  # finetune.head_fit='linear_probe' (LP-FT) is an option, not the default:
  # measured here it moved no method's AUROC beyond seed noise, up for
  # SimCLR, down for rotation (docs/benchmark.md).
  ft.batch_size = 32
  ft.log_every = 20
  ft.eval_batch_size = 256
  ft.bootstrap_samples = 200  # test-set resamples for the AUROC CI
  ft.ci_level = 0.95
  ft.logreg_l2s = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
  ft.logreg_max_iters = 500
  ft.logreg_tol = 1e-5
  ft.logreg_memory = 10
  ft.last_k = 1  # `last_k` protocol: ResNet stages (of 4) / ViT blocks
  # `early_layer` protocol: 'stage1'..'stage4' (ResNet), 'blockN' (ViT).
  ft.early_layer = backbone["early_layer"]
  return c
