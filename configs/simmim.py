"""SimMIM (Xie et al. 2022) pretraining of a ViT on MedMNIST.

Run:  python run.py --config=configs/simmim.py --workdir=workdirs/simmim
      python run.py --config=configs/simmim.py:retinamnist --workdir=...
ViT-Tiny with 4-pixel patches at 28 px (49 patches). The encoder sees all
patches, 60% of them replaced by a learned mask token (the paper's ViT
ratio); one linear layer predicts raw standardised pixels; L1 on masked
patches. The paper masks 32 px blocks of 16 px patches; at 28 px the 7x7
grid has no useful block size, so one mask unit is one patch. AdamW (lr
1e-4 x batch/256, wd 0.05, grad clip 5), crops keeping >= 67% of the area,
as in the paper. For a CPU try-out add --config.model.depth=2
--config.train.batch_size=64 --config.train.steps=200.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ViT-Ti/4 (4 blocks, 96 wide), 150 steps x 128), 100% labels, test AUROC over
3 seeds: linear probe 0.757 +- 0.020, end-to-end 0.739 +- 0.048 (from scratch:
0.779 +- 0.008; stage 2: 40 epochs, balanced loss); 171 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,backbone=vit,
methods ('none', 'simmim')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="vit_tiny", patch_size=4, depth=12, hidden_dim=192,
                 num_heads=3, mlp_dim=768)
  c.objective = dict(name="simmim", mask_ratio=0.6)
  c.augment = base.augment_config("medical_safe")
  c.augment.overrides.crop_min_area = 0.67
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 1e-4, weight_decay=0.05,
                              scale_by_batch=True, b1=0.9, b2=0.999,
                              grad_clip_norm=5.0)
  return c
