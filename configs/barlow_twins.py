"""Barlow Twins (Zbontar et al. 2021) pretraining, ResNet-18 small stem.

Run:  python run.py --config=configs/barlow_twins.py --workdir=workdirs/bt
      python run.py --config=configs/barlow_twins.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). Paper values: 3-layer
projector (8192 wide, BN + ReLU on the hidden layers), cross-correlation of
per-dimension batch-normalised embeddings, off-diagonal weight lambda 5.1e-3,
LARS lr 0.2 x batch/256 for weights, weight decay 1.5e-6. Scaled for 28 px
and a CPU: projector 1024 wide (lambda ~ 1/D is the paper's rule of thumb
for other widths; 5.1e-3 stays close enough at 1024).

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.794 +- 0.009, end-to-end 0.885 +- 0.025 (ACC 0.827);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.019 [-0.079, +0.117] (95 % t). Pretraining ran at 172 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'barlow_twins')).
At 10x (docs/results.md "BYOL, Barlow Twins and DINO at the 10x budget"):
10 % end to end 0.787 +- 0.027, -0.022 [-0.055, +0.010] against SimCLR.
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="barlow_twins", lambd=5.1e-3, proj_hidden_dim=1024,
                     proj_dim=1024, proj_layers=3)
  c.train.steps = 2000
  c.train.batch_size = 256
  # Frozen-feature kNN val AUROC of the online encoder 20 times over the run
  # (every ~47 BreastMNIST epochs): the curve in monitor.png shows whether
  # 2000 steps reached the plateau.
  c.train.monitor_every = 100
  c.optim = base.optim_config("lars", 0.2, weight_decay=1.5e-6,
                              scale_by_batch=True)
  return c
