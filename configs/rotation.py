"""Rotation prediction (Gidaris et al. 2018) pretraining, ResNet-18, small stem.

Run:  python run.py --config=configs/rotation.py --workdir=workdirs/rotation
      python run.py --config=configs/rotation.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). Each image gets one
random rotation of 0/90/180/270 degrees per step (`all_rotations=True` feeds
all four copies, the paper's best setting, at 4x the compute); a 2-layer MLP
predicts which from the pooled features. The view policy must not rotate.
Pretext accuracy is logged as rotation_acc (chance 0.25).

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.754 +- 0.025, end-to-end 0.885 +- 0.009 (ACC 0.848);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.020 [-0.001, +0.040] (95 % t). Pretraining ran at 333 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'rotation')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="rotation", all_rotations=False,
                     head_hidden_dim=512, head_layers=2)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4)
  return c
