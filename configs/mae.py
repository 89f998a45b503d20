"""MAE (He et al. 2022) pretraining of a ViT on MedMNIST.

Run:  python run.py --config=configs/mae.py --workdir=workdirs/mae
      python run.py --config=configs/mae.py:retinamnist --workdir=...
ViT-Tiny with 4-pixel patches at 28 px (49 patches), 75% masking, per-patch
normalised pixel loss, AdamW (lr 1.5e-4 x batch/256, wd 0.05, betas 0.9/0.95)
as in the paper. Mild crops only: masking already removes most of the image.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ViT-Ti/4 (4 blocks, 96 wide), 150 steps x 128), 100% labels, test AUROC over
3 seeds: linear probe 0.784 +- 0.018, end-to-end 0.756 +- 0.017 (from scratch:
0.779 +- 0.008; stage 2: 40 epochs, balanced loss, lr 1e-3 (1e-4 gave the
same within a seed's noise)); 165 images/s on the shared 2-core CPU. At 150
steps MAE's features are no better than the random-init ViT's.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,backbone=vit,
methods ('none', 'mae')).
Ten times that pretraining (1500 steps, docs/results.md "Ten times
longer in the benchmark", 3 seeds): linear probe 0.825 +- 0.016 at 100 %
(above the random-init ViT's 0.790 on every seed), 0.753 at 10 %
(+0.100 [0.003, 0.196] over scratch end to end, paired); end to end 0.772 at 100 %, level
with scratch (0.776), 0.735 at 10 %: fine-tuning erodes what the frozen
features rank. MAE's own layer-wise learning rates repair that
(finetune.layer_decay=0.75, this config's stage 2; docs/results.md, same
section): on the seed-0 encoder at 10 %, 20 stage-2 seeds, end to end
0.734 +- 0.038 against one rate's 0.710 +- 0.053, +0.024 [0.009, 0.040]
paired, above its linear probe (0.724) and +0.054 [0.039, 0.069] over
scratch; at 100 % (5 seeds) 0.787 against 0.768, +0.020 [-0.022, 0.061].
Reproduce: job=finetune with configs/benchmark.py:dataset=breastmnist,
backbone=vit --config.finetune.pretrained=<sweep>/pretrain/mae/seed0
--config.finetune.layer_decay=0.75 (the benchmark's shared stage 2
keeps one rate for every method unless
--config.benchmark.finetune_by_method="('mae.layer_decay=0.75',)").
The rest of MAE's recipe, mixup 0.8 and label smoothing 0.1
(finetune.mixup_alpha, finetune.label_smoothing), adds nothing on top:
0.728 +- 0.033 over the same 20 seeds, -0.006 [-0.018, 0.006]; so this
config leaves both off.
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="vit_tiny", patch_size=4)
  c.objective = dict(name="mae", mask_ratio=0.75, norm_pix_loss=True,
                     decoder_dim=128, decoder_depth=2, decoder_heads=4)
  c.augment = base.augment_config("medical_safe")
  c.train.steps = 2000
  c.train.batch_size = 256
  # Frozen-feature kNN val AUROC of the online encoder 20 times over the run
  # (every ~47 BreastMNIST epochs): the curve in monitor.png shows whether
  # 2000 steps reached the plateau.
  c.train.monitor_every = 100
  c.optim = base.optim_config("adamw", 1.5e-4, weight_decay=0.05,
                              scale_by_batch=True, b1=0.9, b2=0.95)
  # Stage 2 as MAE fine-tunes: layer-wise learning rates, each block at 0.75
  # times the rate of the one above (measured gain in the docstring).
  c.finetune.layer_decay = 0.75
  return c
