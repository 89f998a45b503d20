"""ssl_jax against a PyTorch peer: the same pretraining step, img/s side by side.

Why: an images/s figure means little on its own. This script builds the
network, loss and optimizer of an ssl_jax config a second time in eager
PyTorch (the CPU wheel of requirements-peer.txt; nothing else imports torch)
and times both in one process on the same uint8 noise, so the ratio says how
ssl_jax's compiled step compares with what a PyTorch user would write.

  python bench/peer_torch.py --config=configs/demo.py \\
      --config.augment.policy=none --config.online_probe=False \\
      [--steps=10] [--warmup=2] [--repeats=3] [--threads=0]
  python bench/peer_torch.py --preset=all        # the README table
  python bench/peer_torch.py --preset=resnet18_full --op_profile_steps=5
      # + PyTorch's time per op kind, beside bench/op_profile.py's for XLA

Presets (--preset=NAME, or all; --config is then not needed):
  demo           configs/demo.py: SimCLR, ResNet-18 at width 1/4, 2 x 128 views
  resnet18_full  the same at width 1, 28 px, batch 64 (2 x 64 views)
  mae_vit_tiny   configs/mae.py: MAE, ViT-Ti/4 at 28 px, 75% masking
All three with --config.augment.policy=none --config.online_probe=False.

What is mirrored, read off the ssl_jax modules (parameter counts are printed
and must be equal, or the script stops): the ResNet with ssl_jax's stem
(3x3 stride 1 without max-pool up to 64 px), zero-initialised last BN of each
block, BN momentum 0.1 (= flax 0.9) and eps 1e-5; the MLP projector
(Linear-BN-ReLU ... Linear, the bias dropped before a BN); NT-Xent; the ViT
(patch conv, cls token, fixed sin-cos positions, pre-LN blocks, exact GELU,
eps 1e-6) and the MAE decoder with the per-patch normalised pixel loss on
masked patches; AdamW with weight decay on matrices only. The PyTorch step is
forward (both views in one batch, as ssl_jax), loss, backward, optimizer
step, zero_grad. The ssl_jax step also computes its logged metrics (gradient,
parameter and update norms, an accuracy: a few reductions) and its learning
rate schedule; PyTorch runs at the peak rate, which costs the same.

Only what the comparison needs is mirrored: the view policy 'none' (a view
is the standardised image, so SimCLR's two views are equal), no online
probe, float32, no gradient accumulation, AdamW; other configs fail with the
field to change.

Timing: ssl_jax through bench/throughput.py's `measure` (compile excluded,
`warmup` untimed steps, then `steps` timed); PyTorch with the same warmup and
steps. The two alternate `repeats` times and each side's best counts. A
ResNet runs in PyTorch both NCHW and channels_last; the faster is reported.
`--threads` sets PyTorch's intra-op threads (0 = every core of this
process); XLA always uses every core.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import sys
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_BENCH))
sys.path.insert(0, _BENCH)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import throughput  # noqa: E402  (bench/throughput.py: `measure`, its flags)

FLAGS = flags.FLAGS
# throughput.py defines a required --config (and --header); --preset runs
# without a config, so --config is defined again here as optional.
del FLAGS.config
del FLAGS.header
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_enum("preset", None, ["demo", "resnet18_full", "mae_vit_tiny",
                                   "all"], "A standard case, or all of them.")
flags.DEFINE_integer("repeats", 3, "Alternations of ssl_jax and PyTorch; "
                     "the best of each counts.")
flags.DEFINE_integer("threads", 0, "PyTorch threads; 0 = every core.")
flags.DEFINE_integer("op_profile_steps", 0,
                     "> 0: then run that many steps of each case's faster "
                     "PyTorch layout under torch.profiler and print its time "
                     "per step by op kind, to set beside bench/op_profile.py's "
                     "table for the same config.")

_BENCH_OVERRIDES = {"augment.policy": "none", "online_probe": False}
PRESETS = {  # name -> (config module, dotted overrides)
    "demo": ("configs.demo", _BENCH_OVERRIDES),
    "resnet18_full": ("configs.demo", dict(
        _BENCH_OVERRIDES, **{"model.width_multiplier": 1.0, "data.size": 28,
                             "train.batch_size": 64})),
    "mae_vit_tiny": ("configs.mae", dict(_BENCH_OVERRIDES,
                                         **{"data.size": 28})),
}

HEADER = ("| case | CPU model | threads | ssl_jax img/s | "
          "PyTorch img/s (layout) | ratio |\n|---|---|---:|---:|---:|---:|")


# ----------------------------------------------------------------- inputs --

def standardize(images: torch.Tensor) -> torch.Tensor:
  """uint8 [0, 255] -> float [-1, 1], as augment.to_float + standardize."""
  return (images.float() / 255.0 - 0.5) / 0.5


def torch_images(info, batch_size: int, channels_last: bool) -> torch.Tensor:
  """throughput.py's uint8 noise batch, as NCHW (optionally channels_last)."""
  nhwc = throughput.synthetic_batch(info, batch_size)["image"]
  images = torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous()
  if channels_last:
    images = images.contiguous(memory_format=torch.channels_last)
  return images


# ----------------------------------------------------------------- ResNet --

def _bn2d(channels: int, zero: bool = False) -> nn.BatchNorm2d:
  bn = nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
  if zero:
    nn.init.zeros_(bn.weight)
  return bn


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Conv2d:
  conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2,
                   bias=False)
  nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
  return conv


class BasicBlock(nn.Module):
  """Two 3x3 convs, last BN zero-initialised; 1x1 projection shortcut."""

  def __init__(self, in_ch: int, width: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv(in_ch, width, 3, stride), _bn2d(width)
    self.conv2, self.bn2 = _conv(width, width, 3, 1), _bn2d(width, zero=True)
    self.shortcut = (nn.Sequential(_conv(in_ch, width, 1, stride), _bn2d(width))
                     if stride != 1 or in_ch != width else nn.Identity())

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
  """Stem, stages of BasicBlocks, global average pool (no classifier)."""

  def __init__(self, in_ch: int, base: int, stage_sizes, small_stem: bool):
    super().__init__()
    if small_stem:
      stem = [_conv(in_ch, base, 3, 1), _bn2d(base), nn.ReLU()]
    else:
      stem = [_conv(in_ch, base, 7, 2), _bn2d(base), nn.ReLU(),
              nn.MaxPool2d(3, 2, padding=1)]
    layers, ch = stem, base
    for i, n_blocks in enumerate(stage_sizes):
      for j in range(n_blocks):
        layers.append(BasicBlock(ch, base * 2**i, 2 if i > 0 and j == 0 else 1))
        ch = base * 2**i
    self.body = nn.Sequential(*layers)

  def forward(self, x):
    return self.body(x).mean(dim=(2, 3))


def resnet_like(encoder, in_ch: int) -> ResNet:
  """The PyTorch twin of an (abstract) ssl_jax ResNet encoder."""
  from ssl_jax.models import resnet  # noqa: PLC0415
  blocks = [b for stage in encoder.stages for b in stage]
  if encoder.spatial_dims != 2 or not all(
      isinstance(b, resnet.BasicBlock) for b in blocks):
    raise NotImplementedError("the peer mirrors 2D BasicBlock ResNets "
                              "(resnet18); set config.model.name=resnet18")
  base = encoder.stem_conv.kernel.shape[-1]  # [k, k, C_in, C_out]
  return ResNet(in_ch, base, encoder.stage_sizes, encoder.small_stem)


def mlp_head(obj, in_dim: int) -> nn.Sequential:
  """ssl_jax's MLPHead: (Linear -> BN -> ReLU) x (L - 1), Linear [-> BN]."""
  use_bn, last_bn = obj.get("proj_bn", True), obj.get("proj_last_bn", False)
  dims = [in_dim] + [obj.proj_hidden_dim] * (obj.proj_layers - 1) + [
      obj.proj_dim]
  layers = []
  for i in range(obj.proj_layers):
    last = i == obj.proj_layers - 1
    bn = use_bn and (not last or last_bn)
    layers.append(nn.Linear(dims[i], dims[i + 1], bias=not bn))
    if bn:
      layers.append(nn.BatchNorm1d(dims[i + 1], eps=1e-5, momentum=0.1,
                                   affine=not last))
    if not last:
      layers.append(nn.ReLU())
  return nn.Sequential(*layers)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
  """NT-Xent over 2N views: one positive, 2N - 2 negatives each."""
  n = z1.shape[0]
  z = F.normalize(torch.cat([z1, z2]), dim=1)
  logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
  positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
  return F.cross_entropy(logits, positive)


class SimCLR(nn.Module):
  """uint8 images -> NT-Xent loss of the two (here identical) views."""

  def __init__(self, encoder, projector, temperature: float,
               channels_last: bool):
    super().__init__()
    self.encoder, self.projector = encoder, projector
    self.temperature = temperature
    self.memory_format = (torch.channels_last if channels_last
                          else torch.contiguous_format)

  def forward(self, images):
    x = standardize(images)
    x = torch.cat([x, x]).contiguous(memory_format=self.memory_format)
    z1, z2 = self.projector(self.encoder(x)).chunk(2)
    return nt_xent(z1, z2, self.temperature)


def simclr_like(config, info, jax_net, channels_last: bool) -> nn.Module:
  encoder = resnet_like(jax_net.encoder, info.num_channels)
  projector = mlp_head(config.objective, jax_net.encoder.feature_dim)
  model = SimCLR(encoder, projector, config.objective.temperature,
                 channels_last)
  return model.to(memory_format=torch.channels_last) if channels_last else model


# -------------------------------------------------------------------- MAE --

def _linear(in_dim: int, out_dim: int) -> nn.Linear:
  """Xavier-uniform weight, zero bias (ssl_jax's ViT and MAE decoder)."""
  layer = nn.Linear(in_dim, out_dim)
  nn.init.xavier_uniform_(layer.weight)
  nn.init.zeros_(layer.bias)
  return layer


def _token(dim: int) -> nn.Parameter:
  return nn.Parameter(torch.randn(1, 1, dim) * 0.02)


class Block(nn.Module):
  """Pre-LN transformer block, fused qkv, exact GELU MLP."""

  def __init__(self, dim: int, heads: int, mlp_dim: int):
    super().__init__()
    self.heads = heads
    self.norm1, self.norm2 = (nn.LayerNorm(dim, eps=1e-6),
                              nn.LayerNorm(dim, eps=1e-6))
    self.qkv, self.proj = _linear(dim, 3 * dim), _linear(dim, dim)
    self.fc1, self.fc2 = _linear(dim, mlp_dim), _linear(mlp_dim, dim)

  def attention(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(
        2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.proj(out.transpose(1, 2).reshape(b, n, d))

  def forward(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _blocks(jax_blocks) -> nn.ModuleList:
  """Blocks shaped like ssl_jax's (width, heads, MLP width read off them)."""
  blocks = []
  for b in jax_blocks:
    dim, mlp_dim = b.fc1.kernel.shape  # [in, out]
    blocks.append(Block(dim, b.attn.num_heads, mlp_dim))
  return nn.ModuleList(blocks)


def _sincos(grid: int, dim: int) -> torch.Tensor:
  from ssl_jax.models.vit import sincos  # noqa: PLC0415  (numpy constant)
  return torch.from_numpy(sincos((grid, grid), dim))


class ViTEncoder(nn.Module):
  """Patch conv + fixed positions; cls token (position zero), blocks, LN."""

  def __init__(self, jax_vit, in_ch: int):
    super().__init__()
    p, dim = jax_vit.patch_size, jax_vit.hidden_dim
    self.patch_embed = nn.Conv2d(in_ch, dim, p, stride=p)
    nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
    nn.init.zeros_(self.patch_embed.bias)
    self.cls_token = _token(dim)
    self.register_buffer("pos", _sincos(jax_vit.grid_size, dim))
    self.blocks = _blocks(jax_vit.blocks)
    self.norm = nn.LayerNorm(dim, eps=1e-6)

  def embed_patches(self, x):
    return self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos

  def encode_tokens(self, tokens):
    x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], 1)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)


class MAEDecoder(nn.Module):
  """Embed visible latents, fill mask tokens, unshuffle, predict pixels."""

  def __init__(self, jax_dec):
    super().__init__()
    dim = jax_dec.decoder_dim
    self.embed = _linear(jax_dec.embed.kernel.shape[0], dim)
    self.mask_token = _token(dim)
    self.register_buffer("pos", _sincos(jax_dec.grid_size, dim))
    self.blocks = _blocks(jax_dec.blocks)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.pred = _linear(dim, jax_dec.pred.kernel.shape[1])

  def forward(self, latent, ids_restore):
    x = self.embed(latent)
    b, n = ids_restore.shape
    mask = self.mask_token.expand(b, n - (x.shape[1] - 1), -1)
    patches = torch.cat([x[:, 1:], mask], 1)
    patches = torch.gather(
        patches, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([x[:, :1], patches + self.pos], 1)
    for block in self.blocks:
      x = block(x)
    return self.pred(self.norm(x))[:, 1:]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
  """NCHW -> [B, N, p*p*C], rows then columns, pixels as (p, q, c)."""
  b, c, h, w = x.shape
  x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def random_masking(batch: int, num_patches: int, num_keep: int):
  """(ids_keep [B, K], mask [B, N] with 1 = masked, ids_restore [B, N])."""
  ids_shuffle = torch.rand(batch, num_patches).argsort(dim=1)
  ids_restore = ids_shuffle.argsort(dim=1)
  mask = (ids_restore >= num_keep).float()
  return ids_shuffle[:, :num_keep], mask, ids_restore


def mae_loss(pred, target, mask, norm_pix: bool):
  """MSE on masked patches; targets normalised per patch."""
  if norm_pix:
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=False)
    target = (target - mean) / torch.sqrt(var + 1e-6)
  per_patch = ((pred - target) ** 2).mean(dim=-1)
  return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


class MAE(nn.Module):
  """uint8 images -> MAE loss: encode visible patches, decode all."""

  def __init__(self, encoder, decoder, patch_size: int, num_keep: int,
               norm_pix: bool):
    super().__init__()
    self.encoder, self.decoder = encoder, decoder
    self.patch_size, self.num_keep, self.norm_pix = (patch_size, num_keep,
                                                     norm_pix)

  def forward(self, images):
    x = standardize(images)
    tokens = self.encoder.embed_patches(x)
    b, n, d = tokens.shape
    ids_keep, mask, ids_restore = random_masking(b, n, self.num_keep)
    visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))
    pred = self.decoder(self.encoder.encode_tokens(visible), ids_restore)
    return mae_loss(pred, patchify(x, self.patch_size), mask, self.norm_pix)


def mae_like(config, info, jax_net, channels_last: bool) -> nn.Module:
  del channels_last  # One layout: the patch conv is a reshape + matmul.
  from ssl_jax.objectives import base, self_prediction  # noqa: PLC0415
  vit, obj = jax_net.encoder, config.objective
  n = vit.num_patches
  min_visible = base.augment_policy(config).min_visible
  num_keep = min(n, max(1, int(round(n * (1.0 - obj.mask_ratio))),
                        self_prediction.min_count(n, min_visible)))
  return MAE(ViTEncoder(vit, info.num_channels), MAEDecoder(jax_net.decoder),
             vit.patch_size, num_keep, obj.norm_pix_loss)


PEERS = {"simclr": simclr_like, "mae": mae_like}  # objective -> builder


# ------------------------------------------------------- build and measure --

def check_mirrorable(config) -> None:
  """Fails on a config the peer does not mirror, naming the field."""
  wanted = {"augment.policy": (config.augment.policy, "none"),
            "online_probe": (config.online_probe, False),
            "train.compute_dtype": (config.train.compute_dtype, "float32"),
            "train.grad_accum_steps": (config.train.grad_accum_steps, 1),
            "optim.name": (config.optim.name, "adamw")}
  for field, (value, needed) in wanted.items():
    if value != needed:
      raise ValueError(f"the PyTorch peer needs --config.{field}={needed} "
                       f"(got {value!r})")
  if config.objective.name not in PEERS:
    raise ValueError(f"no PyTorch peer for objective "
                     f"{config.objective.name!r}; have {sorted(PEERS)}")


def jax_net_of(config, info):
  """The config's ssl_jax model, abstract (shapes only, nothing computed)."""
  from flax import nnx  # noqa: PLC0415
  from ssl_jax import objectives  # noqa: PLC0415
  bound = objectives.bind(config, info)
  return nnx.eval_shape(lambda: bound.build_model(nnx.Rngs(config.seed)))


def jax_param_count(net) -> int:
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  return sum(math.prod(x.shape)
             for x in jax.tree.leaves(nnx.state(net, nnx.Param)))


def torch_param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def adamw(model: nn.Module, config) -> torch.optim.AdamW:
  """ssl_jax's AdamW: decay on matrices/kernels only, peak learning rate."""
  cfg, batch = config.optim, config.train.batch_size
  lr = cfg.lr * (batch / 256 if cfg.get("scale_by_batch", False) else 1.0)
  params = list(model.parameters())
  groups = [{"params": [p for p in params if p.ndim > 1],
             "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1],
             "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=lr, betas=(cfg.get("b1", 0.9),
                                                 cfg.get("b2", 0.999)),
                           eps=1e-8)


@dataclasses.dataclass
class Peer:
  """One PyTorch twin in one memory layout, ready to step."""
  layout: str
  model: nn.Module
  optimizer: torch.optim.Optimizer
  images: torch.Tensor
  clip_norm: float

  def step(self) -> None:
    loss = self.model(self.images)
    loss.backward()
    if self.clip_norm:
      nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.optimizer.step()
    self.optimizer.zero_grad()

  def images_per_s(self, *, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, cores busy: process CPU seconds per wall second)."""
    for _ in range(warmup):
      self.step()
    began, cpu_began = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.step()
    wall = time.perf_counter() - began
    return len(self.images) * steps / wall, (time.process_time() - cpu_began) / wall


def build_peers(config, info, jax_net) -> list[Peer]:
  """NCHW, plus channels_last for convolutional encoders."""
  convolutional = config.objective.name == "simclr"
  layouts = ["NCHW", "channels_last"] if convolutional else ["NCHW"]
  peers = []
  for layout in layouts:
    channels_last = layout == "channels_last"
    model = PEERS[config.objective.name](config, info, jax_net, channels_last)
    model.train()
    peers.append(Peer(layout, model, adamw(model, config),
                      torch_images(info, config.train.batch_size,
                                   channels_last),
                      config.optim.get("grad_clip_norm", 0.0)))
  return peers


def run_case(name: str, config, *, steps: int, warmup: int,
             repeats: int) -> dict:
  """Checks the twin's size, then alternates ssl_jax and PyTorch timings."""
  import data_pipelines  # noqa: PLC0415  (facts only: no files, no TF)
  check_mirrorable(config)
  info = data_pipelines.info(config.data.name, config.data.size)
  jax_net = jax_net_of(config, info)
  peers = build_peers(config, info, jax_net)
  counts = (jax_param_count(jax_net), torch_param_count(peers[0].model))
  print(f"{name}: parameters ssl_jax {counts[0]:,}, PyTorch {counts[1]:,}",
        flush=True)
  if counts[0] != counts[1]:
    raise AssertionError(f"{name}: the PyTorch peer has {counts[1]:,} "
                         f"parameters, ssl_jax {counts[0]:,}: not the same net")
  # (images/s, cores busy) of the fastest repeat
  best_jax, best_torch = (0.0, 0.0), {p.layout: (0.0, 0.0) for p in peers}
  for _ in range(repeats):
    result = throughput.measure(config, steps=steps, warmup=warmup)
    best_jax = max(best_jax, (result["images_per_s"], result["cores_busy"]))
    for peer in peers:
      best_torch[peer.layout] = max(
          best_torch[peer.layout],
          peer.images_per_s(steps=steps, warmup=warmup))
  layout = max(best_torch, key=best_torch.get)
  if FLAGS.op_profile_steps > 0:
    print_torch_op_profile(name, next(p for p in peers if p.layout == layout),
                           FLAGS.op_profile_steps)
  return {"case": name, "jax": best_jax[0], "torch": best_torch[layout][0],
          "jax_busy": best_jax[1], "torch_busy": best_torch[layout][1],
          "layout": layout,
          "all_layouts": {k: v[0] for k, v in best_torch.items()}}


# ------------------------------------------------------------ op profile --

# aten op name -> kind, first match wins; coarse groups to read beside
# bench/op_profile.py's XLA kinds (its convs are custom calls, its BatchNorm
# elementwise fusions and gemvs). AdamW may run as plain elementwise ops,
# which then count as elementwise, not optimizer.
_TORCH_KINDS = (
    ("convolution", r"conv"),
    ("batch norm", r"batch_norm"),
    ("dot", r"addmm|\bmm\b|matmul|linear|bmm"),
    ("optimizer", r"_foreach|adam"),
    ("elementwise", r"relu|threshold|add|mul|sub|div|sqrt|exp|neg|copy|fill|"
                    r"zero|clamp|where|pow"),
    ("reduction", r"sum|mean|norm|max|min|softmax"),
)


def torch_op_kind(name: str) -> str:
  for kind, pattern in _TORCH_KINDS:
    if re.search(pattern, name):
      return kind
  return "other"


def torch_op_profile(peer: Peer, steps: int) -> tuple[float, dict[str, float],
                                                      list[tuple[str, float]]]:
  """(step ms, {kind: ms per step}, [(op, ms per step)] slowest first) of
  `steps` PyTorch steps: each aten op's self CPU time in the calling thread,
  which holds its intra-op parallel work, so the kinds sum to the step."""
  from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
  peer.step()
  began = time.perf_counter()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      peer.step()
  step_ms = 1e3 * (time.perf_counter() - began) / steps
  per_op = {e.key: e.self_cpu_time_total / 1e3 / steps
            for e in prof.key_averages()}
  kinds: dict[str, float] = {}
  for name, ms in per_op.items():
    kind = torch_op_kind(name)
    kinds[kind] = kinds.get(kind, 0.0) + ms
  return step_ms, kinds, sorted(per_op.items(), key=lambda kv: -kv[1])


def print_torch_op_profile(name: str, peer: Peer, steps: int) -> None:
  step_ms, kinds, ops = torch_op_profile(peer, steps)
  total = sum(kinds.values()) or 1.0
  print(f"\n{name}, PyTorch {peer.layout}: step {step_ms:.1f} ms under the "
        f"profiler; ops {total:.1f} ms\n| op kind | ms / step | share |\n"
        "|---|---:|---:|")
  for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f"| {kind} | {ms:.1f} | {ms / total:.0%} |")
  print("| slowest ops: " + ", ".join(f"{op} {ms:.1f}" for op, ms in ops[:8])
        + " |")


# ------------------------------------------------------------------ report --

def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform  # noqa: PLC0415
  return platform.processor() or "unknown"


def row(r: dict, cpu: str, threads: int) -> str:
  return (f"| {r['case']} | {cpu} | {threads} | {r['jax']:.1f} | "
          f"{r['torch']:.1f} ({r['layout']}) | {r['jax'] / r['torch']:.2f} |")


def preset_config(name: str):
  module, overrides = PRESETS[name]
  config = importlib.import_module(module).get_config()
  config.update_from_flattened_dict(overrides)
  return config


def cases() -> list[tuple[str, object]]:
  """(name, config) pairs from --preset, else the one --config."""
  if FLAGS.preset == "all":
    return [(name, preset_config(name)) for name in PRESETS]
  if FLAGS.preset:
    return [(FLAGS.preset, preset_config(FLAGS.preset))]
  if FLAGS.config is None:
    raise app.UsageError("give --config=configs/X.py or --preset=NAME|all")
  filename = config_flags.get_config_filename(FLAGS["config"])
  return [(os.path.basename(filename), FLAGS.config)]


def main(argv):
  del argv
  threads = FLAGS.threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  results = [run_case(name, config, steps=FLAGS.steps, warmup=FLAGS.warmup,
                      repeats=FLAGS.repeats)
             for name, config in cases()]
  cpu = cpu_model()
  print(HEADER)
  for r in results:
    print(row(r, cpu, threads))
  print(f"\nratio = ssl_jax / PyTorch img/s; best of {FLAGS.repeats} x "
        f"{FLAGS.steps} steps; PyTorch {torch.__version__}, {threads} "
        f"threads; XLA uses every core.")
  print("cores busy in the timed steps (process CPU s per wall s): " + "; ".join(
      f"{r['case']} ssl_jax {r['jax_busy']:.2f}, PyTorch {r['torch_busy']:.2f}"
      for r in results))
  for r in results:
    if len(r["all_layouts"]) > 1:
      print(f"{r['case']} PyTorch layouts: " + ", ".join(
          f"{k} {v:.1f}" for k, v in r["all_layouts"].items()))


if __name__ == "__main__":
  app.run(main)
