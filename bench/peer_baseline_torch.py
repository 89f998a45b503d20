"""MedMNIST v2's ResNet-18 (28) recipe written as its authors wrote it, in
PyTorch: the reference `configs/medmnist_baseline.py` is checked against.

Why: if ssl_jax's baseline lands below the published numbers, this script
tells whether the recipe on these files and this metric code reaches them
at all. It follows MedMNIST's experiments code (train_and_eval_pytorch.py,
models.py): a CIFAR-style ResNet-18 with PyTorch's default initialisation,
Adam lr 1e-3, batch 128 with the last short batch kept, 100 epochs, lr x0.1
at epochs 50 and 75, inputs (x - 0.5) / 0.5, cross-entropy, validation
AUROC after every epoch and the best epoch's model scored once on test.
Data: the same MedMNIST .npz files (Yang et al., Scientific Data 2023,
CC BY 4.0) read by data_pipelines/medmnist.py; AUROC / ACC from
ssl_jax/evaluation/metrics.py, so only the training differs.

  python bench/peer_baseline_torch.py --dataset=breastmnist --seeds=0,1,2
      [--epochs=100] [--threads=0] [--device=auto]

--device=auto trains on CUDA where PyTorch sees a GPU (a few seconds a
seed), else on the CPU.

PyTorch is the optional extra of requirements-peer.txt; nothing in `make
demo` or `make test` imports it. Prints one line per seed and the mean.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data_pipelines import medmnist  # noqa: E402
from ssl_jax.evaluation import metrics  # noqa: E402


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, planes, 1, stride, bias=False),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
  """MedMNIST's models.ResNet18 (kuangliu's CIFAR ResNet, 28 px input)."""

  def __init__(self, in_channels: int, num_classes: int):
    super().__init__()
    self.in_planes = 64
    self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.layers = nn.Sequential(*[self._stage(p, s) for p, s in
                                  ((64, 1), (128, 2), (256, 2), (512, 2))])
    self.linear = nn.Linear(512, num_classes)

  def _stage(self, planes: int, stride: int) -> nn.Sequential:
    blocks = []
    for s in (stride, 1):
      blocks.append(BasicBlock(self.in_planes, planes, s))
      self.in_planes = planes
    return nn.Sequential(*blocks)

  def forward(self, x):
    out = self.layers(F.relu(self.bn1(self.conv1(x))))
    return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def to_input(images: np.ndarray) -> torch.Tensor:
  """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1] (ToTensor, Normalize)."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  return (x - 0.5) / 0.5


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
  model.eval()
  return torch.cat([F.softmax(model(x[i:i + 256]), -1)
                    for i in range(0, len(x), 256)]).cpu().numpy()


def run_seed(data: dict, task: str, num_classes: int, seed: int,
             epochs: int, device: str = "cpu") -> dict:
  torch.manual_seed(seed)
  np.random.seed(seed)
  (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
      data["train"], data["val"], data["test"])
  x_train, x_val, x_test = (x.to(device) for x in (x_train, x_val, x_test))
  model = ResNet18(x_train.shape[1], num_classes).to(device)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  scheduler = torch.optim.lr_scheduler.MultiStepLR(
      optimizer, milestones=[int(0.5 * epochs), int(0.75 * epochs)], gamma=0.1)
  targets = torch.from_numpy(y_train).long().reshape(-1).to(device)
  best = (-1.0, 0, None)
  for epoch in range(epochs):
    model.train()
    order = torch.randperm(len(x_train)).to(device)
    for i in range(0, len(order), 128):
      rows = order[i:i + 128]
      loss = F.cross_entropy(model(x_train[rows]), targets[rows])
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    scheduler.step()
    val_auc = metrics.auroc(y_val, probabilities(model, x_val), task)
    if val_auc > best[0]:
      best = (val_auc, epoch + 1, copy.deepcopy(model.state_dict()))
  model.load_state_dict(best[2])
  probs = probabilities(model, x_test)
  return {"seed": seed, "epoch": best[1], "val_auroc": best[0],
          "auroc": metrics.auroc(y_test, probs, task),
          "acc": metrics.accuracy(y_test, probs, task)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="breastmnist")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--threads", type=int, default=0)
  parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
  args = parser.parse_args()
  device = args.device if args.device != "auto" else (
      "cuda" if torch.cuda.is_available() else "cpu")
  if args.threads:
    torch.set_num_threads(args.threads)
  info = medmnist.info(args.dataset)
  if info.multi_label:
    raise SystemExit(f"{args.dataset}: multi-label sets need BCE; this "
                     "reference covers single-label sets only")
  data = {}
  for split in ("train", "val", "test"):
    images, labels = medmnist.load_split(args.dataset, split)
    data[split] = (to_input(images), labels)
  results = []
  for seed in (int(s) for s in args.seeds.split(",")):
    began = time.perf_counter()
    r = run_seed(data, info.task, info.num_classes, seed, args.epochs, device)
    results.append(r)
    print(f"{args.dataset} seed {seed}: test AUROC {r['auroc']:.3f} ACC "
          f"{r['acc']:.3f} (epoch {r['epoch']}, val AUROC {r['val_auroc']:.3f}, "
          f"{time.perf_counter() - began:.0f} s)", flush=True)
  for key in ("auroc", "acc"):
    values = [r[key] for r in results]
    print(f"{key}: {np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"
          f" over {len(values)} seeds")


if __name__ == "__main__":
  main()
