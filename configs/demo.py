"""The demo: SimCLR on BreastMNIST, then linear probe, kNN and end-to-end
fine-tuning at 1% / 10% / 100% of the labels vs the same network trained
from scratch with the same budget.

Run:  make demo        (= python run.py --config=configs/demo.py --workdir=workdirs/demo)
      python run.py --config=configs/demo.py:retinamnist --workdir=workdirs/demo_retina
Budget: ~3 min and <= 3 GiB on a 2-core CPU (2 min 32 s - 2 min 47 s
wall, 277-305 s of CPU on an AMD EPYC with the compilation cache warm;
stage 2 runs two cells at once, one per core), hence a narrow ResNet-18
(width 1/4: 16..128 channels), a short pretraining and 40 epochs of stage 2
with a class-balanced loss (without the class weights the end-to-end rows
at 1 % and 10 % predicted only the majority class).
Measured (seed 0, AMD EPYC, BreastMNIST test, 100 % labels, ACC at the
val_prior cut): SSL + end-to-end fine-tune AUROC 0.922 / ACC 0.853, from
scratch 0.862 / 0.833, linear probe 0.863 / 0.872; every fraction and
three seeds (--config.seed=S --config.finetune.seeds="(S,)") in
docs/results.md "Quick runs".
Pretrained 10x longer (--config.train.steps=1500
--config.optim.warmup_steps=150; docs/results.md "Pretraining ten times
longer"), end to end minus scratch, paired: +0.041 [0.020, 0.063] at 1 %
(twenty stage-2 seeds), +0.053 [0.027, 0.078] at 10 % (ten), +0.020
[-0.013, 0.053] at 100 % (five; 0.905 +- 0.020 AUROC). The best 10 %
recipe on such an encoder: a FixMatch run teaching a student trained
with mixup, 0.839 +- 0.030 over twenty seeds, +0.031 [0.019, 0.044] over
end to end:
  --config.job=finetune --config.finetune.pretrained=PRETRAIN_WORKDIR
  --config.finetune.protocols="('distill',)"
  --config.finetune.distill_teacher=fixmatch --config.finetune.mixup_alpha=0.2
Three pretrainings each teaching their own such student, the three
students teaching one (--config.finetune.distill_teacher_pretrained=
"('W2','W3')" --config.finetune.distill_rounds=2): 0.842 +- 0.025. At 1 %,
FixMatch with its labelled rows repeated to FixMatch's share
(--config.finetune.protocols="('fixmatch',)"
--config.finetune.fixmatch_labelled_share=0.125): 0.694 +- 0.118, +0.074
[0.029, 0.120] over end to end. Every other lever, with its flag and
paired difference: docs/results.md "What was tried for 10 % labels".
MedMNIST data: Yang et al., Scientific Data 2023 (CC BY 4.0).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain_finetune"
  c.data.name = arg or "breastmnist"
  # stage_strides: each stage's first stride; (1, 1, 2, 2) keeps 28 px
  # through stage 2 (same params, ~2x the CPU): at 10 % under the best
  # recipe -0.002 [-0.013, 0.008] over twenty seeds (docs/results.md).
  c.model = dict(name="resnet18", width_multiplier=0.25, conv_impl="auto",
                 norm_impl="auto", stage_sizes=(2, 2, 2, 2),
                 stage_strides=(1, 2, 2, 2))
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
