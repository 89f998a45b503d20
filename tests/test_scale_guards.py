"""Configs that cannot run fail before any compile, naming the field and
the allowed values."""
import jax
import pytest

from ssl_jax import parallel
from ssl_jax.jobs import common, pretrain
from tests.tiny import tiny_config


def _vit(**overrides):
  c = tiny_config(**overrides)
  c.model = dict(name="vit_tiny", patch_size=5, depth=1, hidden_dim=32,
                 num_heads=2)
  return c


def test_vit_patch_size_must_divide_the_image_size():
  with pytest.raises(ValueError, match=r"config.data.size=28 is not divisible by "
                     r"config.model.patch_size=5; allowed patch sizes for 28 px: "
                     r"1, 2, 4, 7, 14, 28"):
    common.validate(_vit())
  c = _vit()
  c.model.patch_size = 7
  common.validate(c)
  c.data.size = 224
  del c.model.patch_size  # the ViT default at 224 px: 16 -> 224 = 14 x 16
  common.validate(c)


@pytest.mark.parametrize("field, value, message", [
    ("train.compute_dtype", "float16",
     r"config.train.compute_dtype='float16' is unknown; allowed: bfloat16, float32"),
    ("train.grad_accum_steps", 3,
     r"config.train.batch_size=16 is not divisible by config.train.grad_accum_steps=3"),
    ("train.grad_accum_steps", 0, r"config.train.grad_accum_steps must be >= 1"),
    ("mesh.model_axis_size", 0, r"config.mesh.model_axis_size must be >= 1"),
])
def test_numbers_that_do_not_fit_name_their_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    common.validate(tiny_config(**{field: value}))


def test_batch_that_does_not_split_over_devices_and_micro_batches():
  mesh = parallel.make_mesh(1)
  parallel.check_divisible(16, mesh, "train.batch_size", times=4)
  with pytest.raises(ValueError, match=r"config.train.batch_size=18 is not "
                     r"divisible by the 1 data-parallel devices of the mesh x "
                     r"train.grad_accum_steps=4; use a multiple of 4"):
    parallel.check_divisible(18, mesh, "train.batch_size", times=4)


def test_pretrain_fails_before_compiling(tmp_path, monkeypatch):
  def no_jit(*args, **kwargs):
    raise AssertionError("compiled before the config was checked")
  monkeypatch.setattr(jax, "jit", no_jit)
  with pytest.raises(ValueError, match="config.model.patch_size=5"):
    pretrain.train_and_evaluate(_vit(), str(tmp_path))
  assert not (tmp_path / "config.json").exists()


def test_a_sharding_rule_that_does_not_fit_its_leaf_is_an_error():
  mesh = parallel.make_mesh(1)
  with pytest.raises(ValueError, match=r"mesh.rules: 'bias' -> \(None, 'model'\) "
                     r"matches params/fc/bias of shape \(8,\)"):
    parallel.spec_for("params/fc/bias", (8,), mesh, (("bias", (None, "model")),))
  assert parallel.spec_for("params/fc/kernel", (4, 8), mesh,
                           (("fc/kernel$", (None, "model")),)) == jax.sharding.PartitionSpec(None, "model")
  assert parallel.spec_for("params/other", (4, 8), mesh,
                           (("fc/kernel$", (None, "model")),)) == jax.sharding.PartitionSpec()
