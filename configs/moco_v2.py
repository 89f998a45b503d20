"""MoCo v2 (He et al. 2020; Chen et al. 2020) pretraining, ResNet-18 small stem.

Run:  python run.py --config=configs/moco_v2.py --workdir=workdirs/moco_v2
      python run.py --config=configs/moco_v2.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). Paper values: InfoNCE
temperature 0.2, a 2-layer MLP projector without BN (2048 -> 128), SGD lr
0.03 x batch/256, weight decay 1e-4, cosine schedule. Scaled for 28 px and a
CPU: projector hidden 512; queue 512 keys instead of 65536 (keep it below
the training-set size: BreastMNIST has 546 images, and a longer queue holds
stale keys of the query's own image); key-encoder momentum 0.99 instead of
0.999, since runs are ~2000 steps, not 200 epochs of ImageNet.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.724 +- 0.050, end-to-end 0.893 +- 0.013 (ACC 0.865);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.027 [+0.004, +0.051] (95 % t). Pretraining ran at 307 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'moco_v2')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="moco_v2", temperature=0.2, proj_hidden_dim=512,
                     proj_dim=128, proj_layers=2, proj_bn=False,
                     queue_size=512, momentum=0.99, momentum_cosine=False)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("sgd", 0.03, weight_decay=1e-4,
                              scale_by_batch=True, momentum=0.9, warmup_steps=0)
  return c
