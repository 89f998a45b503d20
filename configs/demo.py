"""The demo: SimCLR on BreastMNIST, then linear probe, kNN and end-to-end
fine-tuning at 1% / 10% / 100% of the labels vs the same network trained
from scratch with the same budget.

Run:  make demo        (= python run.py --config=configs/demo.py --workdir=workdirs/demo)
      python run.py --config=configs/demo.py:retinamnist --workdir=workdirs/demo_retina
Budget: ~3 min and ≤ 3 GiB on a 2-core CPU (2 min 32 s - 2 min 47 s
wall, 277-305 s of CPU on an AMD EPYC with the compilation cache warm;
stage 2 runs two cells at once, one per core), hence a narrow ResNet-18
(width 1/4: 16..128 channels), a short pretraining and 40 epochs of stage 2
with a class-balanced loss. Measured (seed 0, AMD EPYC, BreastMNIST test,
100 % labels, ACC at the val_prior cut): SSL + end-to-end fine-tune AUROC
0.922 / ACC 0.853, from scratch 0.862 / 0.833, linear probe 0.863 / 0.872;
every fraction and the mean +- sd
over 3 seeds (--config.seed=S --config.finetune.seeds=S) are in
docs/results.md "Quick runs".
Without the class weights the end-to-end rows at 1 % and 10 % predicted
only the majority class; so did the 1 % row while selection could keep a
step inside the stage-2 warmup (finetune.select_from).
Pretrained 10x longer (--config.train.steps=1500, docs/results.md
"Pretraining ten times longer", 5 stage-2 seeds): the frozen features gain
(100 % labels: kNN 0.893, linear probe 0.895 AUROC), end to end barely
(0.905 +- 0.020); end to end minus scratch, paired: +0.040 [-0.042, 0.122] at 1 %, +0.063
[0.005, 0.121] at 10 %, +0.020 [-0.013, 0.053] at 100 %. Ten stage-2
seeds at 10 % (cut at val_prior): +0.053 [0.027, 0.078] (0.823 +-
0.036); twenty at 1 %: +0.041 [0.020, 0.063] (0.656 +- 0.098), and
--config.finetune.head_fit=linear_probe (LP-FT) +0.068 [0.028, 0.107]
(0.682 +- 0.084 AUROC, balanced ACC 0.630). Over three pretrainings
(--config.seed=0, 1, 2) at 10 %: 0.817 +- 0.008, +0.047 [0.026, 0.067]
over scratch; their end-to-end predictions averaged (python -m
ssl_jax.jobs.ensemble) 0.825 +- 0.032, against three scratch inits
averaged (finetune.training_seed_offset) 0.778 +- 0.026. Each end-to-end
classifier self-distilled on the unlabelled train images
(--config.finetune.protocols="('distill',)", SimCLRv2; ten stage-2 seeds):
0.829 +- 0.028 at 10 % and 0.640 +- 0.109 at 1 %, +0.008 [-0.006, 0.022]
and +0.023 [0.005, 0.041] over the fine-tuned teacher, paired; two rounds
(--config.finetune.distill_rounds=2) 0.835 +- 0.018 at 10 %.
FixMatch on the unlabelled train images
(--config.finetune.protocols="('finetune','fixmatch')", ten stage-2 seeds,
another pretraining by the same recipe, whose end to end reads 0.813 +-
0.031): 0.832 +- 0.022 at 10 %, +0.019 [0.006, 0.033] over end to end,
paired; 0.661 +- 0.101 at 1 %, +0.042 [-0.010, 0.093]. On that encoder
at 10 %, end to end with mixup (--config.finetune.mixup_alpha=0.2) reads
0.819 +- 0.042 over twenty seeds, +0.011 [-0.002, 0.024]; the FixMatch
run as teacher of a student trained with mixup
(--config.finetune.protocols="('distill',)"
--config.finetune.distill_teacher=fixmatch
--config.finetune.mixup_alpha=0.2) 0.839 +- 0.030 over twenty seeds,
+0.015 [0.005, 0.026] over its teacher and +0.031 [0.019, 0.044] over end
to end (on a third pretraining 0.834 +- 0.028 over twenty; there, on
ten, three FixMatch teachers averaged,
--config.finetune.distill_teachers=3, 0.841 +- 0.031, +0.001 [-0.014,
0.016] over one teacher's student; FixMatch teachers from three
pretrainings averaged into one student,
--config.finetune.distill_teacher_pretrained="('W2','W3')", 0.838 +-
0.026 over twenty, +0.003 [-0.006, 0.011]; with
--config.finetune.distill_rounds=2 each pretraining's teacher teaches
its own student and the three students teach one, 0.842 +- 0.025 over
twenty, +0.007 [-0.001, 0.015]; the teacher run on each student view,
--config.finetune.distill_targets=function_matching, 0.831 +- 0.025 over
twenty, -0.004 [-0.013, 0.004] against fixed targets, the same at 120
epochs, --config.finetune.distill_epochs=120); at 1 %,
FixMatch with its labelled rows repeated to FixMatch's share
(--config.finetune.fixmatch_labelled_share=0.125) 0.694 +- 0.118, +0.074
[0.029, 0.120] over end to end. The other stage-2 levers measured there (a FixMatch
teacher for distillation, FixMatch's strong view, FreeMatch's bars, LP-FT,
80 epochs, ReMixMatch's alignment, a VICReg encoder and ensembles,
layer-wise learning rates, test-time flips, label smoothing), each with
its flag and paired difference, are in docs/results.md "Pretraining ten
times longer" (its distillation, FixMatch, layer-wise and mixup bullets).
MedMNIST data: Yang et al., Scientific Data 2023 (CC BY 4.0).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain_finetune"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=0.25, conv_impl="auto",
                 norm_impl="auto", stage_sizes=(2, 2, 2, 2))
  # τ 0.1 or 0.5 at 10x: the same 10 % stage 2, ±0.003 (docs/results.md).
  c.objective = dict(name="simclr", temperature=0.2, proj_hidden_dim=256,
                     proj_dim=64, proj_layers=2)
  c.train.steps = 150
  c.train.batch_size = 128
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.optim = base.optim_config("adamw", 2e-3, weight_decay=1e-4, warmup_steps=15)
  # Stage 2 in epochs (at least finetune.min_steps, 100, for the 1 % and
  # 10 % subsets). 120 fixed steps (14 epochs at 100 %) left end-to-end
  # classifiers at the class prior. The loss weights matter too: 73 % of
  # BreastMNIST is benign or normal, and unweighted end-to-end classifiers
  # at 1 % / 10 % of the labels predicted only that class (balanced ACC 0.50).
  base.epoch_stage2(c.finetune, epochs=40)
  c.finetune.batch_size = 64
  c.finetune.log_every = 20
  return c
