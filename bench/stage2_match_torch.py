"""Is ssl_jax's stage-2 step the PyTorch reference's step? Same weights, same
batches, K Adam steps in each, and the differences printed.

Why: the MedMNIST recipe (configs/medmnist_baseline.py) lands below the
PyTorch reference (bench/peer_baseline_torch.py) on the same files. If the
two steps agree from the same start, the maths (model, BatchNorm, loss,
Adam, schedule) is the same and the gap lies in what differs between runs
(initial draw, batch order, epoch structure); if they drift apart, the
first step that drifts names the piece to look at.

ssl_jax's network is built by the recipe's config and trained by its own
compiled classifier step (`ClassifierTrainer`); its initial weights are
copied into the reference's ResNet18 through the export path's torchvision
names (ssl_jax/export.py), once in float32 and once in float64. All three
then train on the batches ssl_jax's input pipeline yields for seed 0.
float64 PyTorch is the yardstick: float32 rounding alone makes any two
implementations drift apart (Adam's first steps are ~lr * sign(g), so a
gradient near zero can flip a whole update), and the question is whether
ssl_jax drifts from it faster than PyTorch's own float32 does. Printed: the
loss of every step in each, and after K steps the relative differences of
parameters and BatchNorm running statistics (median and worst tensor) and
of the validation probabilities in eval mode; and, for the eval path
alone, ssl_jax's trained weights loaded into the reference model, whose
validation probabilities must equal ssl_jax's.

  python bench/stage2_match_torch.py [--dataset=breastmnist] [--steps=10]
      [--threads=0]

Data: MedMNIST (Yang et al., Scientific Data 2023, CC BY 4.0) from
SSL_JAX_DATA_DIR. PyTorch is the optional extra of requirements-peer.txt.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402

from bench import peer_baseline_torch as peer  # noqa: E402
from configs import medmnist_baseline  # noqa: E402
from data_pipelines import input_pipeline  # noqa: E402
from ssl_jax import export, parallel  # noqa: E402
from ssl_jax.evaluation import classifier  # noqa: E402
from ssl_jax.evaluation.encoder_context import EncoderContext  # noqa: E402
from ssl_jax.jobs import common, finetune  # noqa: E402
from ssl_jax.train import encoder_weights  # noqa: E402


def peer_name(torchvision_name: str) -> str:
  """torchvision's ResNet names -> the MedMNIST ResNet18's (layers.i, shortcut)."""
  name = re.sub(r"^layer(\d)\.", lambda m: f"layers.{int(m[1]) - 1}.",
                torchvision_name)
  return name.replace(".downsample.", ".shortcut.")


def ours_in_peer_names(encoder, params, rest) -> dict[str, np.ndarray]:
  """An ssl_jax Classifier's state as the reference model's state_dict."""
  flat = encoder_weights.merged(nnx.to_pure_dict(params["encoder"]),
                                nnx.to_pure_dict(rest["encoder"]))
  public, _ = export.to_public(encoder, flat)
  out = {peer_name(k): np.asarray(v) for k, v in public.items()}
  head = nnx.to_pure_dict(params["head"])["linear"]
  out["linear.weight"] = np.asarray(head["kernel"]).T
  out["linear.bias"] = np.asarray(head["bias"])
  return out


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def median_diff(a: dict, b: dict, keys) -> float:
  return float(np.median([rel_diff(a[k], b[k]) for k in keys]))


def worst_diff(a: dict, b: dict, keys) -> float:
  return max(rel_diff(a[k], b[k]) for k in keys)


def reference_model(state_dict: dict, in_channels: int, num_classes: int,
                    dtype: torch.dtype) -> tuple:
  """The reference ResNet18 holding `state_dict`, in `dtype`, with its Adam."""
  model = peer.ResNet18(in_channels, num_classes).to(dtype)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                         state_dict.items()}, strict=True)
  return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def torch_step(model, optimizer, batch: dict) -> float:
  """One step of the reference's training loop on `batch`; its loss."""
  model.train()
  dtype = next(model.parameters()).dtype
  logits = model(peer.to_input(batch["image"]).to(dtype))
  loss = F.cross_entropy(logits, torch.from_numpy(batch["label"]).long().reshape(-1))
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()
  return loss.item()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="breastmnist")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--threads", type=int, default=0)
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)

  raw = medmnist_baseline.get_config(args.dataset)
  raw.finetune.head_init = "torch_default"  # a zero head has no signal to compare
  info = common.data_info(raw)
  cfg = finetune.stage2_config(raw, None, info)
  data = {s: common.load_split(cfg, s) for s in ("train", "val")}
  mesh = parallel.config_mesh(raw)
  with tempfile.TemporaryDirectory() as tmp:
    ctx = EncoderContext(config=cfg, workdir=tmp, mesh=mesh, info=info,
                         data=data, encoder_weights=None)
    n_train = len(data["train"][0])
    trainer = classifier.trainer_for(ctx, n_train)
    state = trainer.init_state(0, None)
    encoder = nnx.eval_shape(lambda: trainer._model(0)).encoder  # pylint: disable=protected-access
    start = ours_in_peer_names(encoder, state.params, state.rest)

    models = {dtype: reference_model(start, data["train"][0].shape[-1],
                                     info.num_classes, dtype)
              for dtype in (torch.float32, torch.float64)}

    images, labels = data["train"]
    batches = input_pipeline.make_iterator(
        images, labels, batch_size=cfg.finetune.batch_size, shuffle=True,
        repeat=True, seed=0, drop_remainder=True)
    host = [next(batches) for _ in range(args.steps)]
    device = parallel.prefetch_to_device(iter(host), 0, mesh)
    print(f"{args.dataset}: {args.steps} steps of batch "
          f"{cfg.finetune.batch_size}, full-width ResNet-18, Adam lr 1e-3")
    print(" step   ssl_jax f32   torch f32   torch f64   |jax - f64|   "
          "|torch f32 - f64|")
    for i, batch in enumerate(host):
      state, metrics = trainer.step_fn(state, next(device))
      ours = float(jax.device_get(metrics["loss"]))
      f32, f64 = (torch_step(*models[d], batch) for d in models)
      print(f" {i + 1:4d}   {ours:11.6f}   {f32:9.6f}   {f64:9.6f}   "
            f"{abs(ours - f64):11.2e}   {abs(f32 - f64):16.2e}", flush=True)

    ours = ours_in_peer_names(encoder, state.params, state.rest)
    f32, f64 = ({k: v.double().numpy() for k, v in models[d][0].state_dict().items()}
                for d in models)
    print(f"after {args.steps} steps, relative difference to torch float64 "
          "(ssl_jax f32 | torch f32):")
    for what, keys in (
        ("parameters", [k for k, _ in models[torch.float64][0].named_parameters()]),
        ("running statistics", [k for k in f64 if "running_" in k])):
      print(f"  {what:18s} median {median_diff(ours, f64, keys):.2e} | "
            f"{median_diff(f32, f64, keys):.2e}   worst "
            f"{worst_diff(ours, f64, keys):.2e} | {worst_diff(f32, f64, keys):.2e}")
    x_val = peer.to_input(data["val"][0])
    val = {"ssl_jax f32": trainer.probs(ctx, state.params, state.rest, "val")}
    for dtype, (model, _) in models.items():
      val[f"torch {str(dtype)[6:]}"] = peer.probabilities(model, x_val.to(dtype))
    ref = val.pop("torch float64")
    print("  val probabilities (eval mode), max |diff| to torch float64: " +
          ", ".join(f"{k} {np.abs(v - ref).max():.2e}" for k, v in val.items()))
    # The eval path alone: ssl_jax's trained weights and running statistics
    # in the reference model must give ssl_jax's probabilities.
    same, _ = reference_model(ours, x_val.shape[1], info.num_classes,
                              torch.float32)
    same_probs = peer.probabilities(same, x_val)
    print("  ssl_jax's weights in the reference model, eval mode: val "
          f"probabilities max |diff| {np.abs(same_probs - val['ssl_jax f32']).max():.2e}")


if __name__ == "__main__":
  main()
