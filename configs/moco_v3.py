"""MoCo v3 (Chen, Xie & He 2021) pretraining, ResNet-18 small stem or ViT.

Run:  python run.py --config=configs/moco_v3.py --workdir=workdirs/moco_v3
      python run.py --config=configs/moco_v3.py:retinamnist --workdir=...
      python run.py --config=configs/moco_v3.py:breastmnist,vit --workdir=...
The arg picks the MedMNIST set (default breastmnist) and, after a comma,
`vit` for ViT-Tiny with 4-px patches and the paper's ViT recipe (tau 0.2,
AdamW lr 1.5e-4 x batch/256, wd 0.1). Paper values for
ResNet: 3-layer projector and 2-layer predictor with BN (4096 hidden, 256
out, BN without affine on the outputs), temperature 1.0 (0.2 for ViT), loss
2 tau x InfoNCE, momentum 0.99 raised to 1 by a cosine, LARS lr 0.3 x
batch/256 (0.6 in the paper's 100-epoch runs), wd 1.5e-6.
Scaled for 28 px and a CPU: hidden 1024, out 128.

Measured in the strategy zoo (docs/zoo.md): BreastMNIST, the benchmark's
CPU budget (ResNet-18 x1/8, 150 steps x 128), 100% labels, test AUROC over
3 seeds, with the benchmark's stage 2 (40 epochs, class-balanced loss):
linear probe 0.755 +- 0.026, end-to-end 0.886 +- 0.011 (ACC 0.861);
from scratch 0.865 +- 0.016; end to end minus scratch, paired by seed,
+0.021 [+0.002, +0.039] (95 % t). Pretraining ran at 116 images/s on the
shared 2-core CPU.
Reproduce: the zoo command in docs/zoo.md (dataset=breastmnist,
methods ('none', 'moco_v3')).
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  """arg: 'dataset' or 'dataset,vit'."""
  dataset, backbone = base.dataset_and_backbone(arg)
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = dataset
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.objective = dict(name="moco_v3", temperature=1.0, proj_hidden_dim=1024,
                     proj_dim=128, proj_layers=3, proj_last_bn=True,
                     pred_hidden_dim=1024, pred_layers=2, pred_last_bn=True,
                     momentum=0.99, momentum_cosine=True)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.optim = base.optim_config("lars", 0.3, weight_decay=1.5e-6,
                              scale_by_batch=True)
  if backbone == "vit":  # the paper's ViT recipe: tau 0.2, AdamW
    c.model = dict(name="vit_tiny", patch_size=4)
    c.objective.temperature = 0.2
    c.optim = base.optim_config("adamw", 1.5e-4, weight_decay=0.1,
                                scale_by_batch=True)
  return c
