"""SimCLR (Chen et al. 2020) pretraining, ResNet-18 with the small-image stem.

Run:  python run.py --config=configs/simclr.py --workdir=workdirs/simclr
      python run.py --config=configs/simclr.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). LARS with lr 0.3 x
batch/256 and NT-Xent temperature 0.1 are the paper's small-batch values.
On an accelerator, scale `train.batch_size` up (4096 in the paper).

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.843 +- 0.019, end-to-end 0.899 +- 0.016 (ACC 0.857);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.034 [-0.028, +0.095] (95 % t). Pretraining ran at 161 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'simclr')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="simclr", temperature=0.1, proj_hidden_dim=512,
                     proj_dim=128, proj_layers=2)
  c.train.steps = 2000
  c.train.batch_size = 256
  # Frozen-feature kNN val AUROC of the online encoder 20 times over the run
  # (every ~47 BreastMNIST epochs): the curve in monitor.png shows whether
  # 2000 steps reached the plateau.
  c.train.monitor_every = 100
  return c
