"""DINO (Caron et al. 2021) pretraining, ResNet-18 small stem (ViT optional).

Run:  python run.py --config=configs/dino.py --workdir=workdirs/dino
      python run.py --config=configs/dino.py:retinamnist --workdir=...
      python run.py --config=configs/dino.py:breastmnist,vit --workdir=...
The arg picks the MedMNIST set (default breastmnist) and, after a comma,
`vit` for ViT-Tiny with 4-px patches. Paper values: 3-layer
head (2048 hidden, 256 bottleneck, L2 normalisation, weight-normalised
last layer), student temperature 0.1, teacher temperature 0.04 with
centring (momentum 0.9), teacher momentum 0.996 raised to 1 by a cosine,
multi-crop with global crops of 40-100% area and local crops of 5-40% area
(224 / 96 px), AdamW lr 5e-4 x batch/256, wd 0.04, grad clip 3.0. Scaled for
28 px and a CPU: 2 global crops at 28 px + 6 local crops at 12 px (96/224 of
28), head 512 hidden, 128 bottleneck, 1024 outputs (`num_prototypes`, 65536
in the paper), momentum 0.99. The head's MLP uses ReLU (GELU in the paper).
With a ViT, local crops are resampled to the model's size (its sin-cos grid
is fixed), see `contrastive.local_crop_size`. Not done: weight-decay and
teacher-temperature schedules, freezing the last layer in epoch 1.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.706 +- 0.025, end-to-end 0.875 +- 0.019 (ACC 0.855);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.010 [-0.017, +0.036] (95 % t). Pretraining ran at 82 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'dino')).
At 10x (docs/results.md "BYOL, Barlow Twins and DINO at the 10x budget"):
10 % end to end 0.805 +- 0.017, -0.004 [-0.033, +0.024] against SimCLR.
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  """arg: 'dataset' or 'dataset,vit'."""
  dataset, backbone = base.dataset_and_backbone(arg)
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = dataset
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="dino", proj_hidden_dim=512, proj_dim=128,
                     proj_layers=3, proj_bn=False, num_prototypes=1024,
                     student_temp=0.1, teacher_temp=0.04, center_momentum=0.9,
                     momentum=0.99, momentum_cosine=True,
                     global_crop_area=(0.4, 1.0), local_crop_area=(0.05, 0.4),
                     num_local_crops=6, local_crop_size=12)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("adamw", 5e-4, weight_decay=0.04,
                              scale_by_batch=True, grad_clip_norm=3.0)
  if backbone == "vit":  # ViT-Tiny, 4-px patches; local crops at 28 px
    c.model = dict(name="vit_tiny", patch_size=4)
  return c
