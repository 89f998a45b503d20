"""SimCLR that starts from existing weights and continues SSL in-domain.

Continuing self-supervised training on the target modality from natural-
image weights beats both plain ImageNet transfer and in-domain SSL from
scratch (Azizi et al. 2021, "Big Self-Supervised Models Advance Medical
Image Classification"). The arg is the weights: an .npz / .msgpack file or
an Orbax checkpoint directory (e.g. an earlier ssl_jax pretraining workdir).

Run:  python run.py --config=configs/continue_pretraining.py:/path/to/workdir \\
        --workdir=workdirs/continue
A torchvision ResNet-50 (convert once, where torch is installed:
  np.savez("r50.npz", **{k: v.numpy() for k, v in
           torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict().items()})):
      python run.py --config=configs/continue_pretraining.py:r50.npz \\
        --config.model.name=resnet50 --config.init_from.preset=torchvision_resnet \\
        --config.data.size=224 --workdir=workdirs/continue_r50
(above 64 px the ResNet uses the ImageNet 7x7/2 stem the weights expect.)
The RGB stem is summed to 1 channel for grayscale data (`init_from.channels`).
The run writes init_from_report.json (matched / missing / unexpected /
shape-mismatched keys); check it: a large `missing` count means the run
started mostly from random weights. A resumed run ignores `init_from` and
continues from its own checkpoint. Lower lr than from scratch: the weights
are already good, and a large first update would erase them.
Measured (docs/medical_data.md "Starting from existing weights"; no natural-image weights
offline here): the demo on BreastMNIST started from the RetinaMNIST demo's
SimCLR encoder, 3 seeds, end-to-end test AUROC 0.915 +- 0.002 at 100 %
labels vs 0.914 +- 0.008 from random init (+0.002 [-0.018, 0.021]); no
protocol moved beyond seed noise. MedMNIST: Yang et al. 2023 (CC BY 4.0).
"""
from configs import base


def get_config(arg: str = ""):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = "breastmnist"
  c.model = dict(name="resnet18", width_multiplier=1.0)
  c.init_from.path = arg
  c.objective = dict(name="simclr", temperature=0.1, proj_hidden_dim=512,
                     proj_dim=128, proj_layers=2)
  c.train.steps = 1000
  c.train.batch_size = 256
  c.optim = base.optim_config("lars", 0.1, weight_decay=1e-6,
                              scale_by_batch=True, warmup_steps=100)
  return c
