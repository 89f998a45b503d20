"""Generative objectives: encode the image, decode it back.

- autoencoder: reconstruct the (augmented) view through the encoder's pooled
  features; the classic bottleneck autoencoder (Hinton & Salakhutdinov,
  Science 2006).
- denoising_autoencoder (Vincent et al., ICML 2008, "Extracting and
  Composing Robust Features with Denoising Autoencoders"): corrupt the input
  with additive Gaussian and/or masking noise, reconstruct the clean view.
- vae (Kingma & Welling, ICLR 2014, "Auto-Encoding Variational Bayes"):
  features -> mean and log-variance of a Gaussian posterior, a sample by
  reparameterisation, decoder; Gaussian reconstruction + kl_weight x KL.

Reconstructions and targets live in the standardised [-1, 1] input scale
(`augment.standardize`), the scale the encoder is trained and evaluated on.
The decoder (`models.decoders.ConvDecoder`) is dropped after pretraining.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import augment, views
from ssl_jax.models.decoders import ConvDecoder
from ssl_jax.objectives import base

Array = jax.Array


def mse(pred: Array, target: Array) -> Array:
  """Mean squared error over every pixel and example, in float32."""
  return jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


def corrupt(rng: Array, x01: Array, *, noise_std: float,
            mask_prob: float) -> Array:
  """Vincent et al. 2008 corruptions of [0, 1] images [B, H, W, C].

  Masking noise sets each pixel (all its channels) to 0 with `mask_prob`;
  then isotropic Gaussian noise of std `noise_std` (in [0, 1] units) is
  added to every value. Not clipped, so the noise keeps its stated moments.
  """
  k_mask, k_noise = jax.random.split(rng)
  if mask_prob > 0:
    keep = jax.random.bernoulli(k_mask, 1.0 - mask_prob, x01.shape[:3] + (1,))
    x01 = jnp.where(keep, x01, 0.0)
  if noise_std > 0:
    x01 = x01 + noise_std * jax.random.normal(k_noise, x01.shape, x01.dtype)
  return x01


def gaussian_kl(mean: Array, logvar: Array) -> Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example [B], closed form:
  -1/2 sum(1 + logvar - mean^2 - exp(logvar)) (Kingma & Welling 2014, App. B).
  """
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  return -0.5 * jnp.sum(1.0 + logvar - mean**2 - jnp.exp(logvar), axis=-1)


def reparameterize(rng: Array, mean: Array, logvar: Array) -> Array:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): a sample whose
  gradient flows to mean and logvar (the reparameterisation trick)."""
  eps = jax.random.normal(rng, mean.shape, jnp.float32)
  return mean + jnp.exp(0.5 * logvar) * eps


class Autoencoder(nnx.Module):
  """Encoder -> pooled features -> ConvDecoder -> image."""

  def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
    self.encoder = encoder
    self.decoder = decoder

  def __call__(self, x: Array, *, train: bool) -> Array:
    return self.decoder(self.encoder(x, train=train), train=train)


class VariationalAutoencoder(nnx.Module):
  """Encoder -> (mean, logvar) heads -> sampled latent -> ConvDecoder."""

  def __init__(self, encoder: nnx.Module, latent_dim: int,
               decoder: nnx.Module, *, rngs: nnx.Rngs):
    self.encoder = encoder
    self.mean = nnx.Linear(encoder.feature_dim, latent_dim, rngs=rngs)
    # Zero init: the posterior starts at unit variance, so early samples are
    # neither deterministic nor exploding.
    self.logvar = nnx.Linear(encoder.feature_dim, latent_dim,
                             kernel_init=nnx.initializers.zeros_init(),
                             rngs=rngs)
    self.decoder = decoder

  def __call__(self, x: Array, rng: Array, *, train: bool
               ) -> tuple[Array, Array, Array]:
    """-> (reconstruction, mean, logvar)."""
    features = self.encoder(x, train=train)
    mean, logvar = self.mean(features), self.logvar(features)
    return (self.decoder(reparameterize(rng, mean, logvar), train=train),
            mean, logvar)


def _decoder(hp: base.HParams, info: base.DataInfo, in_dim: int,
             rngs: nnx.Rngs) -> ConvDecoder:
  return ConvDecoder(in_dim, out_channels=info.num_channels,
                     image_size=info.image_size,
                     channels=hp.decoder_channels, rngs=rngs)


def build_autoencoder(hp, ctx, rngs) -> Autoencoder:
  encoder = ctx.encoder(rngs)
  return Autoencoder(encoder, _decoder(hp, ctx.info, encoder.feature_dim, rngs))


def build_vae(hp, ctx, rngs) -> VariationalAutoencoder:
  encoder = ctx.encoder(rngs)
  latent_dim = hp.latent_dim
  return VariationalAutoencoder(
      encoder, latent_dim, _decoder(hp, ctx.info, latent_dim, rngs), rngs=rngs)


def make_autoencoder_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy

  def loss_fn(model, batch, rng, extra):
    x = views.train_view(policy, rng, batch["image"])
    loss = mse(model(x, train=True), x)
    return loss, {"recon_mse": loss}, extra

  return loss_fn


def make_denoising_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Vincent et al. 2008. Logs `noisy_mse`, the error of returning the
  corrupted input unchanged: recon_mse below it means real denoising."""
  policy = ctx.policy
  noise_std = hp.noise_std
  mask_prob = hp.mask_prob

  def loss_fn(model, batch, rng, extra):
    view_rng, noise_rng = jax.random.split(rng)
    clean = views.apply(policy, view_rng, batch["image"])
    noisy = augment.standardize(corrupt(noise_rng, clean, noise_std=noise_std,
                                        mask_prob=mask_prob))
    clean = augment.standardize(clean)
    loss = mse(model(noisy, train=True), clean)
    return loss, {"recon_mse": loss, "noisy_mse": mse(noisy, clean)}, extra

  return loss_fn


def make_vae_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Kingma & Welling 2014: loss = MSE + kl_weight * KL.

  MSE is per pixel, KL per example (summed over latent dims). For a Gaussian
  decoder of fixed variance s^2 over D = H*W*C values, the negative ELBO / D
  is MSE / (2 s^2) + KL / D + const, so kl_weight = 2 s^2 / D is the exact
  ELBO and other values are a beta-VAE (Higgins et al. 2017).
  """
  policy = ctx.policy
  kl_weight = hp.kl_weight

  def loss_fn(model, batch, rng, extra):
    view_rng, z_rng = jax.random.split(rng)
    x = views.train_view(policy, view_rng, batch["image"])
    recon, mean, logvar = model(x, z_rng, train=True)
    recon_loss = mse(recon, x)
    kl = jnp.mean(gaussian_kl(mean, logvar))
    return recon_loss + kl_weight * kl, {"recon_mse": recon_loss,
                                         "kl": kl}, extra

  return loss_fn


base.register(base.Objective(
    name="autoencoder", category="generative",
    paper="Hinton & Salakhutdinov, Science 2006 (doi:10.1126/science.1127647)",
    hparams=dict(decoder_channels=(128, 64, 32)),
    build_model=build_autoencoder, make_loss=make_autoencoder_loss))

base.register(base.Objective(
    name="denoising_autoencoder", category="generative",
    paper="Vincent et al., ICML 2008 (doi:10.1145/1390156.1390294)",
    hparams=dict(decoder_channels=(128, 64, 32), noise_std=0.1, mask_prob=0.25),
    build_model=build_autoencoder, make_loss=make_denoising_loss))

base.register(base.Objective(
    name="vae", category="generative",
    paper="Kingma & Welling, ICLR 2014 (arXiv:1312.6114)",
    hparams=dict(decoder_channels=(128, 64, 32), latent_dim=128,
                 kl_weight=1e-3),
    build_model=build_vae, make_loss=make_vae_loss))
