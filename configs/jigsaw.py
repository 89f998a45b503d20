"""Jigsaw puzzles (Noroozi & Favaro 2016) pretraining, ResNet-18, small stem.

Run:  python run.py --config=configs/jigsaw.py --workdir=workdirs/jigsaw
      python run.py --config=configs/jigsaw.py:retinamnist --workdir=...
At 28 px: the view is centre-cropped to 27 px, cut into 3 x 3 cells of 9 px,
each cell randomly cropped to 8 px (`tile_gap=1`, so edges do not line up),
normalised per tile and resized to 16 px for the encoder. The tiles are
shuffled by one of 100 permutations chosen for large Hamming distance from a
seeded pool (the paper uses 1000 at 225 px; 100 suits ~500-image sets); the
9 tile features, concatenated in order, go through a 2-layer MLP. Nine
encoder passes per image, hence the smaller batch. Pretext accuracy is
logged as jigsaw_acc (chance 1 / num_permutations).

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.704 +- 0.018, end-to-end 0.881 +- 0.015 (ACC 0.859);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.016 [-0.004, +0.035] (95 % t). Pretraining ran at 76 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'jigsaw')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = arg or "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="jigsaw", grid=3, num_permutations=100,
                     permutation_pool_size=10000, permutation_seed=0,
                     tile_size=16, tile_gap=1, normalize_tiles=True,
                     head_hidden_dim=512, head_layers=2)
  c.train.steps = 2000
  c.train.batch_size = 128
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4)
  return c
