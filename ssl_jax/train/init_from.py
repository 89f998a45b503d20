"""Start an encoder from existing weights (a natural-image ResNet or ViT, or
an earlier ssl_jax run) and continue SSL in-domain.

Continuing self-supervised training on the target modality from ImageNet
weights beats both ImageNet transfer alone and in-domain SSL from scratch
(Azizi et al. 2021, "Big Self-Supervised Models Advance Medical Image
Classification"); this module is how a run gets those weights.

Pipeline, each step a small function:
  read (by format)  -> flat {key: np.ndarray}, keys '/'-separated
  layout            -> torch tensors transposed to Flax (HWIO, [in, out])
  select            -> the `params`/`batch_stats`/`rest` collections merged,
                       the `encoder` subtree taken when there is one
  rename            -> ordered (regex, replacement) pairs; '' drops a key
  match             -> against the encoder's nnx.Param and nnx.BatchStat
                       leaves by path (e.g. 'stages/0/1/conv1/kernel',
                       'stem_bn/mean'); input channels adapted on the way
and a report: matched / missing (in model, not in file) / unexpected (in
file, not in model) / shape_mismatch / adapted / dropped, with counts.
Matched arrays go in through `encoder_weights.place`, the one way weights
reach an encoder (stage 2 loads pretrained encoders the same way).

Formats (`init_from.format`, 'auto' picks by extension or directory):
  npz      flat keys, '/' or '.' separated ('stages.0.1.conv1.kernel');
  msgpack  `flax.serialization.msgpack_serialize` of a nested dict
           (a Flax linen `{'params': ..., 'batch_stats': ...}` works);
  orbax    a directory: an ssl_jax pretraining workdir, its checkpoints/,
           or any Orbax PyTree checkpoint; only params (+ rest/batch_stats)
           are used.

Writing a rename list: keys are matched after '.' -> '/', so write regexes
against '/'-separated source keys; pairs apply in order, each to every key
(`re.sub`), and a key renamed to '' is dropped (listed under `dropped`).
`model_keys(encoder)` lists the keys to produce. E.g. a file whose backbone
sits under 'backbone/' with stages named 'layer_0', ... and a classifier:
  rename=((r'^backbone/', ''), (r'^layer_', 'stages/'), (r'^classifier/.*', ''))
Names only: a library whose convs pad differently (Flax linen 'SAME' with
stride 2, TF) loads by name but computes a slightly different function.

Named presets (`init_from.preset`) for the two most common public layouts,
PyTorch state dicts saved to npz (`np.savez(f, **{k: v.numpy() for k, v in
sd.items()})`); both imply layout='torch'. They are tested on synthetic
state dicts written in those layouts (tests/test_init_from.py), not on
downloaded weights:
  torchvision_resnet  torchvision ResNet-18/50 (same padding and v1.5
                      stride as ours); the fc classifier is dropped;
  timm_vit            timm ViT with cls-token pooling (same fused qkv
                      layout); its learned pos_embed is dropped (ours is
                      fixed 2D sin-cos), so positions differ from those the
                      weights were trained with: continue SSL before use.
The same tables, read backwards, write an ssl_jax encoder in those layouts
(`python -m ssl_jax.export`, ssl_jax/export.py).
ImageNet weights expect ImageNet-normalised RGB; our inputs are
standardised grayscale, one more reason to continue SSL in-domain.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from ssl_jax.pytree import flatten, unflatten
from ssl_jax.registry import Registry
from ssl_jax.train import checkpoint, encoder_weights

Flat = encoder_weights.Flat  # {"stages/0/0/conv1/kernel": array}
Rename = Sequence[tuple[str, str]]

# Variable collections merged by `select`; other top-level keys are ignored.
COLLECTIONS = ("params", "batch_stats", "rest")
SHOW = 10  # keys of each kind printed by `print_report`


# ------------------------------------------------------------------ readers
READERS: Registry[Callable[[str], Flat]] = Registry("init_from format")
EXTENSIONS = {".npz": "npz", ".msgpack": "msgpack", ".mpk": "msgpack",
              ".flax": "msgpack"}


def _host(flat: Mapping[str, Any]) -> Flat:
  return {k: np.asarray(v) for k, v in flat.items()}


@READERS.register("npz")
def read_npz(path: str) -> Flat:
  with np.load(path, allow_pickle=False) as f:
    return {k.replace(".", "/"): np.asarray(f[k]) for k in f.files}


@READERS.register("msgpack")
def read_msgpack(path: str) -> Flat:
  from flax import serialization
  with open(path, "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  if not isinstance(tree, Mapping):
    raise ValueError(f"{path}: msgpack holds a {type(tree).__name__}; "
                     "expected a nested dict of arrays")
  return _host({k.replace(".", "/"): v for k, v in flatten(tree).items()})


@READERS.register("orbax")
def read_orbax(path: str) -> Flat:
  """An ssl_jax workdir, a CheckpointManager root (latest step) or one
  Orbax PyTree checkpoint directory."""
  root = os.path.abspath(path)
  if os.path.isdir(os.path.join(root, "checkpoints")):
    root = os.path.join(root, "checkpoints")
  if os.path.isdir(os.path.join(root, "default")):  # one step of a manager
    root = os.path.join(root, "default")
  steps = [d for d in os.listdir(root)
           if d.isdigit() and os.path.isdir(os.path.join(root, d))]
  if steps:
    tree, _ = checkpoint.read_latest(root)
  elif os.path.exists(os.path.join(root, "_METADATA")):
    tree = checkpoint.read_pytree(root)
  else:
    raise FileNotFoundError(
        f"{root} holds no complete Orbax checkpoint: expected step folders "
        "(a checkpoints/ directory), a workdir with checkpoints/, or one "
        "PyTree checkpoint (with _METADATA)")
  if isinstance(tree, Mapping) and any(c in tree for c in COLLECTIONS):
    tree = {c: tree[c] for c in COLLECTIONS if c in tree}  # not opt_state
  return _host(flatten(tree))


def detect_format(path: str) -> str:
  if os.path.isdir(path):
    return "orbax"
  ext = os.path.splitext(path)[1].lower()
  if ext not in EXTENSIONS:
    raise ValueError(
        f"init_from.path={path!r}: cannot tell the format from {ext!r}; "
        f"set init_from.format to one of {', '.join(READERS.names())} "
        f"(auto knows {', '.join(sorted(EXTENSIONS))} and directories)")
  return EXTENSIONS[ext]


def read(path: str, fmt: str = "auto") -> tuple[Flat, str]:
  """(flat host arrays, format used); a missing path names the formats."""
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"init_from.path={path!r} does not exist; expected a .npz or "
        ".msgpack file or an Orbax checkpoint directory (formats: "
        f"{', '.join(READERS.names())})")
  fmt = detect_format(path) if fmt == "auto" else fmt
  return READERS.get(fmt)(path), fmt


# ------------------------------------------------------- layout and naming
def torch_to_flax(flat: Flat) -> Flat:
  """PyTorch `*.weight` tensors to Flax layout: Linear [out, in] -> [in, out];
  Conv [O, I, *spatial] -> [*spatial, I, O]. Norm weights (1-D) unchanged."""
  out = {}
  for key, value in flat.items():
    if key.endswith("weight") and value.ndim == 2:
      value = value.T
    elif key.endswith("weight") and value.ndim >= 3:
      value = value.transpose(tuple(range(2, value.ndim)) + (1, 0))
    out[key] = value
  return out


def flax_to_torch(flat: Flat) -> Flat:
  """The inverse of `torch_to_flax` (for export): Linear [in, out] ->
  [out, in]; Conv [*spatial, I, O] -> [O, I, *spatial]. Keys in torch naming."""
  out = {}
  for key, value in flat.items():
    if key.endswith("weight") and value.ndim == 2:
      value = value.T
    elif key.endswith("weight") and value.ndim >= 3:
      value = value.transpose((value.ndim - 1, value.ndim - 2)
                              + tuple(range(value.ndim - 2)))
    out[key] = value
  return out


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a file's tensors are laid out: `to_flax` when loading, `from_flax`
  (its inverse) when exporting."""
  to_flax: Callable[[Flat], Flat]
  from_flax: Callable[[Flat], Flat]


LAYOUTS: Registry[Layout] = Registry("init_from layout")
LAYOUTS.add("flax", Layout(to_flax=lambda flat: flat,
                           from_flax=lambda flat: flat))
LAYOUTS.add("torch", Layout(to_flax=torch_to_flax, from_flax=flax_to_torch))


def select(flat: Flat) -> tuple[Flat, list[str]]:
  """Merges the variable collections and takes the `encoder` subtree.

  A Flax variables dict ({'params', 'batch_stats'}) or an ssl_jax state
  ({'params', 'rest', 'opt_state', ...}) holds params and statistics in
  separate collections under the same module paths; they are merged (our
  BatchNorm names its params scale/bias and its statistics mean/var, so
  nothing collides). An ssl_jax model keeps its backbone under `encoder`
  next to heads the encoder does not have, so that subtree is taken.
  Returns (keys, notes on what was done).
  """
  notes = []
  tops = {k.split("/", 1)[0] for k in flat}
  if tops & set(COLLECTIONS):
    merged: Flat = {}
    for key, value in flat.items():
      top, _, rest = key.partition("/")
      if top not in COLLECTIONS or not rest:
        continue
      if rest in merged:
        raise ValueError(f"init_from: key {rest!r} is in two collections "
                         f"of {sorted(tops & set(COLLECTIONS))}")
      merged[rest] = value
    notes.append(f"merged collections {sorted(tops & set(COLLECTIONS))}")
    if tops - set(COLLECTIONS):
      notes.append(f"ignored top-level {sorted(tops - set(COLLECTIONS))}")
    flat = merged
  if any(k.startswith("encoder/") for k in flat):
    flat = {k[len("encoder/"):]: v for k, v in flat.items()
            if k.startswith("encoder/")}
    notes.append("took the 'encoder' subtree")
  return flat, notes


def rename(flat: Flat, pairs: Rename) -> tuple[Flat, list[str]]:
  """Applies every (regex, replacement) in order to every key; keys that
  become '' are dropped. Returns (renamed, dropped source keys)."""
  compiled = []
  for i, pair in enumerate(pairs):
    if len(pair) != 2:
      raise ValueError(f"init_from.rename[{i}]={pair!r}: expected a "
                       "(regex, replacement) pair")
    compiled.append((re.compile(pair[0]), pair[1]))
  out, dropped = {}, []
  for key, value in flat.items():
    new = key
    for pattern, replacement in compiled:
      new = pattern.sub(replacement, new)
    if not new:
      dropped.append(key)
      continue
    if new in out:
      raise ValueError(f"init_from.rename maps two source keys to {new!r} "
                       f"(one is {key!r})")
    out[new] = value
  return out, sorted(dropped)


# Placeholders a preset's names may use; both sides of a pair share them.
GROUPS = {"conv": r"conv\d?", "bn": r"bn\d?", "norm": r"norm\d?",
          "fc": r"fc\d"}


def _rule(src: str, dst: str) -> tuple[str, str]:
  """A (regex, replacement) pair for `rename` from two key fragments:
  '^' / '$' anchor a fragment, '{conv}' etc. (GROUPS) stand for the same
  text on both sides, everything else is literal."""
  pattern, replacement = "", ""
  for part in re.split(r"(\{\w+\})", src):
    name = part[1:-1]
    pattern += (f"(?P<{name}>{GROUPS[name]})" if part[:1] == "{"
                else re.escape(part).replace(r"\^", "^").replace(r"\$", "$"))
  for part in re.split(r"(\{\w+\})", dst.strip("^$")):
    replacement += rf"\g<{part[1:-1]}>" if part[:1] == "{" else part
  return pattern, replacement


@dataclasses.dataclass(frozen=True)
class Preset:
  """A public layout, one table for both directions.

  `names` pairs (theirs, ours) key fragments (see `_rule`): loading applies
  them theirs -> ours in order, after dropping keys matching a `drop` regex
  (their classifier, ...); exporting applies them ours -> theirs in reverse
  order (`inverse`), so each direction undoes the other.
  """
  names: tuple[tuple[str, str], ...]
  layout: str
  drop: tuple[str, ...] = ()

  @property
  def rename(self) -> tuple[tuple[str, str], ...]:
    """(regex, replacement) pairs, theirs -> ours, for `rename`."""
    return (tuple((d, "") for d in self.drop)
            + tuple(_rule(theirs, ours) for theirs, ours in self.names))

  @property
  def inverse(self) -> tuple[tuple[str, str], ...]:
    """(regex, replacement) pairs, ours -> theirs, for `rename`."""
    return tuple(_rule(ours, theirs) for theirs, ours in reversed(self.names))


PRESETS: Registry[Preset] = Registry("init_from preset")
PRESETS.add("torchvision_resnet", Preset(layout="torch", drop=(
    r"^fc/.*$",                                # the ImageNet classifier
    r"^.*/num_batches_tracked$",
), names=(
    ("^conv1/", "^stem_conv/"),
    ("^bn1/", "^stem_bn/"),
    ("^layer1/", "^stages/0/"), ("^layer2/", "^stages/1/"),
    ("^layer3/", "^stages/2/"), ("^layer4/", "^stages/3/"),
    ("/downsample/0/", "/shortcut/conv/"),
    ("/downsample/1/", "/shortcut/bn/"),
    ("{conv}/weight$", "{conv}/kernel$"),
    ("{bn}/weight$", "{bn}/scale$"),
    ("/running_mean$", "/mean$"),
    ("/running_var$", "/var$"),
)))
PRESETS.add("timm_vit", Preset(layout="torch", drop=(
    r"^head/.*$",                              # the ImageNet classifier
    r"^pos_embed$",                            # ours: fixed sin-cos
), names=(
    ("^patch_embed/proj/", "^patch_embed/"),
    ("/mlp/{fc}/", "/{fc}/"),
    ("{norm}/weight$", "{norm}/scale$"),
    ("/weight$", "/kernel$"),
)))


# ------------------------------------------------- channels and matching
def _sum(k):
  return k.sum(axis=-2, keepdims=True)


def _mean(k):
  return k.mean(axis=-2, keepdims=True)


def _first(k):
  return k[..., :1, :]


# How an RGB kernel becomes a 1-channel one. 'sum' (the default, as timm's
# adapt_input_conv): the gray-model's response to an image g equals the RGB
# model's response to (g, g, g), so every later layer, and the pretrained
# BatchNorm statistics, see the activation scale they were trained on.
# 'mean' gives 1/C of that (BatchNorm in train mode re-normalises it; a
# ViT's residual stream does not). 'first' keeps the red channel only.
CHANNEL_MODES: Registry[Callable[[np.ndarray], np.ndarray]] = Registry(
    "init_from.channels")
CHANNEL_MODES.add("sum", _sum)
CHANNEL_MODES.add("mean", _mean)
CHANNEL_MODES.add("first", _first)


def adapt_in_channels(kernel: np.ndarray, channels: int, mode: str
                      ) -> np.ndarray:
  """A conv kernel [..., I, O] with I input channels for a `channels`-input
  model. C -> 1 by `mode`; otherwise (1 -> 3, 3 -> 4, ...) the channels are
  repeated cyclically and scaled by I / channels, so an image whose channels
  are all equal still gives the source response (timm's rule)."""
  src = kernel.shape[-2]
  if src == channels:
    return kernel
  if channels == 1:
    return CHANNEL_MODES.get(mode)(kernel)
  reps = -(-channels // src)
  tiled = np.tile(kernel, (1,) * (kernel.ndim - 2) + (reps, 1))
  return tiled[..., :channels, :] * (src / channels)


def _adaptable(src: tuple, dst: tuple) -> bool:
  """Conv kernels (rank >= 3) that differ only in input channels."""
  return (len(src) == len(dst) >= 3 and src[:-2] == dst[:-2]
          and src[-1] == dst[-1] and src[-2] != dst[-2])


def match(target: Mapping[str, Any], source: Flat, *, channels: str = "sum"
          ) -> tuple[Flat, dict]:
  """Source arrays for the model's keys, cast to the model's dtypes.

  `target` maps model keys to anything with .shape and .dtype. Returns
  (loaded: key -> array for every matched or adapted key, report).
  `channels='none'` turns channel adaptation off (a shape mismatch then).
  """
  loaded, mismatch, adapted = {}, {}, {}
  for key in sorted(set(target) & set(source)):
    want, src = target[key], source[key]
    dst_shape, src_shape = tuple(want.shape), tuple(src.shape)
    if src_shape != dst_shape and channels != "none" and _adaptable(
        src_shape, dst_shape):
      src = adapt_in_channels(src, dst_shape[-2], channels)
      adapted[key] = (f"{src_shape[-2]}->{dst_shape[-2]} input channels "
                      f"({channels})")
    if tuple(src.shape) != dst_shape:
      mismatch[key] = {"file": list(src_shape), "model": list(dst_shape)}
      continue
    loaded[key] = np.asarray(src, dtype=want.dtype)
  missing = sorted(set(target) - set(source))
  unexpected = sorted(set(source) - set(target))
  matched = sorted(set(loaded) - set(adapted))
  report = {
      "counts": {"model": len(target), "file": len(source),
                 "matched": len(matched), "adapted": len(adapted),
                 "missing": len(missing), "unexpected": len(unexpected),
                 "shape_mismatch": len(mismatch)},
      "matched": matched, "adapted": adapted, "missing": missing,
      "unexpected": unexpected, "shape_mismatch": mismatch}
  return loaded, report


def check_strict(report: dict) -> None:
  bad = {k: report[k] for k in ("missing", "unexpected", "shape_mismatch")
         if report[k]}
  if bad:
    lines = [f"  {k} ({len(v)}): {', '.join(map(str, list(v)[:50]))}"
             for k, v in bad.items()]
    raise ValueError(f"init_from.strict: {report.get('path', '')} does not "
                     "fit the encoder:\n" + "\n".join(lines))


def print_report(report: dict, show: int = SHOW) -> None:
  c = report["counts"]
  print(f"init_from {report.get('path', '')}: {c['matched']} matched, "
        f"{c['adapted']} adapted, {c['missing']} missing, {c['unexpected']} "
        f"unexpected, {c['shape_mismatch']} shape mismatches, "
        f"{len(report.get('dropped', []))} dropped "
        f"(model {c['model']} leaves, file {c['file']})", flush=True)
  for kind in ("adapted", "missing", "unexpected", "shape_mismatch", "dropped"):
    keys = list(report.get(kind, []))
    if keys:
      more = f" ... +{len(keys) - show}" if len(keys) > show else ""
      print(f"  {kind}: {', '.join(keys[:show])}{more}", flush=True)


# ------------------------------------------------------------- the model
def model_arrays(encoder: nnx.Module) -> dict[str, Any]:
  """The encoder's loadable leaves by key: nnx.Param and nnx.BatchStat."""
  state = nnx.state(encoder, nnx.Any(nnx.Param, nnx.BatchStat))
  return flatten(nnx.to_pure_dict(state))


def model_keys(encoder: nnx.Module) -> list[str]:
  """The keys a rename list must produce, e.g. 'stages/0/0/conv1/kernel'."""
  return sorted(model_arrays(encoder))


def save(path: str, flat: Mapping[str, Any]) -> None:
  """Writes flat arrays as .npz (keys as given) or .msgpack (nested)."""
  fmt = detect_format(path)
  host = _host(flat)
  if fmt == "npz":
    np.savez(path, **host)
  else:
    from flax import serialization
    with open(path, "wb") as f:
      f.write(serialization.msgpack_serialize(unflatten(host)))


def check_names(cfg: Mapping) -> None:
  """Fails before any file is read on an unknown format/preset/layout/mode."""
  if cfg.get("format", "auto") != "auto":
    READERS.get(cfg["format"])
  if cfg.get("preset"):
    PRESETS.get(cfg["preset"])
  if cfg.get("layout", "auto") != "auto":
    LAYOUTS.get(cfg["layout"])
  if cfg.get("channels", "sum") != "none":
    CHANNEL_MODES.get(cfg.get("channels", "sum"))


def load_source(cfg: Mapping, target: Mapping[str, Any]) -> tuple[Flat, dict]:
  """Reads `cfg` (the `init_from` config block) and matches it to `target`.
  Prints the report; `strict` raises on any missing/unexpected/mismatch."""
  check_names(cfg)
  preset = PRESETS.get(cfg["preset"]) if cfg.get("preset") else None
  layout = cfg.get("layout", "auto")
  if layout == "auto":
    layout = preset.layout if preset else "flax"
  flat, fmt = read(cfg["path"], cfg.get("format", "auto"))
  flat = LAYOUTS.get(layout).to_flax({k.replace(".", "/"): v for k, v in flat.items()})
  flat, notes = select(flat)
  pairs = tuple(preset.rename if preset else ()) + tuple(
      tuple(p) for p in cfg.get("rename", ()) or ())
  flat, dropped = rename(flat, pairs)
  loaded, report = match(target, flat, channels=cfg.get("channels", "sum"))
  report = {"path": os.path.abspath(cfg["path"]), "format": fmt,
            "layout": layout, "preset": cfg.get("preset", ""),
            "notes": notes, **report, "dropped": dropped}
  if jax.process_index() == 0:
    print_report(report)
  if cfg.get("strict", False):
    check_strict(report)
  return loaded, report


def load_into_module(encoder: nnx.Module, cfg: Mapping) -> dict:
  """Loads `cfg.path` into a live encoder in place; returns the report."""
  loaded, report = load_source(cfg, model_arrays(encoder))
  encoder_weights.into_module(encoder, loaded)
  return report


def load_into_state(state, cfg: Mapping):
  """The train state with the encoder (and its EMA teacher copies) loaded
  from `cfg.path`, every array keeping its sharding (encoder_weights).

  Returns (state, report); report['applied_to'] counts leaves per subtree.
  """
  target = encoder_weights.encoder_leaves(
      {"params": nnx.to_pure_dict(state.params),
       "rest": nnx.to_pure_dict(state.rest)})
  loaded, report = load_source(cfg, target)
  state, report["applied_to"] = encoder_weights.into_state(state, loaded)
  return state, report


def load_encoder_weights(config, info) -> tuple[Flat, dict]:
  """The config's encoder (seeded by `config.seed`) with `config.init_from`
  loaded, as flat host weights (what `encoder_weights.read` gives for an
  ssl_jax workdir), and the report. Keys the file lacks keep their seeded
  random init."""
  from ssl_jax.objectives import base  # local: objectives import train/
  encoder = base.build_encoder(config, info, nnx.Rngs(config.seed))
  report = load_into_module(encoder, config.init_from)
  return encoder_weights.of_module(encoder), report
