"""Relative patch location (Doersch et al. 2015) pretraining, ResNet-18.

Run:  python run.py --config=configs/relative_patch.py --workdir=workdirs/relpatch
      python run.py --config=configs/relative_patch.py:retinamnist --workdir=...
At 28 px: a 3 x 3 grid of 7 px patches 2 px apart (span 25 px) at a random
place in the view, each patch jittered by up to 1 px (the paper: 96 px
patches, 48 px gap, 7 px jitter at ImageNet scale). The centre patch and one
of its 8 neighbours are normalised per patch, resized to 16 px, encoded by
the shared encoder, concatenated, and a 2-layer MLP predicts the neighbour's
position. Pretext accuracy is logged as relative_patch_acc (chance 0.125).

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.707 +- 0.057, end-to-end 0.872 +- 0.010 (ACC 0.835);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.006 [-0.008, +0.021] (95 % t). Pretraining ran at 306 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'relative_patch')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="relative_patch", patch_size=7, gap=2, jitter=1,
                     patch_resize=16, normalize_patches=True,
                     head_hidden_dim=512, head_layers=2)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4)
  return c
