"""VICReg (Bardes, Ponce & LeCun 2022) pretraining, ResNet-18 small stem.

Run:  python run.py --config=configs/vicreg.py --workdir=workdirs/vicreg
      python run.py --config=configs/vicreg.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). Paper values: 3-layer
expander (8192 wide, BN + ReLU on the hidden layers), invariance / variance
/ covariance weights 25 / 25 / 1, std target gamma 1, LARS lr 0.2 x
batch/256, weight decay 1e-6. Scaled for 28 px and a CPU: expander 1024 wide.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.836 +- 0.024, end-to-end 0.908 +- 0.014 (ACC 0.876);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.042 [-0.012, +0.097] (95 % t). Pretraining ran at 159 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'vicreg')).
Ten times that pretraining (1500 steps, docs/results.md "Ten times
longer in the benchmark", 3 seeds, selection from the stage-2 warmup's end): end to end
0.882 +- 0.006 at 100 % (lower than at 150 steps), 0.801 +- 0.027 at 10 %
(+0.077 [0.016, 0.139] over scratch, paired), 0.586 at 1 %; linear probe
0.857 at 100 %; the kNN monitor flattens after ~1000 steps.
In the 10x demo's place (ResNet-18 x1/4, 1500 steps x 128, the demo's
stage 2; docs/results.md "Ensembles"): 10 % 0.807 +- 0.025 over ten stage-2 seeds,
+0.037 [0.020, 0.054] over scratch, 1 % 0.633 +- 0.100, 100 % 0.916 +-
0.011 over five (+0.032 [0.024, 0.039]); over three pretrainings
(--config.seed=0, 1, 2) 0.643 / 0.804 / 0.911 at 1 / 10 / 100 %, minus
scratch +0.058 [0.013, 0.104], +0.033 [-0.003, 0.069], +0.027 [0.006,
0.048]; averaged with three 10x SimCLR encoders' predictions, 100 %
0.927 +- 0.002.
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="vicreg", sim_weight=25.0, var_weight=25.0,
                     cov_weight=1.0, gamma=1.0, proj_hidden_dim=1024,
                     proj_dim=1024, proj_layers=3)
  c.train.steps = 2000
  c.train.batch_size = 256
  # Frozen-feature kNN val AUROC of the online encoder 20 times over the run
  # (every ~47 BreastMNIST epochs): the curve in monitor.png shows whether
  # 2000 steps reached the plateau.
  c.train.monitor_every = 100
  c.optim = base.optim_config("lars", 0.2, weight_decay=1e-6,
                              scale_by_batch=True)
  return c
