"""Sharpness-aware minimisation (`optim.sam_rho`) in the one train step: the
update follows the gradient taken at the moved weights, everything else
(loss, BatchNorm-like state, the objective's extra) the first pass."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssl_jax.train import optim, state as state_lib, step as step_lib
from tests.test_loop_and_optim import _opt_config
from tests.test_scale_throughput import Counted


def _loss(model, batch, rng, extra):
  del rng
  loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
  return loss, {"mse": loss}, {"seen": extra["seen"] + 1}


def _batch(n=8):
  rng = np.random.default_rng(0)
  return {"x": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
          "y": jnp.asarray(rng.normal(size=(n,)), jnp.float32)}


def _stepped(rho, lr=0.1, k=1, mask=None):
  graphdef, state = state_lib.create(Counted(), optax.sgd(lr),
                                     {"seen": jnp.zeros((), jnp.int32)},
                                     jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_train_step(graphdef, _loss, optax.sgd(lr),
                                          grad_accum_steps=k, sam_rho=rho,
                                          sam_mask=mask))
  return state, step(state, _batch())


def _mse(params, batch):
  """The toy model's loss as a function of its weights alone."""
  pred = batch["x"] @ params["kernel"] + params["bias"]
  return jnp.mean((pred[:, 0] - batch["y"]) ** 2)


def _weights(params):
  return {"kernel": params["linear"]["kernel"].value,
          "bias": params["linear"]["bias"].value}


@pytest.mark.parametrize("move", ["kernel and bias", "bias"])
def test_update_follows_the_gradient_at_the_moved_weights(move):
  rho, lr, batch = 0.05, 0.1, _batch()
  mask = None if move == "kernel and bias" else (
      lambda params: jax.tree_util.tree_map_with_path(
          lambda path, _: "bias" in jax.tree_util.keystr(path), params))
  before, (after, metrics) = _stepped(rho, lr, mask=mask)
  w = _weights(before.params)
  g = jax.grad(_mse)(w, batch)
  if move == "bias":
    g = {"kernel": jnp.zeros_like(g["kernel"]), "bias": g["bias"]}
  norm = optax.global_norm(g)
  moved = jax.tree.map(lambda p, d: p + rho * d / norm, w, g)
  expected = jax.tree.map(lambda p, d: p - lr * d, w, jax.grad(_mse)(moved, batch))
  got = _weights(after.params)
  for key in ("kernel", "bias"):
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-7)
  plain = jax.tree.map(lambda p, d: p - lr * d, w, jax.grad(_mse)(w, batch))
  assert not np.allclose(got["kernel"], plain["kernel"], rtol=1e-6, atol=0)
  # The logged loss is at the weights the step started from; the state the
  # forward pass keeps and the objective's extra come from that pass alone.
  np.testing.assert_allclose(metrics["loss"], _mse(w, batch), rtol=1e-6)
  assert int(after.rest["calls"].value) == 1
  assert int(after.extra["seen"]) == 1


def test_rho_zero_is_the_plain_step():
  before, (plain, _) = _stepped(0.0)
  w = _weights(before.params)
  expected = jax.tree.map(lambda p, d: p - 0.1 * d, w,
                          jax.grad(_mse)(w, _batch()))
  got = _weights(plain.params)
  for key in ("kernel", "bias"):
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-7)


def test_with_micro_batches_it_moves_along_the_accumulated_gradient():
  _, (one, _) = _stepped(0.05, k=1)
  _, (four, _) = _stepped(0.05, k=4)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert int(four.rest["calls"].value) == 4  # the first pass's micro-batches


def test_a_negative_radius_is_refused_naming_the_field():
  with pytest.raises(ValueError, match=r"config.optim.sam_rho=-0.1; expected >= 0"):
    optim.check(_opt_config(sam_rho=-0.1), 100)
  with pytest.raises(ValueError, match="optim.sam_rho must be >= 0"):
    step_lib.make_train_step(None, _loss, optax.sgd(0.1), sam_rho=-0.1)
