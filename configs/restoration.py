"""Models Genesis (Zhou et al. 2019/2021) restoration pretraining, ResNet-18.

Run:  python run.py --config=configs/restoration.py --workdir=workdirs/restoration
      python run.py --config=configs/restoration.py:retinamnist --workdir=...
Each view is corrupted on device by local pixel shuffling (p 0.5), a random
monotone Bézier intensity curve (p 0.9, inverted half the time) and then
in-painting (p 0.9 x 0.2) or out-painting (p 0.9 x 0.8) with U[0, 1] noise:
the reference code's rates. A U-Net decoder on the ResNet's stage maps
restores the view; MSE on standardised pixels. `identity_mse` logs what
copying the input would score. Scaled to 28 px: shuffle windows of 1-4 px
(the reference: up to 1/10 of each side, in 3D), 200 of them (~1.5 x the
image area, as the reference's 10000 in a 64x64x32 cube); in-painting boxes
1/6-1/3 and out-painting boxes 3/7-4/7 of the side, as the reference.
Width 1/4 (16..128 channels) and batch 128 fit a 2-core CPU; on an
accelerator use width 1 and a larger batch.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.721 +- 0.027, end-to-end 0.873 +- 0.012 (ACC 0.827);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.008 [-0.014, +0.030] (95 % t). Pretraining ran at 225 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'restoration')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=0.25,
                 stage_sizes=(2, 2, 2, 2))
  c.objective = dict(
      name="restoration",
      shuffle_prob=0.5, shuffle_blocks=200, shuffle_max_window=4,
      nonlinear_prob=0.9, nonlinear_invert_prob=0.5, bezier_samples=100,
      paint_prob=0.9, inpaint_prob=0.2, paint_box_prob=0.95,
      inpaint_boxes=5, inpaint_size=(1 / 6, 1 / 3),
      outpaint_boxes=5, outpaint_size=(3 / 7, 4 / 7))
  # The reference only flips; the target is the (mildly augmented) view.
  c.augment = base.augment_config("medical_safe")
  c.train.steps = 1000
  c.train.batch_size = 128
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4, warmup_steps=50)
  return c
