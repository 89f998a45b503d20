"""Combined pretraining: SimCLR + rotation prediction on one shared ResNet-18.

Run:  python run.py --config=configs/combined.py --workdir=workdirs/combined
      python run.py --config=configs/combined.py:retinamnist --workdir=...
Multi-task self-supervision (Doersch & Zisserman 2017): the loss is
1.0 x NT-Xent (contrastive: invariance) + 0.5 x rotation cross-entropy
(innate: orientation/anatomy). Each part keeps the numbers of its own config
(configs/simclr.py, configs/rotation.py) and logs `simclr/loss`,
`rotation/loss`, `rotation/rotation_acc`, ... Any registered objectives can
be combined: --config.objective.parts="('simclr','mae')" needs a sub-config
per part (a part may carry its own `augment`) and a ViT for MAE.
AdamW as the rotation config (LARS's trust ratio suits SimCLR alone).

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.816 +- 0.018, end-to-end 0.887 +- 0.016 (ACC 0.850);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.022 [+0.014, +0.030] (95 % t). Pretraining ran at 150 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'combined')).
In the 10x demo's place (ResNet-18 x1/4, 1500 steps x 128, SimCLR tau 0.1
with 0.5 x rotation; the config is in docs/results.md "A combined
pretraining does not lift 10 % either"): at 10 % the FixMatch teacher's
mixup student reads 0.830 +- 0.031 over twenty stage-2 seeds, -0.005
[-0.018, 0.007] against SimCLR alone's, and end to end 0.806 +- 0.044,
-0.018 [-0.037, 0.001]; rotation accuracy reaches 0.99, so that part has
little left to teach on BreastMNIST.
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0,
                 stage_sizes=(2, 2, 2, 2))
  c.objective = dict(
      name="combined", parts=("simclr", "rotation"), weights=(1.0, 0.5),
      simclr=dict(temperature=0.1, proj_hidden_dim=512, proj_dim=128,
                  proj_layers=2),
      rotation=dict(all_rotations=False, head_hidden_dim=512, head_layers=2))
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4)
  return c
