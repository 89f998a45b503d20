"""Autoencoder pretraining, ResNet-18 encoder + resize-conv decoder.

Run:  python run.py --config=configs/autoencoder.py --workdir=workdirs/ae
      python run.py --config=configs/autoencoder.py:retinamnist --workdir=...
The pooled ResNet features are decoded to the image: Linear to 128 x 7 x 7,
then two (upsample x2, 3x3 conv) stages to 28 px (`decoder_channels`, one
upsampling per width after the first). MSE against the augmented view in the
standardised [-1, 1] scale, logged as recon_mse.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.761 +- 0.033, end-to-end 0.878 +- 0.018 (ACC 0.857);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.012 [-0.038, +0.063] (95 % t). Pretraining ran at 87 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'autoencoder')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="autoencoder", decoder_channels=(128, 64, 32))
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4)
  return c
