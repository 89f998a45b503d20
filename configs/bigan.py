"""BiGAN / ALI pretraining (adversarially learned inference), ResNet-18.

Run:  python run.py --config=configs/bigan.py --workdir=workdirs/bigan
      python run.py --config=configs/bigan.py:retinamnist --workdir=...
The encoder (+ a linear map to a 64-d code), a generator (the autoencoders'
resize-conv decoder, tanh output) and a joint discriminator on (image, code)
pairs, trained by one pure step: D's term and the E/G term reach disjoint
parameters, so one Adam update is simultaneous descent for both players
(ssl_jax/objectives/adversarial.py). Adam with b1 = 0.5 and no weight decay,
as GANs are usually trained (DCGAN, BiGAN).

Measured in the strategy zoo (docs/zoo.md): see the `bigan` row.
Reproduce: the zoo command in docs/zoo.md with
methods ('none', 'bigan').
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="bigan", latent_dim=64,
                     generator_channels=(128, 64, 32),
                     discriminator_channels=(32, 64), discriminator_hidden=256)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 2e-4, weight_decay=0.0, b1=0.5,
                              warmup_steps=0)
  return c
