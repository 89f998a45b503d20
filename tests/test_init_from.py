"""Starting an encoder from existing weights (ssl_jax/train/init_from.py):
readers, the key report, channel adaptation, renames and the public-layout
presets (on synthetic checkpoints written by formula in those layouts), and
a pretraining run that starts from an earlier run's Orbax checkpoint."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from ssl_jax import models
from ssl_jax.train import checkpoint, init_from
from tests.tiny import FAST_COMPILE, tiny_method_config

STAGES = (1, 1, 1, 1)


def _seeded(factory, seed: int):
  """factory() built shape-only, its arrays filled from numpy's seeded rng:
  eager random init compiles an op per shape, minutes on a busy CPU."""
  graphdef, state = nnx.split(nnx.eval_shape(factory))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(
      lambda s: jax.numpy.asarray(rng.normal(size=s.shape).astype(s.dtype)),
      state)
  return nnx.merge(graphdef, state)


def _resnet(in_channels: int, seed: int = 0, **kw):
  return _seeded(lambda: models.get("resnet18")(
      in_channels=in_channels, image_size=28, rngs=nnx.Rngs(0),
      width_multiplier=1 / 16, stage_sizes=STAGES, **kw), seed)


def _random_like(arrays: dict, seed: int) -> dict:
  """Distinct random values for every leaf (variances positive)."""
  rng = np.random.default_rng(seed)
  return {k: (np.abs(rng.normal(size=v.shape)) + 0.5 if k.endswith("/var")
              else rng.normal(size=v.shape)).astype(np.float32)
          for k, v in arrays.items()}


def _cfg(path, **kw):
  return dict(dict(path=str(path), format="auto", preset="", rename=(),
                   layout="auto", strict=False, channels="sum"), **kw)


@pytest.mark.parametrize("fmt,channels,reduce", [
    ("npz", "sum", lambda k: k.sum(2, keepdims=True)),
    ("msgpack", "mean", lambda k: k.mean(2, keepdims=True)),
    ("npz", "first", lambda k: k[:, :, :1])])
def test_rgb_weights_load_into_a_gray_encoder(tmp_path, fmt, channels, reduce):
  source = _random_like(init_from.model_arrays(_resnet(3)), seed=1)
  path = tmp_path / f"rgb.{fmt}"
  init_from.save(str(path), source)
  gray = _resnet(1, seed=7)
  report = init_from.load_into_module(gray, _cfg(path, channels=channels))
  got = init_from.model_arrays(gray)
  assert set(got) == set(source)
  for key, value in source.items():
    want = reduce(value) if key == "stem_conv/kernel" else value
    np.testing.assert_allclose(np.asarray(got[key]), want, rtol=1e-6,
                               err_msg=key)
  assert report["counts"] == {
      "model": len(source), "file": len(source), "matched": len(source) - 1,
      "adapted": 1, "missing": 0, "unexpected": 0, "shape_mismatch": 0}
  assert list(report["adapted"]) == ["stem_conv/kernel"]
  # BatchNorm statistics (nnx.BatchStat) are loaded with the params.
  assert "stem_bn/mean" in report["matched"]


def test_gray_weights_replicate_into_rgb_divided_by_three(tmp_path):
  source = _random_like(init_from.model_arrays(_resnet(1)), seed=2)
  init_from.save(str(tmp_path / "gray.npz"), source)
  rgb = _resnet(3)
  init_from.load_into_module(rgb, _cfg(tmp_path / "gray.npz"))
  kernel = np.asarray(init_from.model_arrays(rgb)["stem_conv/kernel"])
  for c in range(3):
    np.testing.assert_allclose(kernel[:, :, c:c + 1],
                               source["stem_conv/kernel"] / 3, rtol=1e-6)


def test_dot_separated_npz_keys_and_collections_are_read(tmp_path):
  source = _random_like(init_from.model_arrays(_resnet(1)), seed=3)
  # A Flax-linen-like file: params and statistics in separate collections.
  flat = {("batch_stats." if k.endswith(("/mean", "/var")) else "params.")
          + k.replace("/", "."): v for k, v in source.items()}
  np.savez(tmp_path / "dots.npz", **flat)
  enc = _resnet(1, seed=5)
  report = init_from.load_into_module(enc, _cfg(tmp_path / "dots.npz",
                                                strict=True))
  assert report["counts"]["matched"] == len(source)
  np.testing.assert_array_equal(
      np.asarray(init_from.model_arrays(enc)["stages/2/0/bn1/var"]),
      source["stages/2/0/bn1/var"])


def _broken_source(tmp_path):
  source = _random_like(init_from.model_arrays(_resnet(1)), seed=4)
  source["head/kernel"] = np.zeros((4, 2), np.float32)
  del source["stages/3/0/bn2/var"]
  source["stages/0/0/conv1/kernel"] = np.zeros((3, 3, 4, 5), np.float32)
  init_from.save(str(tmp_path / "broken.npz"), source)
  return tmp_path / "broken.npz"


def test_report_names_unexpected_missing_and_mismatched_keys(tmp_path):
  enc = _resnet(1, seed=9)
  before = init_from.model_arrays(enc)
  report = init_from.load_into_module(enc, _cfg(_broken_source(tmp_path)))
  assert report["unexpected"] == ["head/kernel"]
  assert report["missing"] == ["stages/3/0/bn2/var"]
  assert report["shape_mismatch"] == {"stages/0/0/conv1/kernel": {
      "file": [3, 3, 4, 5], "model": [3, 3, 4, 4]}}
  counts = report["counts"]
  assert (counts["unexpected"], counts["missing"], counts["shape_mismatch"],
          counts["matched"]) == (1, 1, 1, len(before) - 2)
  after = init_from.model_arrays(enc)
  for key in ("stages/3/0/bn2/var", "stages/0/0/conv1/kernel"):  # kept
    np.testing.assert_array_equal(after[key], before[key])


def test_strict_raises_naming_every_bad_key(tmp_path):
  with pytest.raises(ValueError, match=r"(?s)missing \(1\): stages/3/0/bn2/var"
                     r".*unexpected \(1\): head/kernel"
                     r".*shape_mismatch \(1\): stages/0/0/conv1/kernel"):
    init_from.load_into_module(_resnet(1), _cfg(_broken_source(tmp_path),
                                                strict=True))


def test_missing_file_and_unknown_names_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope\.npz.*msgpack, npz, orbax"):
    init_from.load_into_module(_resnet(1), _cfg(tmp_path / "nope.npz"))
  (tmp_path / "w.pt").write_bytes(b"")
  with pytest.raises(ValueError, match=r"'\.pt'.*init_from\.format"):
    init_from.load_into_module(_resnet(1), _cfg(tmp_path / "w.pt"))
  with pytest.raises(KeyError, match="unknown init_from.channels 'avg'"):
    init_from.load_into_module(_resnet(1), _cfg(tmp_path / "w.pt",
                                                channels="avg"))


def test_rename_maps_foreign_names_and_drops_keys(tmp_path):
  source = _random_like(init_from.model_arrays(_resnet(1)), seed=5)
  foreign = {"backbone/" + k.replace("stages/", "layer_"): v
             for k, v in source.items()}
  foreign["backbone/classifier/kernel"] = np.zeros((2, 2), np.float32)
  init_from.save(str(tmp_path / "foreign.npz"), foreign)
  enc = _resnet(1, seed=8)
  report = init_from.load_into_module(enc, _cfg(
      tmp_path / "foreign.npz", strict=True,
      rename=((r"^backbone/", ""), (r"^layer_", "stages/"),
              (r"^classifier/.*", ""))))
  assert report["counts"]["matched"] == len(source)
  assert report["dropped"] == ["backbone/classifier/kernel"]
  np.testing.assert_array_equal(
      np.asarray(init_from.model_arrays(enc)["stages/1/0/shortcut/conv/kernel"]),
      source["stages/1/0/shortcut/conv/kernel"])


# ------------------------------------------------- public layouts (synthetic)
def _torchvision_resnet18(base: int, stage_sizes, in_ch: int, seed: int):
  """A state dict named and shaped as torchvision's resnet18 (OIHW)."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, o, i, k):
    sd[f"{name}.weight"] = rng.normal(size=(o, i, k, k)).astype(np.float32)

  def bn(name, n):
    for p in ("weight", "bias", "running_mean"):
      sd[f"{name}.{p}"] = rng.normal(size=(n,)).astype(np.float32)
    sd[f"{name}.running_var"] = rng.uniform(0.5, 2, size=(n,)).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", base, in_ch, 7)
  bn("bn1", base)
  cin = base
  for i, n in enumerate(stage_sizes):
    width = base * 2**i
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      name = f"layer{i + 1}.{j}"
      conv(f"{name}.conv1", width, cin, 3)
      bn(f"{name}.bn1", width)
      conv(f"{name}.conv2", width, width, 3)
      bn(f"{name}.bn2", width)
      if stride != 1 or cin != width:
        conv(f"{name}.downsample.0", width, cin, 1)
        bn(f"{name}.downsample.1", width)
      cin = width
  sd["fc.weight"] = rng.normal(size=(10, cin)).astype(np.float32)
  sd["fc.bias"] = np.zeros((10,), np.float32)
  return sd


def _torch_conv2d(x, w, stride, pad):
  """PyTorch Conv2d semantics in numpy: x [H, W, I], w [O, I, kh, kw]."""
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  o, _, kh, kw = w.shape
  out_h = (x.shape[0] - kh) // stride + 1
  out_w = (x.shape[1] - kw) // stride + 1
  out = np.zeros((out_h, out_w, o))
  for r in range(out_h):
    for c in range(out_w):
      patch = x[r * stride:r * stride + kh, c * stride:c * stride + kw]
      out[r, c] = np.einsum("hwi,oihw->o", patch, w)
  return out


def test_torchvision_resnet_preset(tmp_path):
  sd = _torchvision_resnet18(4, STAGES, in_ch=3, seed=0)
  init_from.save(str(tmp_path / "tv.npz"), sd)
  enc = _resnet(3, small_stem=False)  # the ImageNet 7x7/2 stem
  report = init_from.load_into_module(enc, _cfg(
      tmp_path / "tv.npz", preset="torchvision_resnet", strict=True))
  got = {k: np.asarray(v) for k, v in init_from.model_arrays(enc).items()}
  assert report["counts"]["matched"] == len(got) and report["layout"] == "torch"
  assert "fc/weight" in report["dropped"]
  assert "layer2/0/bn1/num_batches_tracked" in report["dropped"]
  np.testing.assert_array_equal(got["stages/1/0/shortcut/conv/kernel"],
                                sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["stages/3/0/bn2/scale"], sd["layer4.0.bn2.weight"])
  np.testing.assert_array_equal(got["stem_bn/var"], sd["bn1.running_var"])
  # The stem computes what torch's conv1 computes (catches an H/W swap).
  x = np.random.default_rng(1).normal(size=(12, 12, 3)).astype(np.float32)
  ours = np.asarray(enc.stem_conv(x[None]))[0]
  np.testing.assert_allclose(ours, _torch_conv2d(x, sd["conv1.weight"], 2, 3),
                             rtol=1e-4, atol=1e-4)


def test_timm_vit_preset(tmp_path):
  dim, mlp, depth, p = 16, 32, 2, 4
  vit = _seeded(lambda: models.get("vit_tiny")(
      in_channels=1, image_size=8, rngs=nnx.Rngs(0), depth=depth,
      hidden_dim=dim, num_heads=2, mlp_dim=mlp, patch_size=p), seed=0)
  rng = np.random.default_rng(0)
  shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 5, dim),
            "patch_embed.proj.weight": (dim, 3, p, p),
            "patch_embed.proj.bias": (dim,), "norm.weight": (dim,),
            "norm.bias": (dim,), "head.weight": (1000, dim), "head.bias": (1000,)}
  for b in range(depth):
    for name, shape in {"norm1.weight": (dim,), "norm1.bias": (dim,),
                        "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
                        "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
                        "norm2.weight": (dim,), "norm2.bias": (dim,),
                        "mlp.fc1.weight": (mlp, dim), "mlp.fc1.bias": (mlp,),
                        "mlp.fc2.weight": (dim, mlp), "mlp.fc2.bias": (dim,)}.items():
      shapes[f"blocks.{b}.{name}"] = shape
  sd = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  init_from.save(str(tmp_path / "timm.npz"), sd)
  report = init_from.load_into_module(vit, _cfg(
      tmp_path / "timm.npz", preset="timm_vit", strict=True))
  got = {k: np.asarray(v) for k, v in init_from.model_arrays(vit).items()}
  assert report["counts"]["matched"] == len(got) - 1  # + the adapted stem
  assert report["dropped"] == ["head/bias", "head/weight", "pos_embed"]
  np.testing.assert_array_equal(got["blocks/1/attn/qkv/kernel"],
                                sd["blocks.1.attn.qkv.weight"].T)
  np.testing.assert_array_equal(got["blocks/0/fc2/kernel"], sd["blocks.0.mlp.fc2.weight"].T)
  np.testing.assert_array_equal(got["norm/scale"], sd["norm.weight"])
  np.testing.assert_allclose(
      got["patch_embed/kernel"],
      sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0).sum(2, keepdims=True),
      rtol=1e-6)


# -------------------------------------------- Orbax workdirs and pretraining
def _byol_config(data_dir, seed: int):
  """BYOL: its EMA teacher is a copy of the encoder that must load too."""
  config = tiny_method_config("byol")
  config.data.data_dir = str(data_dir)
  config.seed = seed
  config.train.steps = 1
  return config


@pytest.fixture(scope="module")
def source_workdir(tmp_path_factory, medmnist_dir):
  """A pretraining workdir's checkpoints/: the real init of the pretrain
  job (seed 3) saved by its Checkpointer."""
  import data_pipelines
  from ssl_jax import parallel
  from ssl_jax.jobs import pretrain
  workdir = str(tmp_path_factory.mktemp("source"))
  config = _byol_config(medmnist_dir, seed=3)
  built = pretrain.build_parts(
      config, data_pipelines.info(config.data.name, config.data.size),
      parallel.make_mesh(1))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=1)
  ckpt.save(1, built.init.lower().compile(FAST_COMPILE)())
  ckpt.close()
  return workdir


def _saved(workdir):
  return checkpoint.restore_subtree(os.path.join(workdir, "checkpoints"),
                                    "params", "rest")


def _encoder_of(tree):
  return {**init_from.flatten(tree["params"]["encoder"]),
          **init_from.flatten(tree["rest"]["encoder"])}


def _assert_equal(got: dict, want: dict):
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value),
                                  err_msg=key)


@pytest.mark.parametrize("where", ["", "checkpoints", "checkpoints/1"])
def test_orbax_workdir_loads_identical_encoder_params(source_workdir, where):
  want = _encoder_of(_saved(source_workdir))
  enc = _resnet(1, seed=11)
  path = os.path.join(source_workdir, where)
  report = init_from.load_into_module(enc, _cfg(path, strict=True))
  assert report["format"] == "orbax" and report["counts"]["matched"] == len(want)
  assert "took the 'encoder' subtree" in report["notes"]
  _assert_equal(init_from.model_arrays(enc), want)


def test_any_orbax_pytree_checkpoint_with_flax_collections(tmp_path):
  import orbax.checkpoint as ocp
  source = _random_like(init_from.model_arrays(_resnet(1)), seed=6)
  stats = {k: v for k, v in source.items() if k.endswith(("/mean", "/var"))}
  tree = {"params": init_from.unflatten({k: v for k, v in source.items()
                                         if k not in stats}),
          "batch_stats": init_from.unflatten(stats)}
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "pytree", tree)
  ckpt.wait_until_finished()
  enc = _resnet(1, seed=14)
  init_from.load_into_module(enc, _cfg(tmp_path / "pytree", strict=True))
  _assert_equal(init_from.model_arrays(enc), source)


def test_a_directory_without_a_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no complete Orbax"):
    init_from.load_into_module(_resnet(1), _cfg(tmp_path))


def test_pretrain_starts_from_init_from_and_writes_the_report(
    source_workdir, medmnist_dir, tmp_path, monkeypatch):
  """The state the training loop receives (seed 0) holds the source run's
  (seed 3) encoder, in its teacher too, on the state's shardings."""
  from ssl_jax.jobs import pretrain
  seen = {}
  build_parts = pretrain.build_parts

  def spy_build(*args):  # the real parts, init compiled without -O passes
    built = build_parts(*args)
    seen["built"] = dataclasses.replace(
        built, init=built.init.lower().compile(FAST_COMPILE))
    return seen["built"]

  def no_training(state, *args, **kwargs):  # the loop is not under test
    seen["state"] = state
    return state

  monkeypatch.setattr(pretrain, "build_parts", spy_build)
  monkeypatch.setattr(pretrain.loop, "run", no_training)
  config = _byol_config(medmnist_dir, seed=0)
  config.init_from.update(dict(path=source_workdir, strict=True))
  pretrain.train_and_evaluate(config, str(tmp_path))

  with open(tmp_path / "init_from_report.json") as f:
    report = json.load(f)
  source = _saved(source_workdir)
  want = _encoder_of(source)
  assert report["counts"]["matched"] == len(want) == 60
  assert report["applied_to"] == {
      "params/encoder": 36, "rest/encoder": 24,
      "extra/teacher/params/encoder": 36, "extra/teacher/rest/encoder": 24}
  state = seen["state"]
  _assert_equal(_encoder_of({"params": nnx.to_pure_dict(state.params),
                             "rest": nnx.to_pure_dict(state.rest)}), want)
  _assert_equal(_encoder_of(state.extra["teacher"]), want)
  # The projector is not the encoder: it keeps this run's own init.
  ours = jax.tree.leaves(nnx.to_pure_dict(state.params)["projector"])[0]
  theirs = jax.tree.leaves(source["params"]["projector"])[0]
  assert not np.array_equal(np.asarray(ours), np.asarray(theirs))
  for leaf, sharding in zip(jax.tree.leaves(state),
                            jax.tree.leaves(seen["built"].shardings)):
    assert leaf.sharding == sharding


def test_finetune_weights_from_init_from(source_workdir, monkeypatch):
  """Transfer without SSL: `load_encoder_weights` gives the flat weights
  stage 2 loads (as `encoder_weights.read` does), holding the file's
  encoder."""
  from ssl_jax.train import encoder_weights
  from ssl_jax.objectives import base
  monkeypatch.setattr(base, "build_encoder",
                      lambda config, info, rngs: _resnet(1, seed=12))
  config = tiny_method_config("simclr")
  config.init_from.path = source_workdir
  weights, report = init_from.load_encoder_weights(config, info=None)
  assert report["counts"]["matched"] == 60
  enc = _resnet(1, seed=13)
  encoder_weights.into_module(enc, weights)
  _assert_equal(init_from.model_arrays(enc), _encoder_of(_saved(source_workdir)))


def test_encoder_weights_refuse_what_the_encoder_lacks():
  """Stage-2 weights go in by key; a key no leaf has, or a leaf of another
  shape, is an error rather than a silently half-loaded encoder."""
  from ssl_jax.train import encoder_weights
  enc = _resnet(1)
  weights = encoder_weights.of_module(_resnet(1, seed=5))
  encoder_weights.into_module(enc, weights)
  _assert_equal(encoder_weights.of_module(enc), weights)
  with pytest.raises(ValueError, match="fit no leaf.*head/kernel"):
    encoder_weights.into_module(enc, {**weights, "head/kernel": np.zeros(3)})
  with pytest.raises(ValueError, match="'stem_conv/kernel' has shape"):
    encoder_weights.into_module(
        enc, {**weights, "stem_conv/kernel": np.zeros((1, 1, 1, 4))})


def test_an_encoder_built_with_all_its_weights_skips_its_random_init():
  """`built_with`: weights that fill every leaf go into an abstract encoder
  (no initializer runs); weights that miss some leave those at their
  random init, as loading into a built encoder would."""
  from ssl_jax.train import encoder_weights
  weights = encoder_weights.of_module(_resnet(1, seed=5))
  traced = []  # per build: were its arrays abstract (eval_shape's tracers)?

  def build():
    enc = _resnet(1, seed=3)
    traced.append(all(isinstance(leaf, jax.core.Tracer)
                      for leaf in jax.tree.leaves(nnx.state(enc))))
    return enc

  enc = encoder_weights.built_with(build, weights)
  _assert_equal(encoder_weights.of_module(enc), weights)
  assert traced == [True]
  partial = {k: v for k, v in weights.items() if k != "stem_conv/kernel"}
  enc = encoder_weights.built_with(build, partial)
  assert traced == [True, True, False]
  _assert_equal({k: v for k, v in encoder_weights.of_module(enc).items()
                 if k != "stem_conv/kernel"}, partial)
  _assert_equal({"k": encoder_weights.of_module(enc)["stem_conv/kernel"]},
                {"k": encoder_weights.of_module(_resnet(1, seed=3))[
                    "stem_conv/kernel"]})
