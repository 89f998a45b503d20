"""MedMNIST v2's ResNet-18 (28) recipe, through the benchmark's own stage 2.

Run:  python run.py --config=configs/medmnist_baseline.py:breastmnist \
        --workdir=workdirs/baseline_breast
      ... --config.finetune.seeds="(0, 1, 2)"      (one process per seed
      sharing the workdir works too: finished cells are skipped)

The recipe of Yang et al., "MedMNIST v2", Scientific Data 2023 (CC BY 4.0
data; their train_and_eval_pytorch.py): full-width ResNet-18 with the
CIFAR-style stem (3x3 stride 1, no max-pool; ssl_jax picks it at <= 64 px)
and PyTorch's default initialisation,
Adam lr 1e-3 without weight decay, batch 128 with each epoch ending on its
short batch (PyTorch's DataLoader; `finetune.last_batch='keep'`), 100
epochs, lr x0.1 at epochs 50 and 75, no augmentation, inputs scaled to
(x - 0.5) / 0.5, cross-entropy, the epoch with the best validation AUROC kept and scored once on test. It
runs as the `scratch` protocol: the same ClassifierTrainer, loop and
selection as every end-to-end cell of the benchmark, so an SSL row and this
row differ only in the encoder's starting weights.

Published (MedMNIST v2, Table: ResNet-18 (28)): BreastMNIST AUC 0.901 /
ACC 0.863; RetinaMNIST AUC 0.717 / ACC 0.524. Measured with this config
(docs/results.md "The published baseline", `bash bench/gpu_baseline.sh`
on one H200):
BreastMNIST test AUROC 0.880 ± 0.019, ACC 0.806 ± 0.068 over 10 seeds
(0.890 / 0.823 over a first 3); RetinaMNIST AUROC 0.745, ACC 0.517 (1 seed).
Those runs carried batches across epochs (`last_batch='carry'`, 427 steps).
This config as it is (keep, 500 steps) on the 2-core CPU, 5 seeds, 21-39
min each: BreastMNIST AUROC 0.893 ± 0.029, ACC 0.854 ± 0.040.
`bash bench/gpu_baseline_ab.sh` compares both over 10 seeds, with the
PyTorch reference beside them.
"""
from configs import base


def get_config(arg: str = "breastmnist"):
  c = base.get_config()
  c.job = "finetune"
  c.data.name = arg or "breastmnist"
  # The reference ResNet's initialisation: PyTorch's layer defaults, every
  # BN scale at one (ssl_jax's default is torchvision's Kaiming fan-out
  # convs and a zero-initialised last BN scale per block).
  c.model = dict(name="resnet18", width_multiplier=1.0,
                 stage_sizes=(2, 2, 2, 2), conv_impl="auto", norm_impl="auto",
                 conv_init="torch_default", zero_init_residual=False)
  c.finetune.protocols = ("scratch",)
  c.finetune.fractions = (1.0,)
  c.finetune.seeds = (0, 1, 2)
  c.finetune.batch_size = 128
  c.finetune.epochs = 100
  c.finetune.eval_every_epochs = 1.0
  # PyTorch's DataLoader: each epoch ends with its short batch (BreastMNIST:
  # 4 x 128 + 34, 500 steps in all where carried batches take 427).
  c.finetune.last_batch = "keep"
  c.finetune.log_every = 20
  c.finetune.optim = base.optim_config(
      "adamw", 1e-3, weight_decay=0.0, warmup_steps=0, schedule="step",
      decay_at=(0.5, 0.75), decay_factor=0.1)
  c.finetune.augment = base.augment_config("none")
  # The published ACC cuts at 0.5; so does this row, to stand beside it.
  c.finetune.decision_threshold = "medmnist"
  return c
