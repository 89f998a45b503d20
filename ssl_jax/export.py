"""Encoders out: a pretraining workdir's encoder as a PyTorch state_dict.

  python -m ssl_jax.export WORKDIR --format=torch [--out=FILE]

writes `torch.save` of {name: tensor} (default WORKDIR/encoder.pt) in
torchvision's ResNet naming (conv1, bn1, layer1.0.conv1, ...,
downsample.0/1, running_mean/var, num_batches_tracked) or timm's ViT naming
(patch_embed.proj, cls_token, pos_embed, blocks.i.attn.qkv, ..., norm).
`--format=npz` writes the same names and arrays with numpy only (default
WORKDIR/encoder.npz); torch is imported only for --format=torch.

The encoder is read as the fine-tune job reads it (config.json and the
latest Orbax checkpoint, `encoder_weights.read`), and mapped by
`init_from`'s presets `torchvision_resnet` / `timm_vit` read backwards (the
same rename table and `Layout`, see init_from.Preset), so `init_from` with
that preset loads the file back to the same encoder (tests/test_export.py).

What the PyTorch model must look like for `load_state_dict(strict=True)`:
  ResNet  torchvision's resnet18/resnet50 with `fc = nn.Identity()`. Our
          ImageNet stem (images over 64 px) is torchvision's; the small stem
          (<= 64 px, e.g. MedMNIST) is a 3x3 stride-1 conv1 and no max-pool,
          so set `conv1 = nn.Conv2d(C, 64 * m, 3, 1, 1, bias=False)` and
          `maxpool = nn.Identity()`, as MedMNIST users do. A grayscale run's
          conv1 has 1 input channel either way. Only width_multiplier=1 has
          torchvision's widths. `num_batches_tracked` is written as 0 (unused
          while BatchNorm's momentum is set, torch's default).
  ViT     timm's VisionTransformer(img_size, patch_size, in_chans, embed_dim,
          depth, num_heads, mlp_ratio, num_classes=0); pool='mean' is timm's
          global_pool='avg', fc_norm=False. `pos_embed` is our fixed sin-cos
          with a zero cls position (the MAE convention), so timm computes
          the same function.
Inputs as in ssl_jax: (uint8 / 255 - 0.5) / 0.5, NCHW in torch. 3D
backbones have no torchvision/timm layout and are refused.
"""
from __future__ import annotations

import argparse
import os
import re
import types
from typing import Callable, Sequence

import numpy as np
from flax import nnx

from ssl_jax.models import resnet
from ssl_jax.registry import Registry
from ssl_jax.train import encoder_weights, init_from

Flat = init_from.Flat
FORMATS = ("torch", "npz")
EXTENSION = {"torch": ".pt", "npz": ".npz"}


def _batches_tracked(encoder: nnx.Module, theirs: Flat) -> Flat:
  """torchvision's BatchNorm buffer, which init_from drops."""
  del encoder
  return {k.replace("/running_mean", "/num_batches_tracked"): np.array(0, np.int64)
          for k in theirs if k.endswith("/running_mean")}


def _pos_embed(encoder: nnx.Module, theirs: Flat) -> Flat:
  """timm's learned [1, 1 + N, D] positions: ours are fixed sin-cos (zero
  for the cls token), which init_from drops on the way in."""
  pos = encoder.position_embedding()
  cls = np.zeros((1, pos.shape[1]), pos.dtype)
  return {"pos_embed": np.concatenate([cls, pos])[None].astype(
      theirs["cls_token"].dtype)}


# Backbone class -> (init_from preset, keys the preset drops but torch needs).
TARGETS: Registry[tuple[str, Callable[[nnx.Module, Flat], Flat]]] = Registry(
    "export target")
TARGETS.add("ResNet", ("torchvision_resnet", _batches_tracked))
TARGETS.add("VisionTransformer", ("timm_vit", _pos_embed))


def _natural(key: str) -> list:
  """'layer10' after 'layer2': digits compare as numbers."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def read_encoder(workdir: str):
  """(pretraining config, abstract encoder, flat encoder arrays, step).

  The encoder is rebuilt shape-only from config.json, with the input
  channels its checkpoint holds and image_size = data.size, so no data is
  read; its keys and shapes must be the checkpoint's.
  """
  from ssl_jax.jobs import common
  from ssl_jax.objectives import base
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"{workdir} has no config.json: export reads the "
                            "workdir of a pretraining job")
  config = common.load_config(workdir)
  name = config.model.name
  if config.model.get("spatial_dims", 2) != 2 or name.endswith("_3d"):
    raise ValueError(f"{workdir}: model.name={name!r} is 3D; torchvision and "
                     "timm have no 3D layout to export to")
  ckpt = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt) or not any(d.isdigit() for d in os.listdir(ckpt)):
    raise FileNotFoundError(f"{workdir} has no checkpoint ({ckpt} holds no "
                            "step): export reads a pretraining workdir")
  flat, step = encoder_weights.read(workdir)
  stems = [v for k, v in flat.items()
           if k in ("stem_conv/kernel", "patch_embed/kernel")]
  if not stems:
    raise ValueError(f"{workdir}: model.name={name!r} has neither a ResNet "
                     "stem_conv nor a ViT patch_embed; export supports "
                     f"{', '.join(TARGETS.names())}")
  info = types.SimpleNamespace(num_channels=stems[0].shape[-2],
                               image_size=config.data.size)
  encoder = nnx.eval_shape(
      lambda: base.build_encoder(config, info, nnx.Rngs(0)))
  want = {k: tuple(v.shape) for k, v in init_from.model_arrays(encoder).items()}
  got = {k: tuple(v.shape) for k, v in flat.items()}
  if want != got:
    bad = sorted(set(want) ^ set(got)) + sorted(
        k for k in set(want) & set(got) if want[k] != got[k])
    raise ValueError(f"{workdir}: the checkpoint's encoder does not fit "
                     f"config.json's model ({name}): {', '.join(bad[:10])}")
  return config, encoder, flat, step


def to_public(encoder: nnx.Module, flat: Flat) -> tuple[Flat, str]:
  """Our encoder's arrays in torchvision/timm names ('.'-separated) and
  layout, and the preset that reads them back."""
  kind = type(encoder).__name__
  if kind not in TARGETS:
    raise ValueError(f"export: backbone {kind} has no PyTorch layout; "
                     f"supported: {', '.join(TARGETS.names())}")
  preset_name, fill = TARGETS.get(kind)
  preset = init_from.PRESETS.get(preset_name)
  theirs, dropped = init_from.rename(flat, preset.inverse)
  assert not dropped, dropped
  theirs = init_from.LAYOUTS.get(preset.layout).from_flax(theirs)
  extra = fill(encoder, theirs)
  # The preset read forwards must give our names back: the file loads.
  back, dropped = init_from.rename({**theirs, **extra}, preset.rename)
  if set(back) != set(flat) or sorted(dropped) != sorted(extra):
    raise AssertionError(f"export: preset {preset_name} is not its own "
                         f"inverse on {sorted(set(back) ^ set(flat))[:10]}")
  out = {**theirs, **extra}
  return {k.replace("/", "."): np.ascontiguousarray(out[k])
          for k in sorted(out, key=_natural)}, preset_name


def write(path: str, state_dict: Flat, fmt: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if fmt == "npz":
    np.savez(path, **state_dict)
    return
  import torch  # optional: only this format needs it
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
             path)


def export(workdir: str, fmt: str = "torch", out: str | None = None) -> str:
  """Writes the workdir's encoder; returns the file's path."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}; allowed: {', '.join(FORMATS)}")
  config, encoder, flat, step = read_encoder(workdir)
  state_dict, preset = to_public(encoder, flat)
  out = out or os.path.join(workdir, "encoder" + EXTENSION[fmt])
  write(out, state_dict, fmt)
  notes = []
  if getattr(encoder, "small_stem", False):
    notes.append("small stem: conv1 is 3x3 stride 1 and there is no max-pool "
                 "(replace both in torchvision's model)")
  strides = getattr(encoder, "stage_strides", None)
  if strides and strides != resnet.default_stage_strides(len(strides)):
    notes.append(f"stage strides {tuple(strides)}: set layerN[0].conv1 and "
                 "layerN[0].downsample[0] strides to match")
  if getattr(encoder, "pool", "cls") == "mean":
    notes.append("pool=mean: timm global_pool='avg', fc_norm=False")
  print(f"wrote {out}: {config.model.name} step {step}, {len(state_dict)} "
        f"tensors in {preset} naming" + "".join(f"; {n}" for n in notes),
        flush=True)
  return out


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdir", help="a pretraining workdir (config.json + "
                      "checkpoints/)")
  parser.add_argument("--format", default="torch", choices=FORMATS)
  parser.add_argument("--out", default=None, help="default: WORKDIR/encoder"
                      ".pt (torch) or .npz")
  args = parser.parse_args(argv)
  export(args.workdir, args.format, args.out)


if __name__ == "__main__":
  main()
