"""SimCLR on MedMNIST 3D volumes with a 3D ResNet-18, then linear probe and
end-to-end fine-tuning on the 3D encoder: the `simclr` objective itself
(views and the encoder follow the data's rank), the same loop and jobs.

Run:  python run.py --config=configs/simclr_3d.py --workdir=workdirs/simclr_3d
      python run.py --config=configs/simclr_3d.py:nodulemnist3d --workdir=...
The arg picks the MedMNIST 3D set (default adrenalmnist3d, 28^3 voxels).
Sized for a 2-core CPU (width 1/8: 8..64 channels; 16^3 views; 100 steps
of 32 volumes, 2 min with compilation; stage 2 10 epochs at 28^3, 380
steps of 32, a class-balanced loss). On an accelerator scale up:
--config.model.width_multiplier=1 --config.objective.view_size=28
--config.train.steps=2000 --config.train.batch_size=256
--config.finetune.epochs=100.
Measured (AdrenalMNIST3D, this config, 2-core CPU, 3 seeds: --config.seed=S
--config.finetune.seeds="(S,)"; 2,080-2,350 s CPU per seed), test AUROC at
100% labels, mean +- sd, with ACC and balanced ACC:
  linear probe (frozen)  0.659 +- 0.050  ACC 0.686  balanced 0.568
  end-to-end fine-tune   0.840 +- 0.009  ACC 0.801  balanced 0.730
  from scratch           0.826 +- 0.010  ACC 0.792  balanced 0.617
                         (same net and stage 2 from random init)
End to end minus scratch, paired by seed: +0.014 [0.012, 0.016] (95 %
t-interval; 0.014, 0.015, 0.013 per seed). MedMNIST: Yang et al. 2023.
With 60 unweighted fine-tuning steps instead, both classifiers predicted
only the majority class (end to end 0.620, scratch 0.563).
Pretrained 10x longer (--config.train.steps=1000
--config.optim.warmup_steps=100, docs/volumes_3d.md, 3 seeds), at 10 %
of the labels: end to end 0.779 +- 0.047 vs scratch 0.677 +- 0.067,
paired +0.102 [0.052, 0.151]; at 100 % 0.842 vs 0.836, +0.005 [-0.075,
0.086].
"""
from configs import base


def get_config(arg: str = "adrenalmnist3d"):
  c = base.volume_budget(base.get_config(), arg)
  # conv3d_impl: 'auto' = depth-stacked 2D convs on CPU (5-10x faster there),
  # native 3D convs on GPU/TPU; the params are the same either way.
  c.model = dict(name="resnet18_3d", width_multiplier=0.125, conv3d_impl="auto")
  # view_size: side of the cubic views; 16 < 28 = random resized crops
  # resampled down (3D convs cost per voxel); evaluation sees full volumes.
  c.objective = dict(name="simclr", temperature=0.1, proj_hidden_dim=256,
                     proj_dim=64, proj_layers=2, view_size=16)
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4, warmup_steps=10)
  c.finetune.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4,
                                       warmup_steps=10)
  return c
