"""BiGAN / ALI: the losses against numpy, the players' gradients kept apart,
and a few hundred real steps on BreastMNIST without a NaN."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.objectives import adversarial
from tests.tiny import bind, compiled_on_fixed_batch, tiny_config


def numpy_losses(d_real, d_fake):
  sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  d = -np.log(sig(d_real)) - np.log(1 - sig(d_fake))
  eg = -np.log(1 - sig(d_real)) - np.log(sig(d_fake))
  return d.mean(), eg.mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_match_numpy(seed):
  rng = np.random.default_rng(seed)
  real, fake = rng.normal(size=(2, 7)) * 2
  d, eg = adversarial.adversarial_losses(
      jnp.asarray(real), jnp.asarray(fake), jnp.asarray(real),
      jnp.asarray(fake))
  want_d, want_eg = numpy_losses(real, fake)
  np.testing.assert_allclose(float(d), want_d, rtol=1e-5)
  np.testing.assert_allclose(float(eg), want_eg, rtol=1e-5)


def bigan_config(**overrides):
  config = tiny_config(**{"model.stage_sizes": (1, 1, 1, 1),
                          "online_probe": False, **overrides})
  config.objective = dict(name="bigan", latent_dim=8,
                          generator_channels=(16, 8, 4),
                          discriminator_channels=(8, 8),
                          discriminator_hidden=16)
  return config


def test_each_player_learns_only_from_its_own_term():
  """D's term reaches only D; the E/G term reaches only E, the code map
  and G: one optimizer step is simultaneous descent for both players."""
  bound = bind(bigan_config())
  model = bound.build_model(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = {"image": jnp.asarray(np.random.default_rng(0).integers(
      0, 255, (6, 28, 28, 1)), jnp.uint8)}
  loss_fn = bound.make_loss()

  def term(name):
    def f(p):
      _, metrics, _ = loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch,
                              jax.random.PRNGKey(1), {})
      return metrics[name]
    return jax.jit(jax.grad(f))(params)

  def reached(grads):
    return {part for part in grads if any(
        float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[part]))}

  assert reached(term("d_loss")) == {"discriminator"}
  assert reached(term("eg_loss")) == {"encoder", "to_code", "generator"}


def test_hundreds_of_real_steps_stay_finite(medmnist_dir, monkeypatch):
  monkeypatch.setenv("SSL_JAX_DATA_DIR", str(medmnist_dir))
  config = bigan_config()
  config.optim = dict(name="adamw", lr=2e-4, b1=0.5, scale_by_batch=False,
                      weight_decay=0.0, warmup_steps=0, final_lr_fraction=1.0,
                      grad_clip_norm=0.0)
  _, state, step_fn, batch = compiled_on_fixed_batch(config, batch_size=16)
  history = []
  for _ in range(300):
    state, metrics = step_fn(state, batch)
    history.append({k: float(v) for k, v in metrics.items()})
  assert all(np.isfinite(list(m.values())).all() for m in history)
  # Neither player wins outright: D's guess on real pairs stays a probability
  # strictly inside (0, 1).
  last = history[-1]
  assert 0.0 < last["d_real_prob"] < 1.0 and 0.0 < last["d_fake_prob"] < 1.0
