"""Device-side view augmentations: pure JAX, vmapped over per-image keys.

A view policy is a frozen, hashable `Policy` holding every number; `apply`
turns a uint8 batch into float32 views in [0, 1]. Each image gets its own key
from `jax.random.split(rng, B)` and runs the same per-image chain (the BYOL
reference layout, Grill et al. 2020):

  crop -> flips / rot90 -> CT window -> HED stain jitter -> colour jitter
  -> grayscale -> blur -> solarize.

Resampling and blur are separable and banded: a few whole-row gathers or
static shifted slices per axis with per-image weights, so shapes are static,
nothing branches, and no dense [in, out] matmul wastes work. Operations a
policy switches off are skipped at trace time, so `none` costs a dtype cast
and is exact.

Presets carry medical names (`xray_safe`, `histology`, `fundus`, `ct_window`,
`dermatology`) and say in their `description` what they avoid and why;
`describe(name, overrides)` returns the resolved fields for results files.
`min_visible` is the floor every masking objective (MAE, SimMIM, restoration
in-/out-painting) must leave visible; see `Policy`.

Input scale for every model: `standardize(to_float(uint8))`, i.e.
(x / 255 - 0.5) / 0.5 in [-1, 1]. `apply` and `two_views` return [0, 1];
callers standardize (`eval_view` does both for evaluation).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.registry import Registry

Array = jax.Array

# ITU-R BT.601 luma, as tf.image.rgb_to_grayscale and PIL.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
# Hue rotation by angle a in RGB: _HUE_FIXED + cos(a) _HUE_COS + sin(a) _HUE_SIN
# (rotating the I, Q chroma plane of YIQ, keeping the luma Y).
_HUE_FIXED, _HUE_COS, _HUE_SIN = (
    (_YIQ_TO_RGB @ np.array(m, np.float64) @ _RGB_TO_YIQ).astype(np.float32)
    for m in ([[1, 0, 0], [0, 0, 0], [0, 0, 0]],
              [[0, 0, 0], [0, 1, 0], [0, 0, 1]],
              [[0, 0, 0], [0, 0, 1], [0, -1, 0]]))
# Colour deconvolution (Ruifrok & Johnston 2001): rows are the RGB optical
# density of haematoxylin, eosin and DAB; skimage.color's rgb_from_hed.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                          [0.07, 0.99, 0.11],
                          [0.27, 0.57, 0.78]], np.float64)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
# Intensities are floored at this before the log. Stains are in optical
# density, -ln(intensity) (Beer-Lambert); skimage >= 0.17's rgb2hed divides
# by -ln(1e-6) ~ 13.8, so its 0.05 is a shift of 0.69 here.
_OD_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Policy:
  """Every number of a view policy. Frozen and hashable: a static jit arg.

  Defaults are the identity, so `Policy(hflip_prob=0.5)` does only that.
  Strengths are fractions of the [0, 1] range; colour ops that need three
  channels (saturation, hue, grayscale, HED stain jitter) are skipped on
  1-channel images.
  `crop_aspect` is width/height relative to the image's own aspect (the
  pixel aspect for square images); `blur_sigma` is in output pixels.

  `min_visible` lives here, not in `objective`, because how much of an image
  may be hidden is a property of the domain (a small nodule or lesion must
  survive), as `crop_min_area` is; the preset sets both. It is the fraction
  of the *view* every mask must leave visible: MAE/SimMIM keep at least
  ceil(min_visible * N) patches, restoration caps in-painting boxes and
  grows the kept out-painting box (objectives/self_prediction.py); jobs
  reject configs whose mask cannot meet it. Crop and mask floors apply to
  their own stage (crop of the image, mask of the crop), not to the product.
  """
  crop_min_area: float = 1.0  # a random resized crop keeps >= this fraction
  crop_max_area: float = 1.0
  crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)  # log-uniform, relative
  hflip_prob: float = 0.0
  vflip_prob: float = 0.0
  rot90: bool = False  # uniform k * 90 degrees; needs a square output
  brightness: float = 0.0  # additive delta ~ U[-b, b]
  contrast: float = 0.0  # factor ~ U[1 - c, 1 + c] around the channel mean
  saturation: float = 0.0  # factor ~ U[1 - s, 1 + s] around the luma (RGB)
  hue: float = 0.0  # rotation ~ U[-h, h] turns of the YIQ chroma plane (RGB)
  jitter_prob: float = 1.0  # one coin for the whole jitter block
  grayscale_prob: float = 0.0  # RGB only
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels, U[lo, hi]
  solarize_prob: float = 0.0
  # Stain jitter in HED optical-density space (Tellez et al. 2018, 2019),
  # RGB only: per stain, scale ~ U[1 - s, 1 + s] and shift ~ U[-b, b] OD.
  hed_sigma: float = 0.0
  hed_bias: float = 0.0
  # Random CT window on [0, 1] intensities: centre ~ U[0.5 - a, 0.5 + a],
  # width ~ U[1 - b, 1 + b], out = clip((x - centre) / width + 0.5, 0, 1).
  window_center_jitter: float = 0.0  # a
  window_width_jitter: float = 0.0  # b
  min_visible: float = 0.0  # masks leave >= this fraction of the view visible
  description: str = ""

  def __post_init__(self):
    check_ranges(
        self, crop=("crop_min_area", "crop_max_area"),
        probs={n: getattr(self, n) for n in (
            "hflip_prob", "vflip_prob", "jitter_prob", "grayscale_prob",
            "blur_prob", "solarize_prob")},
        bounded=(("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0),
                 ("hue", 0.5), ("hed_sigma", 1.0), ("hed_bias", 1.0),
                 ("window_center_jitter", 0.5), ("min_visible", 1.0)))
    if self.crop_min_area < self.min_visible:
      raise ValueError(
          f"crop_min_area={self.crop_min_area} is below min_visible="
          f"{self.min_visible}: a crop would show less of the image than any "
          "mask may; raise crop_min_area or lower min_visible")


def check_ranges(policy, *, crop: tuple[str, str], probs: dict[str, float],
                 bounded: tuple[tuple[str, float], ...]) -> None:
  """The checks every view policy (2D `Policy`, 3D `augment3d.Policy3D`)
  shares: range tuples stored as floats (configs hand over lists), crop
  fractions ordered in (0, 1], aspect bracketing 1, blur sigmas ordered,
  probabilities in [0, 1], strengths in [0, top], window width below 1."""
  for name in ("crop_aspect", "blur_sigma"):
    lo, hi = (float(v) for v in getattr(policy, name))
    object.__setattr__(policy, name, (lo, hi))
  lo_name, hi_name = crop
  lo, hi = getattr(policy, lo_name), getattr(policy, hi_name)
  if not 0.0 < lo <= hi <= 1.0:
    raise ValueError(f"need 0 < {lo_name} <= {hi_name} <= 1, got {lo}, {hi}")
  lo, hi = policy.crop_aspect
  if not 0.0 < lo <= 1.0 <= hi:
    raise ValueError(f"crop_aspect must bracket 1, got {policy.crop_aspect}")
  lo, hi = policy.blur_sigma
  if not 0.0 < lo <= hi:
    raise ValueError(f"need 0 < blur_sigma[0] <= [1], got {policy.blur_sigma}")
  for name, p in probs.items():
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {p}")
  for name, top in bounded:
    if not 0.0 <= getattr(policy, name) <= top:
      raise ValueError(f"{name} must be in [0, {top}], "
                       f"got {getattr(policy, name)}")
  if not 0.0 <= policy.window_width_jitter < 1.0:
    raise ValueError("window_width_jitter must be in [0, 1) (the width "
                     f"stays positive), got {policy.window_width_jitter}")


POLICIES: Registry[Policy] = Registry("augmentation policy")
DEFAULT = "medical_safe"

POLICIES.add("medical_safe", Policy(
    crop_min_area=0.5, hflip_prob=0.5,
    brightness=0.1, contrast=0.1, jitter_prob=0.8,
    blur_prob=0.2, blur_sigma=(0.1, 1.0),
    description=(
        "Default for medical images. Crops keep >= 50% of the area so a small "
        "lesion is rarely cut away (SimCLR's 8% crops can remove the label's "
        "evidence); horizontal flip only (vertical flips and rotations break "
        "anatomical orientation in X-ray/CT); mild brightness/contrast; no "
        "hue, saturation, grayscale or solarize (colour is diagnostic in "
        "dermoscopy, fundus and stained histology); mild blur that keeps "
        "fine texture. Cf. Azizi et al. 2021, medical SimCLR.")))

POLICIES.add("simclr", Policy(
    crop_min_area=0.08, hflip_prob=0.5,
    brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_prob=0.8,
    grayscale_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 2.0),
    description=(
        "Natural-image SimCLR recipe (Chen et al. 2020), colour strength 0.5: "
        "crops of 8-100% area, hflip, jitter p=0.8, grayscale p=0.2, blur "
        "p=0.5. Avoids nothing: a baseline, not medical-safe.")))

POLICIES.add("medical_strong", Policy(
    crop_min_area=0.5, hflip_prob=0.5,
    brightness=0.4, contrast=0.4, jitter_prob=0.8,
    blur_prob=0.5, blur_sigma=(0.1, 1.5),
    description=(
        "A strong view that keeps `medical_safe`'s geometry: crops keep >= "
        "50% of the area and only horizontal flips, with SimCLR-strength "
        "brightness/contrast 0.4 and blur p=0.5. For recipes that want a "
        "hard view, such as FixMatch's strong view "
        "(finetune.fixmatch_strong_policy), where the label a pseudo-label "
        "gives the view must still be visible in it. Avoids SimCLR's 8% "
        "crops (they can cut the lesion out), vertical flips and rotations "
        "(anatomical orientation), and hue, saturation, grayscale and "
        "solarize (colour is diagnostic).")))

POLICIES.add("none", Policy(
    jitter_prob=0.0,
    description="Identity (no crop, flip or jitter); for evaluation views."))

# Modality presets. Each crop floor is >= its min_visible (Policy checks it),
# and min_visible = 0.25 admits MAE's 75% masking where the domain allows it.

POLICIES.add("xray_safe", Policy(
    crop_min_area=0.7, crop_aspect=(4 / 5, 5 / 4), hflip_prob=0.5,
    brightness=0.1, contrast=0.1, jitter_prob=0.8, min_visible=0.25,
    description=(
        "Radiographs (ChestMNIST, PneumoniaMNIST): grayscale semantics, "
        "intensity ops only. Crops keep >= 70% of the area at near-square "
        "aspect (findings such as nodules are small and off-centre; anatomy "
        "keeps its proportions); small brightness/contrast (exposure varies "
        "between machines). Avoids vertical flips and rot90 (a radiograph "
        "has a canonical up: apices above, diaphragm below), hue, "
        "saturation, grayscale and solarize (no colour to jitter: on RGB "
        "copies of gray they would invent colour) and blur (fine "
        "interstitial texture is the signal). Horizontal flip p=0.5 as in "
        "MoCo-CXR (Sowrirajan et al., MIDL 2021), but laterality may matter: "
        "a flip moves the heart to the right and swaps left/right findings; "
        "set augment.overrides.hflip_prob=0 for lateral labels. "
        "min_visible=0.25 (MAE's 75% masking at most).")))

POLICIES.add("histology", Policy(
    crop_min_area=0.35, hflip_prob=0.5, vflip_prob=0.5, rot90=True,
    hed_sigma=0.05, hed_bias=0.05,
    brightness=0.1, contrast=0.1, jitter_prob=0.8,
    blur_prob=0.3, blur_sigma=(0.1, 1.0), min_visible=0.2,
    description=(
        "H&E tissue tiles (PathMNIST): a slide has no canonical orientation, "
        "so all 8 dihedral transforms (rot90 + both flips; Veeling et al., "
        "MICCAI 2018). Stain variation between labs is jittered where it "
        "arises: per-stain scale U[0.95, 1.05] and shift U[-0.05, 0.05] of "
        "the haematoxylin/eosin/DAB optical densities from Ruifrok & "
        "Johnston's (2001) colour deconvolution, 'HED-light' of Tellez et "
        "al. (IEEE TMI 2018; MedIA 2019), instead of hue/saturation jitter, "
        "which leaves the stain manifold. Mild brightness/contrast and blur "
        "(scanner focus varies over a slide); moderate crops >= 35% (tissue "
        "texture repeats across a tile). Avoids grayscale and hue (stain "
        "colour separates nuclei from stroma). min_visible=0.2: texture "
        "tolerates heavier masking than a single lesion.")))

POLICIES.add("fundus", Policy(
    crop_min_area=0.6, crop_aspect=(9 / 10, 10 / 9), hflip_prob=0.5,
    vflip_prob=0.5, brightness=0.2, contrast=0.2, saturation=0.1,
    jitter_prob=0.8, min_visible=0.25,
    description=(
        "Colour fundus photographs (RetinaMNIST): flips both ways (a "
        "left-right flip maps a right eye to a plausible left eye; the "
        "vascular arcades are near-symmetric about the horizontal meridian) "
        "and mild near-square crops >= 60% that keep the circular field of "
        "view round and the optic disc and macula in view; brightness/"
        "contrast 0.2 (illumination varies between cameras and pupils) and "
        "mild saturation 0.1. Avoids hue and grayscale (colour is "
        "diagnostic: red lesions, yellow exudates, pale disc), arbitrary-"
        "angle rotation (optional in the literature; kept out for exact, "
        "interpolation-free views) and blur (microaneurysms are a few "
        "pixels). min_visible=0.25.")))

POLICIES.add("ct_window", Policy(
    crop_min_area=0.6, crop_aspect=(4 / 5, 5 / 4),
    window_center_jitter=0.1, window_width_jitter=0.25, min_visible=0.25,
    description=(
        "CT slices (OrganAMNIST/C/S): a random display window, centre ~ "
        "U[0.5 +- 0.1] and width ~ U[1 +- 0.25] of the stored range, mapped "
        "as clip((x - centre) / width + 0.5, 0, 1): radiologists re-window "
        "the same Hounsfield data, so the label must survive it (on 8-bit "
        "data a narrower window saturates, a wider one lowers contrast; no "
        "HU outside the stored window can be recovered). Mild crops >= 60%. "
        "Avoids colour ops (CT is gray), vertical flips and rot90 (axial "
        "slices have a canonical anterior-up), and by default horizontal "
        "flips too: the OrganMNIST labels are lateral (kidney-, lung-, "
        "femur-left/right), so flip invariance would erase them; set "
        "augment.overrides.hflip_prob=0.5 for non-lateral tasks. "
        "min_visible=0.25.")))

POLICIES.add("dermatology", Policy(
    crop_min_area=0.5, hflip_prob=0.5, vflip_prob=0.5, rot90=True,
    brightness=0.1, contrast=0.1, saturation=0.1, jitter_prob=0.8,
    min_visible=0.25,
    description=(
        "Dermoscopy (DermaMNIST): a skin lesion has no canonical "
        "orientation, so rot90 and both flips; crops keep >= 50% so the "
        "lesion and its border stay in view (Perez et al., ISIC workshop "
        "2018, found geometric + mild colour augmentation best); small "
        "brightness/contrast/saturation (lighting and camera vary). Avoids "
        "hue and grayscale (colour is diagnostic: blue-white veil, "
        "regression, vascular red) and blur (pigment network and dots are "
        "fine structures). min_visible=0.25: hiding more can hide the "
        "whole lesion.")))


def get(name: str = DEFAULT, **overrides) -> Policy:
  """The named preset with fields replaced, e.g. `get('simclr', hue=0.)`."""
  policy = POLICIES.get(name)
  allowed = [f.name for f in dataclasses.fields(Policy)]
  unknown = sorted(set(overrides) - set(allowed))
  if unknown:
    raise ValueError(f"unknown Policy field(s) {', '.join(unknown)} for "
                     f"{name!r}; allowed: {', '.join(allowed)}")
  return dataclasses.replace(policy, **overrides)


def names() -> list[str]:
  return POLICIES.names()


def _set_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
  """A config's overrides block without its unset (None) placeholders."""
  return {k: v for k, v in (overrides or {}).items() if v is not None}


def resolve(name: str = DEFAULT,
            overrides: Mapping[str, Any] | None = None) -> Policy:
  """`get` for a config block: `resolve(c.augment.policy, c.augment.overrides)`."""
  return get(name, **_set_overrides(overrides))


def describe(name: str = DEFAULT,
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The resolved policy as JSON-ready data, so results can record it.

  {'policy': 'xray_safe', 'label': 'xray_safe[hflip_prob=0.0]',
   'overrides': {set overrides}, 'fields': {every Policy field}}; `label`
  is the bare name when nothing is overridden.
  """
  set_overrides = _set_overrides(overrides)
  policy = get(name, **set_overrides)
  fields = {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}
  fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
  label = name
  if set_overrides:
    label += "[" + ",".join(f"{k}={fields[k]}" for k in sorted(set_overrides)) + "]"
  return {"policy": name, "label": label, "overrides": {
      k: fields[k] for k in sorted(set_overrides)}, "fields": fields}


# ---------------------------------------------------------------- scaling --

def to_float(images: Array) -> Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input is taken as already [0, 1]."""
  images = jnp.asarray(images)
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def standardize(x01: Array) -> Array:
  """[0, 1] -> [-1, 1]: the one input scale every model is trained on."""
  return (x01 - 0.5) / 0.5


def resize(x01: Array, size: int) -> Array:
  """Resizes a float [B, H, W, C] batch to [B, size, size, C] (antialiased)."""
  _, h, w, _ = x01.shape
  rows = _linear_taps(0.0, float(h), h, size)
  cols = _linear_taps(0.0, float(w), w, size)
  return jax.vmap(lambda x: _resample(x, rows, cols))(x01)


def eval_view(images: Array, *, out_size: int | None = None) -> Array:
  """The deterministic model input for evaluation: standardized full image."""
  x = to_float(images)
  if out_size is not None and x.shape[1:3] != (out_size, out_size):
    x = resize(x, out_size)
  return standardize(x)


# ------------------------------------------------------------- resampling --

def _linear_taps(start: Array | float, length: Array | float, in_size: int,
                 out_size: int) -> tuple[Array, Array]:
  """Indices and weights [out, n] sampling pixels [start, start + length).

  Bilinear; the triangle kernel widens to the scale when shrinking
  (antialiasing, as `jax.image.scale_and_translate`, which this matches to
  1e-6); out-of-image taps get zero weight and rows are renormalized, which
  clamps the edges. n is static: enough taps for the full-image scale.
  """
  n = math.ceil(2 * max(in_size / out_size, 1.0))
  scale = length / out_size
  width = jnp.maximum(scale, 1.0)
  centers = start + (jnp.arange(out_size) + 0.5) * scale - 0.5
  idx = jnp.floor(centers - width)[:, None] + 1 + jnp.arange(n)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(centers[:, None] - idx) / width)
  weights = jnp.where((idx >= 0) & (idx < in_size), weights, 0.0)
  weights = weights / jnp.sum(weights, axis=1, keepdims=True)
  return jnp.clip(idx, 0, in_size - 1).astype(jnp.int32), weights


def _resample_rows(x: Array, taps: tuple[Array, Array]) -> Array:
  """out[o] = sum_t w[o, t] * x[idx[o, t]] along axis 0: n row gathers.

  Whole-row gathers plus a fused weighted sum; on CPU ~9x faster than the
  equivalent dense [out, in] matmul (most of whose weights are zero).
  """
  idx, w = taps
  out = w[:, 0, None, None] * x[idx[:, 0]]
  for t in range(1, idx.shape[1]):
    out = out + w[:, t, None, None] * x[idx[:, t]]
  return out


def _resample(x: Array, rows: tuple[Array, Array],
              cols: tuple[Array, Array]) -> Array:
  """Separable resampling of one [H, W, C] image; both passes gather rows."""
  x = _resample_rows(x, rows)
  x = _resample_rows(jnp.swapaxes(x, 0, 1), cols)
  return jnp.swapaxes(x, 0, 1)


def crop_box(rng: Array, *, min_area: float, max_area: float,
             aspect: tuple[float, float]) -> tuple[Array, Array, Array, Array]:
  """Samples (top, left, height, width) as fractions of the image.

  Area ~ U[min, max] and log-aspect uniform within `aspect`, narrowed to the
  ratios whose box fits the image, so the area is kept exactly (no clipping,
  no rejection loop). Inception-style crop as in SimCLR (Chen et al. 2020).
  """
  u = jax.random.uniform(rng, (4,))
  area = min_area + u[0] * (max_area - min_area)
  log_area = jnp.log(area)
  lo = jnp.maximum(math.log(aspect[0]), log_area)
  hi = jnp.minimum(math.log(aspect[1]), -log_area)
  ratio = jnp.exp(lo + u[1] * (hi - lo))
  height = jnp.minimum(jnp.sqrt(area / ratio), 1.0)
  width = jnp.minimum(jnp.sqrt(area * ratio), 1.0)
  top = u[2] * (1.0 - height)
  left = u[3] * (1.0 - width)
  return top, left, height, width


def random_resized_crop(image: Array, rng: Array, *, min_area: float,
                        max_area: float, aspect: tuple[float, float],
                        out_hw: tuple[int, int]) -> Array:
  """Crops a random box of one [H, W, C] image and resamples it to out_hw."""
  h, w, _ = image.shape
  top, left, height, width = crop_box(
      rng, min_area=min_area, max_area=max_area, aspect=aspect)
  rows = _linear_taps(top * h, height * h, h, out_hw[0])
  cols = _linear_taps(left * w, width * w, w, out_hw[1])
  return _resample(image, rows, cols)


# ------------------------------------------------------------ geometric --

def random_flip(image: Array, rng: Array, *, hflip_prob: float,
                vflip_prob: float) -> Array:
  """Mirrors one [H, W, C] image left-right / up-down with the given probs."""
  u = jax.random.uniform(rng, (2,))
  if hflip_prob > 0:
    image = jnp.where(u[0] < hflip_prob, image[:, ::-1], image)
  if vflip_prob > 0:
    image = jnp.where(u[1] < vflip_prob, image[::-1], image)
  return image


def flip_axes(policy: Policy) -> tuple[int, ...]:
  """The axes of an [H, W, C] image the policy may mirror: 0 (up-down)
  when vflip_prob > 0, 1 (left-right) when hflip_prob > 0."""
  return tuple(axis for axis, prob in ((0, policy.vflip_prob),
                                       (1, policy.hflip_prob)) if prob > 0)


def random_rot90(image: Array, rng: Array) -> Array:
  """Rotates one square image by a uniform multiple of 90 degrees."""
  k = jax.random.randint(rng, (), 0, 4)
  return jax.lax.switch(
      k, [functools.partial(jnp.rot90, k=i) for i in range(4)], image)


# ---------------------------------------------------------------- colour --

def _mix_channels(image: Array, m: Array) -> Array:
  """image @ m.T over the channel axis, as a fused elementwise sum.

  Written out because XLA's reduce or dot over a minor axis of size 3 is
  ~10x slower on CPU.
  """
  chans = [image[..., c:c + 1] for c in range(image.shape[-1])]
  rows = [sum(m[d, c] * chans[c] for c in range(len(chans)))
          for d in range(m.shape[0])]
  return jnp.concatenate(rows, axis=-1)


def _luma(image: Array) -> Array:
  return _mix_channels(image, _LUMA[None])


def _hue_matrix(turns: Array) -> Array:
  """RGB -> RGB rotation of the YIQ chroma plane by `turns` of a circle."""
  angle = 2 * jnp.pi * turns
  return _HUE_FIXED + jnp.cos(angle) * _HUE_COS + jnp.sin(angle) * _HUE_SIN


def color_jitter(image: Array, rng: Array, *, prob: float, brightness: float,
                 contrast: float, saturation: float, hue: float) -> Array:
  """SimCLR colour distortion (Chen et al. 2020) applied with `prob`.

  Brightness is additive and contrast scales around the per-channel mean (as
  tf.image); saturation blends with the luma and hue rotates the YIQ chroma
  plane (a cheap stand-in for an HSV hue shift: same direction, similar
  size, luma kept) and both run only on RGB, so grayscale stays grayscale.
  Clipped to [0, 1] after each op.
  """
  # One draw per image: [on, brightness, contrast, saturation, hue].
  u = jax.random.uniform(rng, (5,))
  sym = 2 * u - 1  # U[-1, 1]
  rgb = image.shape[-1] == 3
  x = image
  if brightness > 0:
    x = jnp.clip(x + brightness * sym[1], 0.0, 1.0)
  if contrast > 0:
    f = 1 + contrast * sym[2]
    mean = jnp.mean(x, axis=(0, 1), keepdims=True)
    x = jnp.clip((x - mean) * f + mean, 0.0, 1.0)
  if rgb and saturation > 0:
    f = 1 + saturation * sym[3]
    gray = _luma(x)
    x = jnp.clip(gray + (x - gray) * f, 0.0, 1.0)
  if rgb and hue > 0:
    x = _mix_channels(x, _hue_matrix(hue * sym[4]))
    x = jnp.clip(x, 0.0, 1.0)
  return jnp.where(u[0] < prob, x, image)


def random_grayscale(image: Array, rng: Array, *, prob: float) -> Array:
  """Replaces an RGB image by its luma in all three channels with `prob`."""
  gray = jnp.broadcast_to(_luma(image), image.shape)
  return jnp.where(jax.random.bernoulli(rng, prob), gray, image)


def hed_jitter(image: Array, scale: Array, shift: Array) -> Array:
  """Scales and shifts the stain concentrations of one RGB image.

  Colour deconvolution (Ruifrok & Johnston 2001): the optical density
  -ln(max(x, eps)) times inv(rgb_from_hed) gives per-pixel haematoxylin,
  eosin and DAB; each becomes `stain * scale + shift` ([3] each) and goes
  back through rgb_from_hed and exp(-od) (Tellez et al. 2018, 2019). Like
  skimage's rgb2hed/hed2rgb in OD units, without their clip of negative
  stains, so scale 1 and shift 0 is the identity (black comes back as eps).
  """
  od = -jnp.log(jnp.maximum(image, _OD_EPS))
  stains = _mix_channels(od, _HED_FROM_RGB.T.astype(np.float32))
  od = _mix_channels(stains * scale + shift, _RGB_FROM_HED.T.astype(np.float32))
  return jnp.clip(jnp.exp(-od), 0.0, 1.0)


def random_hed_jitter(image: Array, rng: Array, *, sigma: float,
                      bias: float) -> Array:
  """Per-stain scale ~ U[1 - sigma, 1 + sigma], shift ~ U[-bias, bias]."""
  sym = 2 * jax.random.uniform(rng, (2, 3)) - 1
  return hed_jitter(image, 1 + sigma * sym[0], bias * sym[1])


def window(image: Array, center: Array | float, width: Array | float) -> Array:
  """A display window on [0, 1] intensities: clip((x - c) / w + 0.5, 0, 1).

  (c, w) = (0.5, 1) is the identity; w < 1 narrows the window (more contrast,
  saturating the tails), c shifts the level, as re-windowing CT in HU.
  """
  return jnp.clip((image - center) / width + 0.5, 0.0, 1.0)


def random_window(image: Array, rng: Array, *, center_jitter: float,
                  width_jitter: float) -> Array:
  """Window centre ~ U[0.5 - a, 0.5 + a], width ~ U[1 - b, 1 + b]."""
  sym = 2 * jax.random.uniform(rng, (2,)) - 1
  return window(image, 0.5 + center_jitter * sym[0],
                1.0 + width_jitter * sym[1])


def _blur_rows(x: Array, taps: Array) -> Array:
  """Normalized 1-D convolution along axis 0 (zero-padded, edge-rescaled)."""
  r = (taps.shape[0] - 1) // 2
  size = x.shape[0]
  xp = jnp.pad(x, ((r, r),) + ((0, 0),) * (x.ndim - 1))
  ones = jnp.pad(jnp.ones((size,), x.dtype), (r, r))
  out = sum(taps[t] * xp[t:t + size] for t in range(2 * r + 1))
  norm = sum(taps[t] * ones[t:t + size] for t in range(2 * r + 1))
  return out / norm.reshape((size,) + (1,) * (x.ndim - 1))


def random_blur(image: Array, rng: Array, *, prob: float,
                sigma: tuple[float, float]) -> Array:
  """Separable Gaussian blur with sigma ~ U[sigma] pixels, applied with prob.

  Kernel ~10% of the side (radius = side // 20, at least 1) as in SimCLR,
  capped at 3 * sigma_max, past which taps hold < 0.3% of the weight. Edge
  taps are renormalized instead of zero-padded, so a constant image stays
  constant (zero padding would darken the border). 2r + 1 shifted
  multiply-adds per axis: static slices that fuse; no conv, no dense matmul.
  """
  u = jax.random.uniform(rng, (2,))
  h, w, _ = image.shape
  radius = max(1, min(min(h, w) // 20, math.ceil(3 * sigma[1])))
  s = sigma[0] + u[1] * (sigma[1] - sigma[0])
  d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  taps = jnp.exp(-0.5 * (d / s) ** 2)
  blurred = _blur_rows(image, taps)
  blurred = jnp.swapaxes(_blur_rows(jnp.swapaxes(blurred, 0, 1), taps), 0, 1)
  return jnp.where(u[0] < prob, blurred, image)


def random_solarize(image: Array, rng: Array, *, prob: float,
                    threshold: float = 0.5) -> Array:
  """Inverts pixels above the threshold with `prob` (BYOL, Grill et al. 2020)."""
  solarized = jnp.where(image < threshold, image, 1.0 - image)
  return jnp.where(jax.random.bernoulli(rng, prob), solarized, image)


# ------------------------------------------------------------------ views --

def _augment_one(image: Array, rng: Array, *, policy: Policy,
                 out_hw: tuple[int, int]) -> Array:
  """One float [H, W, C] image -> one view; skips ops the policy turns off."""
  k_crop, k_flip, k_rot, k_jit, k_gray, k_blur, k_sol = jax.random.split(
      rng, 7)
  p = policy
  rgb = image.shape[-1] == 3
  if p.crop_min_area < 1.0 or image.shape[:2] != out_hw:
    image = random_resized_crop(
        image, k_crop, min_area=p.crop_min_area, max_area=p.crop_max_area,
        aspect=p.crop_aspect, out_hw=out_hw)
  if p.hflip_prob > 0 or p.vflip_prob > 0:
    image = random_flip(image, k_flip, hflip_prob=p.hflip_prob,
                        vflip_prob=p.vflip_prob)
  if p.rot90:
    image = random_rot90(image, k_rot)
  # Ops added later take fold-in keys, so the keys above (and the views of
  # every policy without these ops) stay what they were.
  if p.window_center_jitter > 0 or p.window_width_jitter > 0:
    image = random_window(image, jax.random.fold_in(rng, 7),
                          center_jitter=p.window_center_jitter,
                          width_jitter=p.window_width_jitter)
  if rgb and (p.hed_sigma > 0 or p.hed_bias > 0):
    image = random_hed_jitter(image, jax.random.fold_in(rng, 8),
                              sigma=p.hed_sigma, bias=p.hed_bias)
  colour = rgb and (p.saturation > 0 or p.hue > 0)
  if p.jitter_prob > 0 and (p.brightness > 0 or p.contrast > 0 or colour):
    image = color_jitter(image, k_jit, prob=p.jitter_prob,
                         brightness=p.brightness, contrast=p.contrast,
                         saturation=p.saturation, hue=p.hue)
  if rgb and p.grayscale_prob > 0:
    image = random_grayscale(image, k_gray, prob=p.grayscale_prob)
  if p.blur_prob > 0:
    image = random_blur(image, k_blur, prob=p.blur_prob, sigma=p.blur_sigma)
  if p.solarize_prob > 0:
    image = random_solarize(image, k_sol, prob=p.solarize_prob)
  return jnp.clip(image, 0.0, 1.0)


def apply(policy: Policy, rng: Array, images: Array, *,
          out_size: int | None = None) -> Array:
  """uint8 [B, H, W, C] -> float32 views [B, out, out, C] in [0, 1].

  Pure and jit-able with `policy` static (it is hashable) or closed over.
  out_size defaults to the input size (H, W).
  """
  if images.ndim != 4:
    raise ValueError(f"expected [B, H, W, C] images, got shape {images.shape}")
  b, h, w, _ = images.shape
  out_hw = (h, w) if out_size is None else (out_size, out_size)
  if policy.rot90 and out_hw[0] != out_hw[1]:
    raise ValueError(f"rot90 needs a square output, got {out_hw}")
  one = functools.partial(_augment_one, policy=policy, out_hw=out_hw)
  return jax.vmap(one)(to_float(images), jax.random.split(rng, b))


def two_views(policy: Policy, rng: Array, images: Array,
              out_size: int | None = None) -> tuple[Array, Array]:
  """Two independent views of the same batch (the SimCLR/BYOL pair)."""
  k1, k2 = jax.random.split(rng)
  return (apply(policy, k1, images, out_size=out_size),
          apply(policy, k2, images, out_size=out_size))
