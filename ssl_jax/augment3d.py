"""Device-side views of volumes [B, D, H, W, C]: pure JAX, vmapped per volume.

The 3D counterpart of `augment` (same layout, same input scale): a frozen
`Policy3D` holds every number, each volume gets its own key from
`jax.random.split(rng, B)` and runs one chain

  crop -> flips / in-plane rot90 -> CT window -> brightness / contrast
  -> blur -> solarize.

Cropping and blur are separable: one banded gather-and-sum (resampling) or
shifted-slice sum (blur) per axis D, H, W, so shapes stay static and nothing
branches. Ops a policy switches off are skipped at trace time, so the
identity policy is a dtype cast and exact.

Policies are normally lifted from the 2D preset a config names
(`from_2d(augment.get('medical_safe'))`): the same kept fraction of the scan,
left-right flips along W, up-down along H, rot90 in the H-W plane, the same
CT window, intensity jitter, blur and `min_visible`; never a flip along D
(head-feet), which no 2D policy implies. Colour-only ops (saturation, hue,
grayscale, HED stain jitter) do not exist for one-channel volumes. `views.apply` picks this module for 5-D batches.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from ssl_jax import augment

Array = jax.Array

SPATIAL_AXES = (0, 1, 2)  # D, H, W of one [D, H, W, C] volume


@dataclasses.dataclass(frozen=True)
class Policy3D:
  """Every number of a volume view policy; frozen and hashable (jit-static).

  Defaults are the identity. `crop_*_volume` are fractions of the volume
  kept; `crop_aspect` bounds the log-uniform ratios H/D and W/D of the crop
  box relative to the volume's own; `flip_probs` are per axis (D, H, W).
  """
  crop_min_volume: float = 1.0
  crop_max_volume: float = 1.0
  crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
  flip_probs: tuple[float, float, float] = (0.0, 0.0, 0.0)  # D, H, W
  rot90_hw: bool = False  # uniform k * 90 degrees in the H-W plane
  brightness: float = 0.0  # additive delta ~ U[-b, b]
  contrast: float = 0.0  # factor ~ U[1 - c, 1 + c] around the channel mean
  jitter_prob: float = 1.0  # one coin for brightness and contrast together
  window_center_jitter: float = 0.0  # CT window centre ~ U[0.5 +- a]
  window_width_jitter: float = 0.0  # CT window width ~ U[1 +- b]
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)  # voxels, U[lo, hi]
  solarize_prob: float = 0.0
  min_visible: float = 0.0  # masks leave >= this fraction visible (MAE)
  description: str = ""

  def __post_init__(self):
    object.__setattr__(self, "flip_probs",
                       tuple(float(p) for p in self.flip_probs))
    if len(self.flip_probs) != 3:
      raise ValueError(f"flip_probs needs one probability per axis (D, H, W), "
                       f"got {self.flip_probs}")
    augment.check_ranges(
        self, crop=("crop_min_volume", "crop_max_volume"),
        probs=dict(zip(("flip_probs[D]", "flip_probs[H]", "flip_probs[W]"),
                       self.flip_probs),
                   jitter_prob=self.jitter_prob, blur_prob=self.blur_prob,
                   solarize_prob=self.solarize_prob),
        bounded=(("brightness", 1.0), ("contrast", 1.0),
                 ("window_center_jitter", 0.5), ("min_visible", 1.0)))

def from_2d(policy: augment.Policy, **overrides) -> Policy3D:
  """The 2D policy's geometric and intensity numbers, applied to volumes.

  Kept fraction of the image -> of the volume; hflip -> W, vflip -> H, no D
  flip; rot90 -> in the H-W plane. `overrides` set Policy3D fields (e.g.
  `flip_probs=(0.5, 0, 0.5)`), for configs' `augment.volume` block.
  """
  lifted = Policy3D(
      crop_min_volume=policy.crop_min_area,
      crop_max_volume=policy.crop_max_area,
      crop_aspect=policy.crop_aspect,
      flip_probs=(0.0, policy.vflip_prob, policy.hflip_prob),
      rot90_hw=policy.rot90,
      brightness=policy.brightness, contrast=policy.contrast,
      jitter_prob=policy.jitter_prob,
      window_center_jitter=getattr(policy, "window_center_jitter", 0.0),
      window_width_jitter=getattr(policy, "window_width_jitter", 0.0),
      blur_prob=policy.blur_prob, blur_sigma=policy.blur_sigma,
      solarize_prob=policy.solarize_prob,
      min_visible=getattr(policy, "min_visible", 0.0),
      description=f"volume view of: {policy.description}")
  return dataclasses.replace(lifted, **overrides) if overrides else lifted


def as_policy3d(policy: Policy3D | augment.Policy) -> Policy3D:
  return policy if isinstance(policy, Policy3D) else from_2d(policy)


# ------------------------------------------------------------- resampling --

def _resample_axis(x: Array, taps: tuple[Array, Array], axis: int) -> Array:
  """out[o] = sum_t w[o, t] * x[idx[o, t]] along `axis`: n slab gathers."""
  idx, w = taps
  x = jnp.moveaxis(x, axis, 0)
  shape = (-1,) + (1,) * (x.ndim - 1)
  out = w[:, 0].reshape(shape) * x[idx[:, 0]]
  for t in range(1, idx.shape[1]):
    out = out + w[:, t].reshape(shape) * x[idx[:, t]]
  return jnp.moveaxis(out, 0, axis)


def _resample(x: Array, starts, lengths, out_size: int) -> Array:
  """Separable (anti-aliased) linear resampling of one [D, H, W, C] volume:
  the box [start, start + length) per axis, to out_size voxels per axis."""
  for axis in SPATIAL_AXES:
    n = x.shape[axis]
    taps = augment._linear_taps(starts[axis], lengths[axis], n, out_size)  # pylint: disable=protected-access
    x = _resample_axis(x, taps, axis)
  return x


def resize(x01: Array, size: int) -> Array:
  """Float [B, D, H, W, C] -> [B, size, size, size, C] (antialiased)."""
  shape = x01.shape[1:4]
  return jax.vmap(lambda v: _resample(v, (0.0,) * 3,
                                      tuple(map(float, shape)), size))(x01)


def crop_box(rng: Array, *, min_volume: float, max_volume: float,
             aspect: tuple[float, float]) -> tuple[Array, Array]:
  """Samples (corner [3], sides [3]) as fractions of the volume's D, H, W.

  Volume ~ U[min, max]; log(H/D) and log(W/D) uniform within `aspect`;
  sides then clipped to 1, which keeps a little less than drawn only when
  the draw is near the whole volume with an extreme aspect.
  """
  u = jax.random.uniform(rng, (6,))
  volume = min_volume + u[0] * (max_volume - min_volume)
  lo, hi = math.log(aspect[0]), math.log(aspect[1])
  log_ratio = jnp.stack([0.0, lo + u[1] * (hi - lo), lo + u[2] * (hi - lo)])
  # Sides s_i = c * exp(r_i) with prod s_i = volume.
  log_side = (jnp.log(volume) - jnp.sum(log_ratio)) / 3 + log_ratio
  sides = jnp.minimum(jnp.exp(log_side), 1.0)
  corner = u[3:] * (1.0 - sides)
  return corner, sides


def random_resized_crop(volume: Array, rng: Array, *, min_volume: float,
                        max_volume: float, aspect: tuple[float, float],
                        out_size: int) -> Array:
  """Crops a random box of one [D, H, W, C] volume, resampled to out_size^3."""
  corner, sides = crop_box(rng, min_volume=min_volume, max_volume=max_volume,
                           aspect=aspect)
  dims = jnp.asarray(volume.shape[:3], jnp.float32)
  starts, lengths = corner * dims, sides * dims
  return _resample(volume, tuple(starts), tuple(lengths), out_size)


# ------------------------------------------------------------ geometric --

def random_flip(volume: Array, rng: Array, *,
                flip_probs: tuple[float, float, float]) -> Array:
  """Mirrors one [D, H, W, C] volume along each axis with its probability."""
  u = jax.random.uniform(rng, (3,))
  for axis, p in zip(SPATIAL_AXES, flip_probs):
    if p > 0:
      volume = jnp.where(u[axis] < p, jnp.flip(volume, axis), volume)
  return volume


def flip_axes(policy: Policy3D | augment.Policy) -> tuple[int, ...]:
  """The axes of a [D, H, W, C] volume the policy may mirror (its
  flip_probs > 0; a 2D policy lifted by `from_2d`)."""
  probs = as_policy3d(policy).flip_probs
  return tuple(axis for axis, p in zip(SPATIAL_AXES, probs) if p > 0)


def random_rot90_hw(volume: Array, rng: Array) -> Array:
  """Rotates each axial (H-W) slice by the same multiple of 90 degrees."""
  k = jax.random.randint(rng, (), 0, 4)
  return jax.lax.switch(k, [functools.partial(jnp.rot90, k=i, axes=(1, 2))
                            for i in range(4)], volume)


# -------------------------------------------------------------- intensity --

def intensity_jitter(volume: Array, rng: Array, *, prob: float,
                     brightness: float, contrast: float) -> Array:
  """Additive brightness and contrast around the per-channel mean (as the 2D
  `color_jitter`), together with `prob`; clipped to [0, 1] after each."""
  u = jax.random.uniform(rng, (3,))
  sym = 2 * u - 1
  x = volume
  if brightness > 0:
    x = jnp.clip(x + brightness * sym[1], 0.0, 1.0)
  if contrast > 0:
    mean = jnp.mean(x, axis=SPATIAL_AXES, keepdims=True)
    x = jnp.clip((x - mean) * (1 + contrast * sym[2]) + mean, 0.0, 1.0)
  return jnp.where(u[0] < prob, x, volume)


def _blur_axis(x: Array, taps: Array, axis: int) -> Array:
  """Normalized 1-D convolution along `axis` (edge taps renormalized)."""
  r = (taps.shape[0] - 1) // 2
  x = jnp.moveaxis(x, axis, 0)
  size = x.shape[0]
  xp = jnp.pad(x, ((r, r),) + ((0, 0),) * (x.ndim - 1))
  ones = jnp.pad(jnp.ones((size,), x.dtype), (r, r))
  out = sum(taps[t] * xp[t:t + size] for t in range(2 * r + 1))
  norm = sum(taps[t] * ones[t:t + size] for t in range(2 * r + 1))
  return jnp.moveaxis(out / norm.reshape((size,) + (1,) * (x.ndim - 1)), 0,
                      axis)


def random_blur(volume: Array, rng: Array, *, prob: float,
                sigma: tuple[float, float]) -> Array:
  """Separable Gaussian blur along D, H, W, sigma ~ U[sigma] voxels, with
  `prob`; radius as the 2D blur (side // 20, >= 1, <= 3 sigma_max)."""
  u = jax.random.uniform(rng, (2,))
  radius = max(1, min(min(volume.shape[:3]) // 20, math.ceil(3 * sigma[1])))
  s = sigma[0] + u[1] * (sigma[1] - sigma[0])
  d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  taps = jnp.exp(-0.5 * (d / s) ** 2)
  blurred = volume
  for axis in SPATIAL_AXES:
    blurred = _blur_axis(blurred, taps, axis)
  return jnp.where(u[0] < prob, blurred, volume)


# ------------------------------------------------------------------ views --

def _augment_one(volume: Array, rng: Array, *, policy: Policy3D,
                 out_size: int) -> Array:
  """One float [D, H, W, C] volume -> one view; skips ops that are off."""
  k_crop, k_flip, k_rot, k_jit, k_blur, k_sol = jax.random.split(rng, 6)
  p = policy
  if p.crop_min_volume < 1.0 or volume.shape[:3] != (out_size,) * 3:
    volume = random_resized_crop(
        volume, k_crop, min_volume=p.crop_min_volume,
        max_volume=p.crop_max_volume, aspect=p.crop_aspect, out_size=out_size)
  if any(q > 0 for q in p.flip_probs):
    volume = random_flip(volume, k_flip, flip_probs=p.flip_probs)
  if p.rot90_hw:
    volume = random_rot90_hw(volume, k_rot)
  if p.window_center_jitter > 0 or p.window_width_jitter > 0:
    volume = augment.random_window(volume, jax.random.fold_in(rng, 6),
                                   center_jitter=p.window_center_jitter,
                                   width_jitter=p.window_width_jitter)
  if p.jitter_prob > 0 and (p.brightness > 0 or p.contrast > 0):
    volume = intensity_jitter(volume, k_jit, prob=p.jitter_prob,
                              brightness=p.brightness, contrast=p.contrast)
  if p.blur_prob > 0:
    volume = random_blur(volume, k_blur, prob=p.blur_prob, sigma=p.blur_sigma)
  if p.solarize_prob > 0:
    volume = augment.random_solarize(volume, k_sol, prob=p.solarize_prob)
  return jnp.clip(volume, 0.0, 1.0)


def _check(volumes: Array) -> None:
  if volumes.ndim != 5:
    raise ValueError(f"expected volumes [B, D, H, W, C], got shape "
                     f"{volumes.shape}")


def apply(policy: Policy3D | augment.Policy, rng: Array, volumes: Array, *,
          out_size: int | None = None) -> Array:
  """uint8 [B, D, H, W, C] -> float32 views [B, o, o, o, C] in [0, 1].

  A 2D `augment.Policy` is lifted with `from_2d`. out_size defaults to the
  input side; non-cubic inputs need an explicit out_size.
  """
  _check(volumes)
  policy = as_policy3d(policy)
  b, d, h, w, _ = volumes.shape  # views are cubic: rot90_hw always fits
  if out_size is None:
    if not d == h == w:
      raise ValueError(f"volumes of {d}x{h}x{w} voxels are not cubic: pass "
                       "out_size")
    out_size = d
  one = functools.partial(_augment_one, policy=policy, out_size=out_size)
  return jax.vmap(one)(augment.to_float(volumes), jax.random.split(rng, b))


def eval_view(volumes: Array, *, out_size: int | None = None) -> Array:
  """The deterministic model input for evaluation: standardized full volume."""
  _check(volumes)
  x = augment.to_float(volumes)
  if out_size is not None and x.shape[1:4] != (out_size,) * 3:
    x = resize(x, out_size)
  return augment.standardize(x)
