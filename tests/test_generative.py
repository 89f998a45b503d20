"""Generative objectives: autoencoder, denoising autoencoder, VAE.

Reference checks (KL closed form, reparameterisation and noise statistics,
decoder shapes) against numpy, then a few real train steps per method on a
fixed BreastMNIST batch.
"""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ssl_jax.models.decoders import ConvDecoder
from ssl_jax.objectives import generative
from tests.tiny import bind
from tests.test_innate import fixed_batch, run_steps  # noqa: F401  (fixture)


def numpy_kl(mean, logvar):
  """KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, summed."""
  s = np.exp(0.5 * logvar)
  return np.sum(-np.log(s) + (s**2 + mean**2) / 2 - 0.5, axis=-1)


def test_gaussian_kl_matches_numpy_and_monte_carlo():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 5))
  logvar = rng.normal(scale=0.5, size=(3, 5))
  got = np.asarray(generative.gaussian_kl(jnp.asarray(mean),
                                          jnp.asarray(logvar)))
  np.testing.assert_allclose(got, numpy_kl(mean, logvar), rtol=1e-5)
  # Monte Carlo: E_q[log q(z) - log p(z)] for example 0.
  s = np.exp(0.5 * logvar[0])
  z = mean[0] + s * rng.normal(size=(200_000, 5))
  log_q = -0.5 * (((z - mean[0]) / s) ** 2 + np.log(2 * np.pi * s**2))
  log_p = -0.5 * (z**2 + np.log(2 * np.pi))
  np.testing.assert_allclose(np.mean(np.sum(log_q - log_p, -1)), got[0],
                             rtol=0.02)
  zero = generative.gaussian_kl(jnp.zeros((2, 4)), jnp.zeros((2, 4)))
  np.testing.assert_array_equal(zero, np.zeros(2))


def test_reparameterize_has_the_posterior_moments_and_gradients():
  mean = jnp.array([1.0, -2.0, 0.0])
  logvar = jnp.log(jnp.array([1.0, 4.0, 0.25]))
  n = 100_000
  z = generative.reparameterize(jax.random.PRNGKey(0),
                                jnp.broadcast_to(mean, (n, 3)),
                                jnp.broadcast_to(logvar, (n, 3)))
  z = np.asarray(z, np.float64)
  np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
  np.testing.assert_allclose(z.var(0), np.exp(logvar), rtol=0.02)
  # dz/dmean = 1: the sample is differentiable in the posterior's parameters.
  grad = jax.grad(lambda m: generative.reparameterize(
      jax.random.PRNGKey(1), m, logvar).sum())(mean)
  np.testing.assert_allclose(grad, np.ones(3))


def test_gaussian_noise_statistics():
  clean = jnp.full((8, 32, 32, 3), 0.5)
  noisy = generative.corrupt(jax.random.PRNGKey(0), clean, noise_std=0.2,
                             mask_prob=0.0)
  delta = np.asarray(noisy - clean, np.float64)
  assert abs(delta.mean()) < 0.005
  np.testing.assert_allclose(delta.std(), 0.2, rtol=0.02)


def test_masking_noise_statistics():
  clean = jnp.full((8, 32, 32, 3), 0.7)
  noisy = np.asarray(generative.corrupt(jax.random.PRNGKey(1), clean,
                                        noise_std=0.0, mask_prob=0.3))
  masked = noisy == 0.0
  # Whole pixels are masked (every channel), the rest untouched.
  assert (masked.all(-1) == masked.any(-1)).all()
  np.testing.assert_array_equal(noisy[~masked], np.float32(0.7))
  np.testing.assert_allclose(masked.mean(), 0.3, atol=0.01)


@pytest.mark.parametrize("size,channels,widths", [
    (28, 1, (16, 8, 4)), (30, 3, (8, 4)), (32, 3, (8,)), (64, 3, (8, 4, 4, 4))])
def test_decoder_output_shape(size, channels, widths):
  # Shapes only (traced, not compiled): the smoke tests run a real decoder.
  def decode():
    decoder = ConvDecoder(12, out_channels=channels, image_size=size,
                          channels=widths, rngs=nnx.Rngs(0))
    return decoder(jnp.ones((2, 12)), train=True)
  out = jax.eval_shape(decode)
  assert out.shape == (2, size, size, channels)
  assert out.dtype == jnp.float32


# --- the reconstruction losses against numpy, with stub models -------------
# A stub model's output is known in closed form, so each loss is recomputed
# from the uint8 pixels alone: the input is the standardised view ([0, 1] ->
# [-1, 1]), the target the clean view, the MSE a mean over every value.


def numpy_view(images):
  """uint8 -> the standardised view of the identity policy, in float64."""
  return (np.asarray(images, np.float64) / 255.0 - 0.5) / 0.5


def stub_config(**objective):
  from tests.tiny import tiny_config  # noqa: PLC0415
  config = tiny_config()
  config.objective = objective
  config.augment.policy = "none"  # the loss is under test, not the views
  return config


@pytest.fixture(scope="module")
def pixels():
  return np.random.default_rng(7).integers(0, 256, (16, 16, 16, 1), np.uint8)


def affine(x, *, train):
  """A stub decoder output: 0.5 x + 0.25 (not the identity, not zero)."""
  assert train
  return 0.5 * x + 0.25


def test_autoencoder_loss_matches_numpy(pixels):
  loss_fn = bind(stub_config(name="autoencoder")).make_loss()
  loss, metrics, _ = loss_fn(affine, {"image": jnp.asarray(pixels)},
                             jax.random.PRNGKey(0), {})
  x = numpy_view(pixels)
  np.testing.assert_allclose(float(loss), np.mean((0.5 * x + 0.25 - x) ** 2),
                             rtol=1e-5)
  assert float(metrics["recon_mse"]) == float(loss)


def test_denoising_loss_targets_the_clean_view_from_the_noisy_input(pixels):
  config = stub_config(name="denoising_autoencoder", noise_std=0.3,
                       mask_prob=0.0)
  loss_fn = bind(config).make_loss()
  batch, rng = {"image": jnp.asarray(pixels)}, jax.random.PRNGKey(0)
  # A model that outputs zeros scores the clean view's mean square, whatever
  # the noise: the target is the clean view.
  zero, _, _ = loss_fn(lambda x, train: jnp.zeros_like(x), batch, rng, {})
  np.testing.assert_allclose(float(zero), np.mean(numpy_view(pixels) ** 2),
                             rtol=1e-5)
  # The identity scores the noise: std 0.3 in [0, 1] is 0.6 in [-1, 1].
  ident, metrics, _ = loss_fn(lambda x, train: x, batch, rng, {})
  np.testing.assert_allclose(float(ident), 0.6 ** 2, rtol=0.05)
  np.testing.assert_allclose(float(metrics["noisy_mse"]), float(ident),
                             rtol=1e-6)
  # The affine stub: its error on the clean view plus the scaled noise.
  got, _, _ = loss_fn(affine, batch, rng, {})
  x = numpy_view(pixels)
  expected = np.mean((0.5 * x + 0.25 - x) ** 2) + 0.25 * 0.6 ** 2
  np.testing.assert_allclose(float(got), expected, rtol=0.05)


def test_vae_loss_is_numpy_mse_plus_weighted_mean_kl(pixels):
  rng = np.random.default_rng(3)
  mean, logvar = rng.normal(size=(16, 4)), rng.normal(scale=0.5, size=(16, 4))

  def stub(x, z_rng, *, train):
    assert train and z_rng.shape == (2,)
    return (affine(x, train=train), jnp.asarray(mean, jnp.float32),
            jnp.asarray(logvar, jnp.float32))

  config = stub_config(name="vae", kl_weight=0.01, latent_dim=4)
  loss, metrics, _ = bind(config).make_loss()(
      stub, {"image": jnp.asarray(pixels)}, jax.random.PRNGKey(0), {})
  x = numpy_view(pixels)
  recon = np.mean((0.5 * x + 0.25 - x) ** 2)
  kl = np.mean(numpy_kl(mean, logvar))
  np.testing.assert_allclose(float(metrics["recon_mse"]), recon, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-5)
  np.testing.assert_allclose(float(loss), recon + 0.01 * kl, rtol=1e-5)


@pytest.mark.parametrize("name,hp", [
    ("vae", dict(latent_dim=16, kl_weight=1e-3, decoder_channels=(16, 8, 4))),
    ("denoising_autoencoder", dict(decoder_channels=(16, 8, 4)))])
def test_logged_terms_add_up_in_a_real_step(name, hp, fixed_batch):  # noqa: F811
  """The logged terms are the loss's own parts (training itself is the
  objective contract's test)."""
  (last,) = run_steps(dict(hp, name=name), fixed_batch, lr=3e-3, steps=1)
  if name == "vae":
    np.testing.assert_allclose(
        last["loss"], last["recon_mse"] + 1e-3 * last["kl"], rtol=1e-5)
  else:
    np.testing.assert_allclose(last["loss"], last["recon_mse"], rtol=1e-6)
    assert float(last["noisy_mse"]) > 0.0
