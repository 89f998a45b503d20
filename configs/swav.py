"""SwAV (Caron et al. 2020) pretraining, ResNet-18 with the small-image stem.

Run:  python run.py --config=configs/swav.py --workdir=workdirs/swav
      python run.py --config=configs/swav.py:retinamnist --workdir=...
The arg picks the MedMNIST set (default breastmnist). Paper values: 2-layer
projector (2048 hidden with BN, 128 out), L2-normalised prototypes,
Sinkhorn-Knopp with epsilon 0.05 and 3 iterations on the global batch,
swapped-prediction temperature 0.1, multi-crop 2 x 224 (14-100% area) + 6 x
96 (5-14%), LARS lr 4.8 at batch 4096 (0.3 x batch/256), wd 1e-6. Scaled
for 28 px and a CPU: hidden 512, 100 prototypes instead of 3000 (about 10x
the classes of a small set), local crops at 12 px. Not done: the feature
queue for small batches and freezing prototypes in epoch 1.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.752 +- 0.011, end-to-end 0.884 +- 0.014 (ACC 0.848);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.018 [+0.002, +0.035] (95 % t). Pretraining ran at 115 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'swav')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="swav", proj_hidden_dim=512, proj_dim=128,
                     proj_layers=2, num_prototypes=100, temperature=0.1,
                     sinkhorn_epsilon=0.05, sinkhorn_iterations=3,
                     global_crop_area=(0.14, 1.0), local_crop_area=(0.05, 0.14),
                     num_local_crops=6, local_crop_size=12)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("lars", 0.3, weight_decay=1e-6,
                              scale_by_batch=True)
  return c
