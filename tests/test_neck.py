"""The pretrained projector's first layers kept on the encoder for stage 2
(SimCLRv2's fine-tuning from the projection head's first layer)."""
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ssl_jax import models
from ssl_jax.evaluation import classifier
from ssl_jax.jobs import finetune
from ssl_jax.pytree import path_str
from ssl_jax.train import encoder_weights
from tests.tiny import tiny_config

TINY_RESNET = dict(width_multiplier=0.0625, stage_sizes=(1, 1, 1, 1))
TINY_VIT = dict(depth=1, hidden_dim=16, num_heads=2)


@pytest.mark.parametrize("name,kwargs", [("resnet18", TINY_RESNET),
                                         ("vit_tiny", TINY_VIT)])
def test_the_neck_is_the_encoders_output_layer(name, kwargs):
  build = lambda **neck: models.get(name)(in_channels=1, image_size=28,
                                          rngs=nnx.Rngs(0), **kwargs, **neck)
  plain, necked = build(), build(neck=(24, 12))
  x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
  assert necked.feature_dim == 12 and necked(x).shape == (3, 12)
  assert not any(k.startswith("neck/") for k in encoder_weights.of_module(plain))
  weights = encoder_weights.of_module(necked)
  assert {k for k in weights if k.startswith("neck/")} == {
      f"neck/{part}/{i}/{leaf}" for i in (0, 1) for part, leaf in
      [("layers", "kernel"), ("norms", "scale"), ("norms", "bias"),
       ("norms", "mean"), ("norms", "var")]}
  # The backbone's leaves are the plain encoder's: its weights load as they are.
  encoder_weights.into_module(plain, {k: v for k, v in weights.items()
                                      if not k.startswith("neck/")})
  h = np.asarray(plain(x))
  for i in (0, 1):  # eval mode: Linear -> BN (running stats) -> ReLU
    w = lambda leaf, part="norms": weights[f"neck/{part}/{i}/{leaf}"]
    h = h @ w("kernel", "layers")
    h = (h - w("mean")) / np.sqrt(w("var") + 1e-5) * w("scale") + w("bias")
    h = np.maximum(h, 0)
  np.testing.assert_allclose(np.asarray(necked(x)), h, rtol=1e-4, atol=1e-5)


def test_a_neck_without_batch_norm_has_biases():
  encoder = models.get("resnet18")(in_channels=1, image_size=28,
                                   rngs=nnx.Rngs(0), neck=(8,), neck_bn=False,
                                   **TINY_RESNET)
  keys = {k for k in encoder_weights.of_module(encoder) if k.startswith("neck/")}
  assert keys == {"neck/layers/0/kernel", "neck/layers/0/bias"}


def test_neck_widths_are_checked():
  with pytest.raises(ValueError, match="neck widths must be >= 1"):
    models.get("resnet18")(in_channels=1, image_size=28, rngs=nnx.Rngs(0),
                           neck=(0,), **TINY_RESNET)


@pytest.mark.parametrize("value", [-1, 1.0, True])
def test_keep_projector_layers_must_be_a_count(value):
  ft = ml_collections.ConfigDict({"keep_projector_layers": value})
  with pytest.raises(ValueError, match="keep_projector_layers must be an integer"):
    finetune.kept_projector_layers(ft)


def test_keeping_projector_layers_needs_a_pretraining():
  config = tiny_config(**{"finetune.keep_projector_layers": 1})
  info = finetune.common.data_info(config)
  with pytest.raises(ValueError, match="set config.finetune.pretrained"):
    finetune.stage2_config(config, None, info)
  assert "neck" not in finetune.stage2_config(tiny_config(), None, info).model


def test_a_pretraining_without_a_projector_is_named():
  with pytest.raises(ValueError, match="wd/mae: its model has no MLP projector"):
    encoder_weights.projector_neck({"params": {"decoder": {}}, "rest": {}}, 1,
                                   "wd/mae")


@pytest.mark.parametrize("name,kwargs", [("resnet18", TINY_RESNET),
                                         ("vit_tiny", TINY_VIT)])
def test_the_neck_trains_as_the_layers_after_the_last_unit(name, kwargs):
  """`last_k` trains it and `layer_decay` gives it the head's rate: it sits
  between the last unit and the head."""
  encoder = models.get(name)(in_channels=1, image_size=28, rngs=nnx.Rngs(0),
                             neck=(8,), **kwargs)
  model = models.Classifier(encoder, 2, rngs=nnx.Rngs(1))
  params = nnx.state(model, nnx.Param)
  labels = classifier.trainable_labels(model, 1)(params)
  flat = {path_str(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(labels)[0]}
  neck = [v for k, v in flat.items() if "neck" in k]
  assert neck and set(neck) == {"train"}
  assert "frozen" in flat.values()
  depth, units = classifier.unit_depths(model, "last_k")
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    if "neck" in path_str(path):
      assert depth(path) == units + 1
