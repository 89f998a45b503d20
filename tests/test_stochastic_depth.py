"""Stochastic depth (`finetune.drop_path`): rates by depth, per-sample
branch drops, and encoders whose weights and evaluation do not change."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import models
from ssl_jax.jobs import finetune
from ssl_jax.models import heads, stochastic_depth
from ssl_jax.objectives import supervised
from tests.tiny import tiny_config


def test_rates_rise_linearly_from_the_first_block_to_the_last():
  assert stochastic_depth.depth_rates(0.3, 4) == pytest.approx(
      [0.0, 0.1, 0.2, 0.3])
  assert stochastic_depth.depth_rates(0.0, 3) == [0.0, 0.0, 0.0]
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match="config.finetune.drop_path"):
      stochastic_depth.check_rate(bad, "config.finetune.drop_path")


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
  branch = jnp.ones((4000, 3, 3, 2))
  out = np.asarray(stochastic_depth.drop_path(branch, 0.25,
                                              jax.random.key(0)))
  per_sample = out.reshape(len(out), -1)
  np.testing.assert_allclose(np.unique(per_sample), [0.0, 1 / 0.75])
  assert (per_sample == per_sample[:, :1]).all()  # one draw per sample
  assert (per_sample[:, 0] == 0).mean() == pytest.approx(0.25, abs=0.03)
  assert out.mean() == pytest.approx(1.0, abs=0.05)  # expectation kept
  np.testing.assert_array_equal(
      stochastic_depth.drop_path(branch, 0.25, None), branch)


def _encoder(name, rate, **kw):
  return models.get(name)(in_channels=1, image_size=28, rngs=nnx.Rngs(0),
                          drop_path_rate=rate, **kw)


ENCODERS = {
    "resnet18": dict(width_multiplier=0.125, zero_init_residual=False),
    "vit_tiny": dict(depth=2, hidden_dim=32, num_heads=2),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_an_encoder_with_stochastic_depth_has_the_same_weights_and_eval(name):
  x = jax.random.normal(jax.random.key(1), (6, 28, 28, 1))
  plain = _encoder(name, 0.0, **ENCODERS[name])
  dropping = _encoder(name, 0.5, **ENCODERS[name])
  for a, b in zip(jax.tree.leaves(nnx.state(plain)),
                  jax.tree.leaves(nnx.state(dropping))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(plain(x), dropping(x))
  draws = [dropping(x, train=True, drop_key=jax.random.key(k))
           for k in (2, 2, 3)]
  np.testing.assert_array_equal(draws[0], draws[1])  # the key decides
  assert not np.allclose(draws[0], draws[2])
  with pytest.raises(ValueError, match="finetune.drop_path"):
    dropping(x, train=True)  # a training call without randomness


def test_training_logits_draw_drops_only_for_an_encoder_that_has_them():
  x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  for rate in (0.0, 0.5):
    clf = heads.Classifier(_encoder("resnet18", rate, **ENCODERS["resnet18"]),
                           2, rngs=nnx.Rngs(0), head_init="torch_default")
    a, b = (supervised.trained_logits(clf, x, jax.random.key(k))
            for k in (0, 1))
    assert np.allclose(a, b) == (rate == 0.0)
  # a model without an encoder (or a plugin's) is called as before
  assert supervised.trained_logits(lambda x, train: x.sum(), x,
                                   jax.random.key(0)) == x.sum()


def test_stage2_config_builds_the_encoder_with_the_rate():
  config = tiny_config(**{"finetune.drop_path": 0.2})
  info = finetune.common.data_info(config)
  assert finetune.stage2_config(config, None, info).model.drop_path_rate == 0.2
  plain = finetune.stage2_config(tiny_config(), None, info)
  assert "drop_path_rate" not in plain.model  # records stay as they were
  with pytest.raises(ValueError, match="config.finetune.drop_path=1.5"):
    finetune.stage2_config(tiny_config(**{"finetune.drop_path": 1.5}), None,
                           info)
