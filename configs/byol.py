"""BYOL (Grill et al. 2020) pretraining, ResNet-18 with the small-image stem.

Run:  python run.py --config=configs/byol.py --workdir=workdirs/byol
      python run.py --config=configs/byol.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). Paper values: 2-layer
projector and predictor (4096 hidden with BN, 256 out), symmetric
2 - 2 cos loss, target rate tau = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2 with
K = train.steps, LARS lr 0.2 x batch/256, weight decay 1.5e-6. Scaled for
28 px and a CPU: hidden 512, out 128, tau_base 0.99 instead of 0.996 (the
paper's value for 1000 epochs; shorter runs need a faster target).

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.745 +- 0.003, end-to-end 0.886 +- 0.011 (ACC 0.859);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.020 [-0.040, +0.080] (95 % t). Pretraining ran at 141 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'byol')).
At 10x (docs/results.md "BYOL, Barlow Twins and DINO at the 10x budget"):
10 % end to end 0.796 +- 0.033, -0.013 [-0.039, +0.012] against SimCLR.
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="byol", proj_hidden_dim=512, proj_dim=128,
                     proj_layers=2, pred_hidden_dim=512, pred_layers=2,
                     momentum=0.99, momentum_cosine=True)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("lars", 0.2, weight_decay=1.5e-6,
                              scale_by_batch=True)
  return c
