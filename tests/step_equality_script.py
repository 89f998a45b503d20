"""Run 3 SimCLR steps on a fixed BreastMNIST batch; print losses and a
parameter checksum as JSON. Run under different XLA device counts by
tests/test_train.py: the numbers must agree (global-batch semantics)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import data_pipelines  # noqa: E402
from ssl_jax import parallel  # noqa: E402
from ssl_jax.jobs import pretrain  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402


def main():
  config = tiny_config(**{"model.stage_sizes": (1, 1, 1, 1)})  # half the compile
  mesh = parallel.make_mesh()
  info = data_pipelines.info("breastmnist", 28)
  images, labels = data_pipelines.load("breastmnist", "train", size=28)
  batch = {"image": images[:16], "label": labels[:16]}
  _, state, step_fn = pretrain.build(config, info, mesh)
  losses = []
  for _ in range(3):
    state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  leaves = jax.tree.leaves(jax.device_get(state.params))
  print(json.dumps({"devices": mesh.devices.size, "losses": losses,
                    "param_sum": float(sum(np.abs(x).sum() for x in leaves))}))


if __name__ == "__main__":
  main()
