"""Denoising autoencoder (Vincent et al. 2008) pretraining, ResNet-18.

Run:  python run.py --config=configs/denoising_autoencoder.py --workdir=workdirs/dae
      python run.py --config=configs/denoising_autoencoder.py:retinamnist --workdir=...
The view is corrupted by masking noise (each pixel zeroed with p=0.25) and
additive Gaussian noise (std 0.1 of the [0, 1] range); the decoder (as in
configs/autoencoder.py) reconstructs the clean view. recon_mse should fall
well below noisy_mse, the error of returning the corrupted input.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.755 +- 0.036, end-to-end 0.867 +- 0.014 (ACC 0.855);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.001 [-0.063, +0.066] (95 % t). Pretraining ran at 91 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'denoising_autoencoder')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="denoising_autoencoder", noise_std=0.1,
                     mask_prob=0.25, decoder_channels=(128, 64, 32))
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4)
  return c
