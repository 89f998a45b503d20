"""Encoders out (ssl_jax/export.py): a pretraining workdir's encoder in
torchvision / timm naming. Round trip through init_from's presets to the
same encoder outputs, and, where torch is installed, torch modules shaped
like torchvision's ResNet and timm's ViT that load it strictly and compute
the same features."""
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ssl_jax import export
from ssl_jax.jobs import common
from ssl_jax.objectives import base
from ssl_jax.train import checkpoint, init_from
from ssl_jax.train.state import TrainState
from tests.tiny import tiny_config

SIZE = 16
RESNET = dict(name="resnet18", width_multiplier=0.125, stage_sizes=(1, 1, 1, 1))
VIT = dict(name="vit_tiny", depth=1, hidden_dim=32, num_heads=2, mlp_dim=64,
           patch_size=4)


def _filled(module: nnx.Module, seed: int) -> nnx.Module:
  """Arrays from numpy's seeded rng at a sensible scale (no eager init:
  it compiles an op per shape): kernels ~ 1/sqrt(fan_in), BatchNorm
  statistics non-trivial, variances positive."""
  graphdef, state = nnx.split(module)
  rng = np.random.default_rng(seed)

  def fill(key: str, leaf) -> jax.Array:
    name, shape = key.rsplit("/", 1)[-1], leaf.shape
    if name == "var":
      value = rng.uniform(0.5, 2.0, shape)
    elif name == "kernel":
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    elif name == "scale":
      value = 1 + 0.2 * rng.normal(size=shape)
    else:
      value = 0.2 * rng.normal(size=shape)
    return jnp.asarray(value.astype(leaf.dtype))

  pure = nnx.to_pure_dict(state)
  flat = {k: fill(k, v) for k, v in init_from.flatten(pure).items()}
  nnx.replace_by_pure_dict(state, init_from.unflatten(flat))
  return nnx.merge(graphdef, state)


def _config(model: dict):
  """The tiny pretraining config with `model` as its model section."""
  config = tiny_config()
  config.model = ml_collections.ConfigDict(model)
  config.data.size = SIZE
  return config


def _encoder(config, channels: int, seed: int) -> nnx.Module:
  info = types.SimpleNamespace(num_channels=channels, image_size=config.data.size)
  return _filled(nnx.eval_shape(
      lambda: base.build_encoder(config, info, nnx.Rngs(0))), seed)


class _Pretrained(nnx.Module):
  """A pretraining model's shape: the encoder beside a head."""

  def __init__(self, encoder: nnx.Module):
    self.encoder = encoder
    self.projector = nnx.Linear(2, 3, rngs=nnx.Rngs(0))


def _workdir(path, model: dict, channels: int = 1, seed: int = 0):
  """config.json and one Orbax checkpoint as the pretrain job writes them
  (its Checkpointer, its save_config), without compiling a training step."""
  config = _config(model)
  encoder = _encoder(config, channels, seed)
  net = _Pretrained(encoder)
  state = TrainState(step=jnp.asarray(5), params=nnx.state(net, nnx.Param),
                     rest=nnx.state(net, nnx.Not(nnx.Param)),
                     opt_state={"count": jnp.zeros((), jnp.int32)},
                     extra={"queue": jnp.zeros((2,))},
                     rng=jax.random.PRNGKey(0))
  ckpt = checkpoint.Checkpointer(os.path.join(path, "checkpoints"),
                                 every_steps=1)
  ckpt.save(5, state)
  ckpt.close()
  common.save_config(config, str(path))
  return str(path), encoder


def _images(channels: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      -1, 1, (2, SIZE, SIZE, channels)).astype(np.float32)


def _features(encoder: nnx.Module, x: np.ndarray) -> np.ndarray:
  features = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(encoder, x))
  assert np.isfinite(features).all() and np.abs(features).mean() > 0.1
  return features


CASES = {
    "resnet_small_stem": (RESNET, 1, "torchvision_resnet"),
    "resnet_imagenet_stem": (dict(RESNET, small_stem=False), 3,
                             "torchvision_resnet"),
    "vit_cls": (VIT, 1, "timm_vit"),
    "vit_mean": (dict(VIT, pool="mean"), 3, "timm_vit"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
  model, channels, preset = CASES[request.param]
  workdir, encoder = _workdir(tmp_path_factory.mktemp(request.param), model,
                              channels)
  path = export.export(workdir, "npz")
  return dict(workdir=workdir, encoder=encoder, npz=path, preset=preset,
              channels=channels, model=model)


def test_round_trip_through_init_from_gives_the_same_encoder(exported):
  """export -> init_from with the matching preset -> the same arrays and
  the same features as the encoder the checkpoint holds."""
  channels = exported["channels"]
  fresh = _encoder(_config(exported["model"]), channels, seed=99)
  report = init_from.load_into_module(fresh, dict(
      path=exported["npz"], preset=exported["preset"], strict=True))
  assert report["counts"]["matched"] == report["counts"]["model"]
  assert not report["adapted"]
  want = init_from.model_arrays(exported["encoder"])
  got = init_from.model_arrays(fresh)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]),
                                  err_msg=key)
  x = _images(channels)
  np.testing.assert_array_equal(_features(fresh, x),
                                _features(exported["encoder"], x))


def test_file_holds_torch_names(exported):
  with np.load(exported["npz"]) as f:
    keys = set(f.files)
    arrays = {k: f[k] for k in f.files}
  if exported["preset"] == "torchvision_resnet":
    assert {"conv1.weight", "bn1.running_var", "bn1.num_batches_tracked",
            "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
            "layer4.0.conv2.weight", "layer1.0.bn2.running_mean"} <= keys
    k = 3 if exported["model"].get("small_stem") is not False else 7
    assert arrays["conv1.weight"].shape == (8, exported["channels"], k, k)
    assert arrays["bn1.num_batches_tracked"].dtype == np.int64
    assert not any(k.startswith("fc.") for k in keys)
  else:
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight",
            "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias",
            "blocks.0.norm1.weight", "norm.bias"} <= keys
    assert arrays["pos_embed"].shape == (1, 1 + (SIZE // 4) ** 2, 32)
    np.testing.assert_array_equal(arrays["pos_embed"][0, 0], 0)
    assert arrays["blocks.0.attn.qkv.weight"].shape == (96, 32)  # [out, in]


def test_cli_writes_the_default_path_and_notes_strides(tmp_path, capsys):
  # Strides hold no params, so only the note tells torchvision users.
  workdir, _ = _workdir(tmp_path, dict(RESNET, stage_strides=(1, 1, 2, 2)))
  export.main([workdir, "--format=npz"])
  assert os.path.exists(os.path.join(workdir, "encoder.npz"))
  assert "stage strides (1, 1, 2, 2)" in capsys.readouterr().out


def test_errors_name_the_workdir_and_the_field(tmp_path):
  config = _config(RESNET)
  common.save_config(config, str(tmp_path / "fresh"))
  with pytest.raises(FileNotFoundError, match=r"fresh has no checkpoint"):
    export.export(str(tmp_path / "fresh"), "npz")
  with pytest.raises(FileNotFoundError, match=r"nowhere has no config\.json"):
    export.export(str(tmp_path / "nowhere"), "npz")
  config.model.name = "resnet18_3d"
  common.save_config(config, str(tmp_path / "volumes"))
  with pytest.raises(ValueError, match=r"volumes: model\.name='resnet18_3d' "
                     "is 3D"):
    export.export(str(tmp_path / "volumes"), "npz")
  with pytest.raises(ValueError, match=r"--format='onnx'"):
    export.export(str(tmp_path / "volumes"), "onnx")


def test_resnet50_bottlenecks_get_torchvision_names():
  encoder = _encoder(_config(dict(RESNET, name="resnet50")), 3, seed=0)
  flat = {k: np.asarray(v) for k, v in init_from.model_arrays(encoder).items()}
  state_dict, preset = export.to_public(encoder, flat)
  assert preset == "torchvision_resnet"
  assert state_dict["layer1.0.conv3.weight"].shape == (32, 8, 1, 1)
  assert state_dict["layer1.0.bn3.running_var"].shape == (32,)
  assert state_dict["layer1.0.downsample.0.weight"].shape == (32, 8, 1, 1)
  assert state_dict["layer2.0.conv2.weight"].shape == (16, 16, 3, 3)


def test_layouts_invert_each_other():
  rng = np.random.default_rng(0)
  flat = {"a/weight": rng.normal(size=(3, 4)),
          "b/weight": rng.normal(size=(2, 3, 5, 7)),
          "c/weight": rng.normal(size=(2, 3, 4, 5, 6)),
          "d/bias": rng.normal(size=(3,))}
  torch_layout = init_from.LAYOUTS.get("torch")
  back = torch_layout.to_flax(torch_layout.from_flax(flat))
  for key, value in flat.items():
    np.testing.assert_array_equal(back[key], value)
  assert torch_layout.from_flax(flat)["b/weight"].shape == (7, 5, 2, 3)


# ------------------------------------------------ PyTorch modules (optional)
def _torch_modules():
  """torchvision's ResNet and timm's ViT, reduced to the modules that hold
  weights, with the same attribute names and the same forward."""
  torch = pytest.importorskip("torch")
  nn = torch.nn

  class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
    def __init__(self, cin, width, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU()
      self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.downsample = None
      if stride != 1 or cin != width:
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):  # torchvision.models.resnet.ResNet, fc=Identity
    def __init__(self, base, stages, in_ch, small_stem):
      super().__init__()
      self.conv1 = (nn.Conv2d(in_ch, base, 3, 1, 1, bias=False) if small_stem
                    else nn.Conv2d(in_ch, base, 7, 2, 3, bias=False))
      self.bn1 = nn.BatchNorm2d(base)
      self.relu = nn.ReLU()
      self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
      cin = base
      for i, n in enumerate(stages):
        blocks = []
        for j in range(n):
          blocks.append(BasicBlock(cin, base * 2**i, 2 if i and not j else 1))
          cin = base * 2**i
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Identity()

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      for i in range(1, 5):
        x = getattr(self, f"layer{i}")(x)
      return self.fc(torch.flatten(self.avgpool(x), 1))

  class Attention(nn.Module):  # timm.models.vision_transformer.Attention
    def __init__(self, dim, heads):
      super().__init__()
      self.heads = heads
      self.qkv = nn.Linear(dim, 3 * dim)
      self.proj = nn.Linear(dim, dim)

    def forward(self, x):
      b, n, c = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads
                                    ).permute(2, 0, 3, 1, 4)
      attn = (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
      return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

  class Mlp(nn.Module):
    def __init__(self, dim, hidden):
      super().__init__()
      self.fc1, self.act, self.fc2 = (nn.Linear(dim, hidden), nn.GELU(),
                                      nn.Linear(hidden, dim))

    def forward(self, x):
      return self.fc2(self.act(self.fc1(x)))

  class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
      super().__init__()
      self.norm1 = nn.LayerNorm(dim, eps=1e-6)
      self.attn = Attention(dim, heads)
      self.norm2 = nn.LayerNorm(dim, eps=1e-6)
      self.mlp = Mlp(dim, hidden)

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.mlp(self.norm2(x))

  class PatchEmbed(nn.Module):
    def __init__(self, in_ch, dim, patch):
      super().__init__()
      self.proj = nn.Conv2d(in_ch, dim, patch, patch)

    def forward(self, x):
      return self.proj(x).flatten(2).transpose(1, 2)

  class ViT(nn.Module):  # timm VisionTransformer(num_classes=0, fc_norm=False)
    def __init__(self, size, patch, in_ch, dim, depth, heads, hidden, pool):
      super().__init__()
      self.pool = pool
      self.patch_embed = PatchEmbed(in_ch, dim, patch)
      self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
      self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (size // patch)**2, dim))
      self.blocks = nn.Sequential(*[Block(dim, heads, hidden)
                                    for _ in range(depth)])
      self.norm = nn.LayerNorm(dim, eps=1e-6)
      self.head = nn.Identity()

    def forward(self, x):
      x = self.patch_embed(x)
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
      x = self.norm(self.blocks(x + self.pos_embed))
      return self.head(x[:, 0] if self.pool == "cls" else x[:, 1:].mean(1))

  return torch, ResNet, ViT


def test_torch_modules_load_it_strictly_and_compute_the_same_features(
    exported, tmp_path):
  torch, ResNet, ViT = _torch_modules()
  path = export.export(exported["workdir"], "torch", str(tmp_path / "enc.pt"))
  state_dict = torch.load(path)
  with np.load(exported["npz"]) as f:  # --format=npz holds the same
    assert sorted(f.files) == sorted(state_dict)
    for key in f.files:
      np.testing.assert_array_equal(f[key], state_dict[key].numpy())
  model, channels = exported["model"], exported["channels"]
  if exported["preset"] == "torchvision_resnet":
    net = ResNet(8, model["stage_sizes"], channels,
                 small_stem=model.get("small_stem") is not False)
  else:
    net = ViT(SIZE, model["patch_size"], channels, model["hidden_dim"],
              model["depth"], model["num_heads"], model["mlp_dim"],
              model.get("pool", "cls"))
  net.load_state_dict(state_dict, strict=True)
  net.eval()
  x = _images(channels, seed=1)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(theirs, _features(exported["encoder"], x),
                             rtol=1e-4, atol=1e-4)
