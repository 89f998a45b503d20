"""Run 3 steps of each named method on a fixed BreastMNIST batch; print, as
one JSON line, each method's losses and checksums of its parameters and of
its objective state (EMA teacher, MoCo queue, DINO centre). Run under
different XLA device counts by tests/test_train.py: the numbers must agree,
which proves global-batch semantics (SimCLR negatives, BatchNorm statistics,
teacher updates, DINO centring over the whole batch).

  python tests/step_equality_script.py simclr moco_v2 byol dino
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import data_pipelines  # noqa: E402
from ssl_jax import parallel  # noqa: E402
from ssl_jax.jobs import pretrain  # noqa: E402
from tests.tiny import tiny_method_config  # noqa: E402


def checksum(tree) -> float:
  return float(sum(np.abs(np.asarray(x, np.float64)).sum()
                   for x in jax.tree.leaves(jax.device_get(tree))))


def run(method: str, mesh, batch) -> dict:
  config = tiny_method_config(method)
  # SGD, not Adam: Adam's normalisation turns float-rounding differences of
  # near-zero gradients into lr-sized updates, hiding what is compared here.
  config.optim.name, config.optim.lr = "sgd", 0.05
  _, state, step_fn = pretrain.build(config, data_pipelines.info("breastmnist", 28), mesh)
  losses = []
  for _ in range(3):
    state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return {"losses": losses, "params": checksum(state.params),
          "batch_stats": checksum(state.rest), "extra": checksum(state.extra)}


def main(methods):
  mesh = parallel.make_mesh()
  images, labels = data_pipelines.load("breastmnist", "train", size=28)
  batch = {"image": images[:16], "label": labels[:16]}
  print(json.dumps({"devices": mesh.devices.size,
                    "methods": {m: run(m, mesh, batch) for m in methods}}))


if __name__ == "__main__":
  main(sys.argv[1:] or ["simclr"])
