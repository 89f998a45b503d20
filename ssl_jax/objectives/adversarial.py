"""Adversarially learned inference: BiGAN / ALI, the review's GAN-based
generative strategy with an encoder worth keeping.

Donahue et al., ICLR 2017 ("Adversarial Feature Learning", BiGAN) and
Dumoulin et al., ICLR 2017 ("Adversarially Learned Inference", ALI): a
generator G maps codes z ~ N(0, I) to images, the encoder E (here the
configured ssl_jax ResNet/ViT plus a linear map to the code) maps images to
codes, and a discriminator D sees (image, code) pairs and tells (x, E(x))
from (G(z), z). At the optimum E inverts G, so E's features describe the
data distribution; fine-tuning keeps E and drops G and D.

One pure step, one optimizer, no alternation: the loss is the sum of two
terms whose gradients touch disjoint parameters. D's term sees E(x) and
G(z) through stop_gradient, so only D learns from it; the E/G term sees D
with its parameters behind stop_gradient, so only E and G learn from it.
One optax update is then simultaneous gradient descent for both players.
The E/G term is the non-saturating one (labels swapped, as BiGAN trains).
The discriminator has no BatchNorm (its batch statistics would mix real and
generated pairs); the generator is the autoencoders' ConvDecoder with a tanh
into the [-1, 1] input scale.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import views
from ssl_jax.models.decoders import ConvDecoder
from ssl_jax.objectives import base

Array = jax.Array


class JointDiscriminator(nnx.Module):
  """D(x, z): strided convs on the image, a dense layer on the code, a joint
  MLP to one logit; leaky ReLUs, no BatchNorm."""

  def __init__(self, *, channels_in: int, image_size: int, latent_dim: int,
               channels: tuple[int, ...], hidden: int, slope: float,
               rngs: nnx.Rngs):
    convs, size, c_in = [], image_size, channels_in
    for c_out in channels:
      convs.append(nnx.Conv(c_in, c_out, (4, 4), strides=(2, 2),
                            padding="SAME", rngs=rngs))
      size, c_in = -(-size // 2), c_out
    self.convs = nnx.List(convs)
    self.code = nnx.Linear(latent_dim, hidden, rngs=rngs)
    self.joint = nnx.Linear(size * size * c_in + hidden, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 1, rngs=rngs)
    self.slope = slope

  def __call__(self, x: Array, z: Array) -> Array:
    act = lambda v: nnx.leaky_relu(v, self.slope)  # noqa: E731
    for conv in self.convs:
      x = act(conv(x.astype(jnp.float32)))
    h = jnp.concatenate([x.reshape(x.shape[0], -1),
                         act(self.code(z.astype(jnp.float32)))], -1)
    return self.out(act(self.joint(h)))[:, 0]


class BiGAN(nnx.Module):
  """Encoder (+ linear map to the code), generator and joint discriminator."""

  def __init__(self, encoder: nnx.Module, to_code: nnx.Linear,
               generator: ConvDecoder, discriminator: JointDiscriminator):
    self.encoder = encoder
    self.to_code = to_code
    self.generator = generator
    self.discriminator = discriminator

  def encode(self, x: Array, *, train: bool) -> Array:
    return self.to_code(self.encoder(x, train=train))

  def generate(self, z: Array, *, train: bool) -> Array:
    return jnp.tanh(self.generator(z, train=train))


def build_bigan(hp: base.HParams, ctx: base.RunContext,
                rngs: nnx.Rngs) -> BiGAN:
  encoder = ctx.encoder(rngs)
  info = ctx.info
  return BiGAN(
      encoder, nnx.Linear(encoder.feature_dim, hp.latent_dim, rngs=rngs),
      ConvDecoder(hp.latent_dim, out_channels=info.num_channels,
                  image_size=info.image_size,
                  channels=tuple(hp.generator_channels), rngs=rngs),
      JointDiscriminator(channels_in=info.num_channels,
                         image_size=info.image_size, latent_dim=hp.latent_dim,
                         channels=tuple(hp.discriminator_channels),
                         hidden=hp.discriminator_hidden,
                         slope=hp.leaky_slope, rngs=rngs))


def adversarial_losses(d_real: Array, d_fake: Array, eg_real: Array,
                       eg_fake: Array) -> tuple[Array, Array]:
  """(D's loss, E/G's non-saturating loss) from discriminator logits.

  `d_*` are D's logits with E and G frozen, `eg_*` with D frozen (the same
  numbers, different gradients). D: -log D(x, E(x)) - log(1 - D(G(z), z));
  E/G, labels swapped: -log(1 - D(x, E(x))) - log D(G(z), z).
  """
  d_loss = jnp.mean(jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake))
  eg_loss = jnp.mean(jax.nn.softplus(eg_real) + jax.nn.softplus(-eg_fake))
  return d_loss, eg_loss


def frozen(module: nnx.Module) -> nnx.Module:
  """A copy of `module` whose parameters pass no gradient."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def make_bigan_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy, latent_dim = ctx.policy, hp.latent_dim

  def loss_fn(model, batch, rng, extra):
    view_rng, z_rng = jax.random.split(rng)
    x_real = views.train_view(policy, view_rng, batch["image"])
    z_fake = jax.random.normal(z_rng, (x_real.shape[0], latent_dim))
    z_real = model.encode(x_real, train=True)
    x_fake = model.generate(z_fake, train=True)
    sg = jax.lax.stop_gradient
    d = model.discriminator
    d_real, d_fake = d(x_real, sg(z_real)), d(sg(x_fake), z_fake)
    d_frozen = frozen(d)
    eg_real, eg_fake = d_frozen(x_real, z_real), d_frozen(x_fake, z_fake)
    d_loss, eg_loss = adversarial_losses(d_real, d_fake, eg_real, eg_fake)
    metrics = {"d_loss": d_loss, "eg_loss": eg_loss,
               "d_real_prob": jnp.mean(jax.nn.sigmoid(d_real)),
               "d_fake_prob": jnp.mean(jax.nn.sigmoid(d_fake))}
    return d_loss + eg_loss, metrics, extra

  return loss_fn


base.register(base.Objective(
    name="bigan", category="generative", minimax=True,
    paper="Donahue et al., ICLR 2017 (arXiv:1605.09782); Dumoulin et al., "
          "ICLR 2017 (arXiv:1606.00704)",
    hparams=dict(latent_dim=64, generator_channels=(128, 64, 32),
                 discriminator_channels=(32, 64), discriminator_hidden=256,
                 leaky_slope=0.2),
    build_model=build_bigan, make_loss=make_bigan_loss))
