"""SimSiam (Chen & He 2021) pretraining, ResNet-18 with the small-image stem.

Run:  python run.py --config=configs/simsiam.py --workdir=workdirs/simsiam
      python run.py --config=configs/simsiam.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). Paper values: 3-layer
projector with BN on every layer including the output (2048 wide), a 2-layer
bottleneck predictor (hidden = out / 4), negative cosine with stop-gradient,
SGD lr 0.05 x batch/256, weight decay 1e-4, momentum 0.9, no EMA. Scaled for
28 px and a CPU (the paper's CIFAR variant uses 2048 too): 512 wide, hidden 128.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.709 +- 0.045, end-to-end 0.884 +- 0.007 (ACC 0.870);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.018 [-0.008, +0.044] (95 % t). Pretraining ran at 193 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'simsiam')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="simsiam", proj_hidden_dim=512, proj_dim=512,
                     proj_layers=3, proj_last_bn=True, pred_hidden_dim=128,
                     pred_layers=2)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("sgd", 0.05, weight_decay=1e-4,
                              scale_by_batch=True, momentum=0.9, warmup_steps=0)
  return c
