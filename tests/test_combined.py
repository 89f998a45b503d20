"""The combined objective (weighted parts on one encoder), the new method
configs, and supervised pretraining through the pretrain job."""
import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ssl_jax import augment, objectives
from ssl_jax.objectives import base, combined
from ssl_jax.registry import Registry
from tests.tiny import bind, tiny_config

TINY_VIT = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                num_heads=2, mlp_dim=64)


class Info:
  num_channels, image_size, num_classes, multi_label = 1, 28, 2, False


def combined_config(parts=("simclr", "mae"), weights=(1.0, 0.5)):
  c = tiny_config()
  c.model = TINY_VIT
  c.objective = dict(
      name="combined", parts=parts, weights=weights,
      simclr=dict(temperature=0.2, proj_hidden_dim=32, proj_dim=16,
                  proj_layers=2),
      mae=dict(mask_ratio=0.75, norm_pix_loss=True, decoder_dim=16,
               decoder_depth=1, decoder_heads=2),
      rotation=dict(all_rotations=False, head_hidden_dim=32, head_layers=2))
  return c


def fake_batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.integers(0, 255, (n, 28, 28, 1), np.uint8)),
          "label": jnp.asarray(rng.integers(0, 2, (n, 1)))}


def split(model):
  return nnx.split(model, nnx.Param, ...)


class FlatEncoder(nnx.Module):
  """A one-layer stand-in encoder: the combinator's logic, not conv speed."""
  feature_dim = 4

  def __init__(self, rngs):
    self.linear = nnx.Linear(28 * 28, self.feature_dim, rngs=rngs)

  def __call__(self, x, *, train=False):
    return self.linear(x.reshape(x.shape[0], -1))


class Probe(nnx.Module):

  def __init__(self, encoder, rngs):
    self.encoder = encoder
    self.head = nnx.Linear(FlatEncoder.feature_dim, 1, rngs=rngs)


def double(name, seen):
  """A registered-objective test double whose loss depends on rng and
  config, and whose extra counts updates and records the params' shape."""

  def make_loss(hp, ctx):
    target = hp.target

    def loss_fn(model, batch, rng, extra):
      x = batch["image"].astype(jnp.float32) / 255.0
      x = x + 0.1 * jax.random.normal(rng, x.shape)
      y = model.head(model.encoder(x))
      return (jnp.mean((y - target)**2), {"mean_output": jnp.mean(y)},
              {"calls": extra["calls"] + 1, "updates": extra["updates"]})

    return loss_fn

  def init_extra(model, hp, ctx):
    seen[name] = jax.tree.structure(nnx.state(model, nnx.Param))
    return {"calls": jnp.zeros(()), "updates": jnp.zeros(())}

  def update_extra(extra, params, step, hp, ctx):
    seen[name + "/update"] = jax.tree.structure(params)
    return dict(extra, updates=extra["updates"] + 1)

  return base.Objective(
      name=name, category="innate", paper="test double",
      hparams=dict(target=0.0),
      build_model=lambda hp, ctx, rngs: Probe(FlatEncoder(rngs), rngs),
      make_loss=make_loss, init_extra=init_extra, update_extra=update_extra)


@pytest.fixture
def doubles(monkeypatch):
  """Registers objectives 'double_a' and 'double_b' for one test."""
  seen, registry = {}, Registry("objective")
  for name in base.OBJECTIVES:
    registry.add(name, base.OBJECTIVES.get(name))
  for name in ("double_a", "double_b"):
    registry.add(name, double(name, seen))
  monkeypatch.setattr(base, "OBJECTIVES", registry)  # combined looks parts up here
  config = tiny_config()
  config.objective = dict(name="combined", parts=("double_a", "double_b"),
                          weights=(1.0, 0.25), double_a=dict(target=1.0),
                          double_b=dict(target=-2.0))
  return config, seen


def test_combined_loss_is_the_weighted_sum_of_the_parts_run_alone(doubles):
  config, _ = doubles
  model = bind(config, Info, objectives.get("combined")).build_model(nnx.Rngs(0))
  graphdef, params, rest = split(model)
  batch, rng = fake_batch(), jax.random.PRNGKey(3)
  extra = bind(config, Info).init_extra(model)
  loss, metrics, new_extra = bind(config).make_loss()(
      nnx.merge(graphdef, params, rest, copy=True), batch, rng, extra)

  expected = 0.0
  # Part i gets the i-th key of split(rng, num_parts) and its own sub-config.
  for key, name, weight in zip(jax.random.split(rng, 2),
                               ("double_a", "double_b"), (1.0, 0.25)):
    alone = config.copy_and_resolve_references()
    alone.objective = dict(config.objective[name].to_dict(), name=name)
    fresh = nnx.merge(graphdef, params, rest, copy=True)
    part_loss, part_metrics, part_extra = bind(alone).make_loss()(
        fresh.parts[name], batch, key, extra[name])
    expected += weight * float(part_loss)
    np.testing.assert_allclose(metrics[f"{name}/loss"], part_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics[f"{name}/mean_output"],
                               part_metrics["mean_output"], rtol=1e-6)
    assert float(new_extra[name]["calls"]) == float(part_extra["calls"]) == 1.0
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert set(metrics) == {"double_a/loss", "double_a/mean_output",
                          "double_b/loss", "double_b/mean_output"}


def test_extra_state_is_delegated_per_part_with_part_shaped_params(doubles):
  config, seen = doubles
  model = bind(config, Info, objectives.get("combined")).build_model(nnx.Rngs(0))
  bound = bind(config, Info)
  extra = bound.init_extra(model)
  _, params, _ = split(model)
  extra = bound.update_extra(extra, params, jnp.zeros((), jnp.int32))
  for name in ("double_a", "double_b"):
    assert float(extra[name]["updates"]) == 1.0
    # What update_extra sees is shaped like the part model's own params.
    assert seen[name + "/update"] == seen[name]


def test_parts_share_one_encoder_stored_where_finetuning_reads_it():
  config = combined_config()
  model = bind(config, Info, objectives.get("combined")).build_model(nnx.Rngs(0))
  graphdef, params, rest = split(model)
  assert set(params) == {"encoder", "parts"}
  assert set(params["parts"]["simclr"]) == {"projector"}
  assert set(params["parts"]["mae"]) == {"decoder"}
  alone = base.build_encoder(config, Info, nnx.Rngs(0))
  assert (jax.tree.structure(params["encoder"])
          == jax.tree.structure(nnx.state(alone, nnx.Param)))
  merged = nnx.merge(graphdef, params, rest, copy=True)
  assert merged.parts["simclr"].encoder is merged.encoder
  assert merged.parts["mae"].encoder is merged.encoder


def combined_parts(config):
  b = bind(config, Info)
  return combined.parts(b.hp, b.ctx)


def test_part_names_weights_and_sub_configs_are_checked():
  with pytest.raises(ValueError, match=r"unknown part 'simclrr'; allowed: .*simclr"):
    combined_parts(combined_config(parts=("simclr", "simclrr")))
  with pytest.raises(ValueError, match="unknown part 'combined'"):
    combined_parts(combined_config(parts=("combined",), weights=(1.0,)))
  with pytest.raises(ValueError, match="weights has 1 entries for 2 parts"):
    combined_parts(combined_config(weights=(1.0,)))
  with pytest.raises(ValueError, match="repeats"):
    combined_parts(combined_config(parts=("mae", "mae")))
  with pytest.raises(ValueError, match="config.objective.simmim is missing"):
    combined_parts(combined_config(parts=("simclr", "simmim")))


def test_a_part_may_carry_its_own_augmentation_policy():
  config = combined_config()
  config.objective.mae.augment = ml_collections.ConfigDict(
      {"policy": "none", "overrides": {}})
  by_name = {p.name: p for p in combined_parts(config)}
  assert by_name["mae"].bound.ctx.policy == augment.get("none")
  assert by_name["simclr"].bound.ctx.policy == augment.get(config.augment.policy)
  assert by_name["mae"].bound.objective.name == "mae"
  assert by_name["mae"].augment_field == "objective.mae.augment"


def test_default_config_combines_simclr_and_rotation():
  from configs import combined as combined_cfg
  assert tuple(combined_cfg.get_config().objective.parts) == ("simclr", "rotation")
  config = combined_config(parts=("simclr", "rotation"))
  model = bind(config, Info, objectives.get("combined")).build_model(nnx.Rngs(0))
  graphdef, params, rest = split(model)
  loss_fn = bind(config, objective=objectives.get("combined")).make_loss()
  extra = bind(config, Info).init_extra(model)
  # Traced, not run: the parts plug together (a real step is in the smoke test).
  loss, metrics, _ = jax.eval_shape(
      lambda p, r: loss_fn(nnx.merge(graphdef, p, r, copy=True), fake_batch(),
                           jax.random.PRNGKey(0), extra), params, rest)
  assert loss.shape == ()
  assert {"simclr/loss", "rotation/loss", "rotation/rotation_acc"} <= set(metrics)


@pytest.mark.parametrize("name", ["simmim", "restoration", "combined",
                                  "supervised"])
def test_method_configs_load_validate_and_say_how_to_run(name):
  from ssl_jax.jobs import common
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  common.validate(config)
  assert f"--config=configs/{name}.py" in module.__doc__
  assert config.objective.name == name
  if name == "combined":
    combined_parts(config)  # every configured part resolves


def test_supervised_config_follows_the_datasets_label_kind():
  from configs import supervised
  assert supervised.get_config("breastmnist").objective.multi_label is False
  assert supervised.get_config("chestmnist").objective.multi_label is True


def test_supervised_multi_label_loss_runs_on_multi_hot_labels():
  from configs import supervised
  config = supervised.get_config("chestmnist")
  config.model = TINY_VIT
  config.augment.policy = "none"  # the loss is under test, not the views

  class ChestInfo:
    num_channels, image_size, num_classes, multi_label = 1, 28, 14, True

  model = bind(config, ChestInfo, objectives.get("supervised")).build_model(nnx.Rngs(0))
  batch = fake_batch()
  batch["label"] = jnp.asarray(np.random.default_rng(1).integers(0, 2, (8, 14)))
  loss, _, _ = bind(config, objective=objectives.get("supervised")).make_loss()(
      model, batch, jax.random.PRNGKey(0), {})
  # Sigmoid BCE of zero-initialised logits is log 2 per label.
  np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-5)


def numpy_bce(logits, labels):
  """Per-label -[y log p + (1 - y) log(1 - p)], p = sigmoid(z), in float64
  (log p = -log(1 + e^-z), log(1 - p) = -log(1 + e^z), via logaddexp)."""
  z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
  return y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)


def test_multi_label_bce_matches_numpy_beyond_zero_logits():
  from ssl_jax.objectives import supervised as sup  # noqa: PLC0415
  rng = np.random.default_rng(4)
  logits = rng.normal(scale=3.0, size=(6, 5))
  logits[0, :2] = [40.0, -40.0]  # saturated: finite, no log(0)
  labels = rng.integers(0, 2, (6, 5))
  labels[0, :2] = [0, 1]  # confidently wrong: loss ~ 40 each
  loss, acc = sup.classification_loss(jnp.asarray(logits, jnp.float32),
                                      jnp.asarray(labels), True)
  per_example = numpy_bce(logits, labels).mean(-1)
  np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(acc), np.mean((logits > 0) == labels),
                             rtol=1e-6)
  weights = np.array([1, 0, 1, 1, 0, 1], np.float32)
  weighted, _ = sup.classification_loss(
      jnp.asarray(logits, jnp.float32), jnp.asarray(labels), True,
      jnp.asarray(weights))
  np.testing.assert_allclose(
      float(weighted), (per_example * weights).sum() / weights.sum(),
      rtol=1e-5)
  # Single-label: softmax cross-entropy -log softmax(z)[y].
  single = np.array([0, 4, 2, 1, 3, 0])
  log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
      -1, keepdims=True)) - logits.max(-1, keepdims=True)
  ce, _ = sup.classification_loss(jnp.asarray(logits, jnp.float32),
                                  jnp.asarray(single), False)
  np.testing.assert_allclose(float(ce), -log_p[np.arange(6), single].mean(),
                             rtol=1e-5)


# --------------------------------------------------- real steps, real data --

def run_steps(config, medmnist_dir, steps=5):
  """Metrics of each step and of one replay of step 0 after training."""
  from tests.tiny import compiled_on_fixed_batch
  graphdef, state, step_fn, batch = compiled_on_fixed_batch(
      config, data_dir=str(medmnist_dir))
  history = []
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
    history.append(jax.device_get(metrics))
  # Step 0 again (same augmentations, masks): only the parameters differ.
  _, replay = step_fn(state.replace(step=jnp.zeros_like(state.step)), batch)
  return graphdef, history, jax.device_get(replay)


def test_combined_trains_through_the_pretrain_step(medmnist_dir):
  config = combined_config()
  config.train.steps = 5
  _, history, replay = run_steps(config, medmnist_dir)
  first = history[0]
  assert all(np.isfinite(float(m["loss"])) for m in history)
  np.testing.assert_allclose(
      first["ssl_loss"], first["simclr/loss"] + 0.5 * first["mae/loss"],
      rtol=1e-5)
  assert float(replay["ssl_loss"]) < float(first["ssl_loss"])


def test_supervised_pretraining_runs_through_the_pretrain_job(medmnist_dir):
  from configs import supervised
  config = supervised.get_config("breastmnist")
  config.model = TINY_VIT
  config.train.batch_size = 16
  config.train.steps = 5
  config.optim.warmup_steps = 1
  graphdef, history, replay = run_steps(config, medmnist_dir)
  assert "online_probe" not in str(graphdef)  # the config turns it off
  assert all(np.isfinite(float(m["loss"])) for m in history)
  assert float(replay["loss"]) < float(history[0]["loss"])
  assert "train_acc" in history[0]
