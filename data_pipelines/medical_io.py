"""Read one image file (PNG/JPEG/TIFF, DICOM, NIfTI) into square uint8 slices.

Every reader returns a list of `Slice`s: one for a 2D image, one per frame of
a multi-frame DICOM, one per axial slice of a NIfTI volume. The CSV source
(`folder.py`) turns each slice into one row of the dataset.

Intensities, and why:
- 8-bit images are used as they are (no window): they were already windowed
  by whoever exported them.
- 16-bit PNG/TIFF, DICOM and NIfTI hold raw intensities (CT Hounsfield units,
  12-bit X-ray). They are mapped linearly to uint8 by a window
  [centre - width/2, centre + width/2] -> [0, 255], clipped outside. The
  window is `window=(centre, width)` if given; for DICOM else the header's
  WindowCenter/WindowWidth (first value if multi-valued); else the min-max of
  the image (of the whole volume for NIfTI and multi-frame DICOM, so slices
  of one scan stay comparable). DICOM applies RescaleSlope/Intercept first;
  MONOCHROME1 (bright = low values) is inverted after windowing.
- 32-bit int/float PNG/TIFF are refused (`bad_bit_depth`): their range is
  unknown, so any mapping would be a guess; convert them to 16-bit. 1-bit
  images are refused unless `allow_binary` (then 0/1 -> 0/255).

Geometry: every slice is resized to `size` x `size` without cropping (a
non-square image is squashed), with PIL's BILINEAR filter, which
antialiases when downscaling (Pillow widens the filter support by the
scale factor). Raw intensities are resized as float before windowing.

Pillow, pydicom and nibabel are imported on first use: MedMNIST's .npz
files need none of them, PNG-only datasets only Pillow.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from ssl_jax.registry import Registry


def _image_module():
  """PIL.Image, imported on first use (accelerator images may lack Pillow)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image


def _resize(img, size: int):
  """Pillow's BILINEAR resize to size x size (antialiased when downscaling)."""
  return img.resize((size, size), _image_module().Resampling.BILINEAR)

# Metadata columns a DICOM header can fill, and the tags they come from.
DICOM_FIELDS = {
    "patient_id": ("PatientID",),
    "study_id": ("StudyInstanceUID",),
    "series_id": ("SeriesInstanceUID",),
    "view": ("ViewPosition",),
    "laterality": ("Laterality", "ImageLaterality"),
    "age": ("PatientAge",),
    "sex": ("PatientSex",),
}

# PIL modes converted to 8-bit L/RGB as they are; 16-bit modes are windowed.
_PIL_8BIT = ("L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ReadError(ValueError):
  """A file that cannot become an image; `reason` is a short report key."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Slice:
  image: np.ndarray  # uint8 [size, size, channels]
  # Metadata read from the file (DICOM header, slice index); may be empty.
  meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  size: int
  channels: int  # 1 (grayscale) or 3 (RGB)
  window: tuple[float, float] | None = None
  allow_binary: bool = False


Reader = Callable[[pathlib.Path, ReadOptions], list[Slice]]


def window_bounds(x: np.ndarray, window: Sequence[float] | None
                  ) -> tuple[float, float]:
  """(low, high) intensities mapped to 0 and 255."""
  if window is not None:
    centre, width = (float(v) for v in window)
    if width <= 0:
      raise ValueError(f"window width must be > 0, got {width}")
    return centre - width / 2, centre + width / 2
  return float(np.min(x)), float(np.max(x))


def to_uint8(x: np.ndarray, low: float, high: float) -> np.ndarray:
  """Linear map [low, high] -> [0, 255], rounded half up, clipped; a
  constant image -> 0."""
  if high <= low:
    return np.zeros(x.shape, np.uint8)
  scaled = (x.astype(np.float64) - low) / (high - low) * 255.0
  return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def _resize_float(x: np.ndarray, size: int) -> np.ndarray:
  if x.shape == (size, size):
    return x.astype(np.float32)
  img = _image_module().fromarray(np.ascontiguousarray(x, np.float32), mode="F")
  return np.asarray(_resize(img, size), np.float32)


def _set_channels(gray_or_rgb: np.ndarray, channels: int) -> np.ndarray:
  """[H, W] or [H, W, 3] uint8 -> [H, W, channels]."""
  x = gray_or_rgb
  if x.ndim == 2:
    x = x[..., None]
  if x.shape[-1] == channels:
    return x
  if channels == 3:  # grayscale shown as RGB: replicate.
    return np.repeat(x, 3, axis=-1)
  # RGB -> luminance, as PIL's convert('L') (ITU-R 601-2).
  return np.asarray(_image_module().fromarray(x).convert("L"))[..., None]


def raw_slices(raw: np.ndarray, opts: ReadOptions, *, invert: bool = False,
               window: Sequence[float] | None = None) -> list[np.ndarray]:
  """Raw intensities [K, H, W] -> K uint8 [size, size, channels], one window
  for all K (see module doc)."""
  low, high = window_bounds(raw, window if window is not None else opts.window)
  out = []
  for plane in raw:
    u8 = to_uint8(_resize_float(plane, opts.size), low, high)
    if invert:
      u8 = 255 - u8
    out.append(_set_channels(u8, opts.channels))
  return out


def uint8_image(x: np.ndarray, opts: ReadOptions) -> np.ndarray:
  """An 8-bit [H, W] or [H, W, 3] array -> uint8 [size, size, channels]."""
  img = _image_module().fromarray(np.ascontiguousarray(x, np.uint8))
  if img.mode not in ("L", "RGB"):  # RGBA, LA: drop alpha
    img = img.convert("RGB" if x.ndim == 3 and x.shape[-1] >= 3 else "L")
  if img.size != (opts.size, opts.size):
    img = _resize(img, opts.size)
  return _set_channels(np.asarray(img), opts.channels)


# --- PNG / JPEG / TIFF ------------------------------------------------------


def read_pil(path: pathlib.Path, opts: ReadOptions) -> list[Slice]:
  try:
    with _image_module().open(path) as img:
      img.load()
      mode = img.mode
      if mode == "1":
        if not opts.allow_binary:
          raise ReadError("bad_bit_depth", (
              f"{path.name} is a 1-bit image; binary masks are not images "
              "(set --config.data.options.allow_binary=True to read them as 0/255)"))
        img = img.convert("L")
        mode = "L"
      if mode in _PIL_16BIT:
        raw = np.asarray(img).astype(np.float32)
        return [Slice(s, {}) for s in raw_slices(raw[None], opts)]
      if mode not in _PIL_8BIT:
        raise ReadError("bad_bit_depth", (
            f"{path.name} has PIL mode {mode!r} (e.g. 32-bit int or float); "
            "only 8-bit and 16-bit grayscale or 8-bit RGB images are read: "
            "convert it to 16-bit"))
      rgb = mode not in ("L", "LA")
      x = np.asarray(img.convert("RGB" if rgb else "L"))
  except ReadError:
    raise
  except (OSError, ValueError, SyntaxError) as e:
    raise ReadError("unreadable_file", f"{path.name}: cannot read image "
                    f"({type(e).__name__}: {e})") from e
  return [Slice(uint8_image(x, opts), {})]


# --- DICOM -----------------------------------------------------------------


def _first(value: Any) -> Any:
  """DICOM multi-valued fields (MultiValue) -> their first value."""
  if value is None:
    return None
  if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
    return value[0] if len(value) else None
  return value


def parse_dicom_age(text: str) -> float:
  """DICOM AS '045Y' / '006M' / '003W' / '010D' -> years (NaN if empty)."""
  text = (text or "").strip()
  if not text:
    return float("nan")
  units = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
  unit = text[-1].upper()
  if unit in units:
    return float(text[:-1]) * units[unit]
  return float(text)


def dicom_meta(ds: Any) -> dict[str, Any]:
  """Metadata columns from a DICOM header; a missing tag -> '' (age NaN)."""
  meta: dict[str, Any] = {}
  for column, tags in DICOM_FIELDS.items():
    value = next((ds.get(t) for t in tags if ds.get(t) not in (None, "")), "")
    value = _first(value)
    meta[column] = ("" if value is None else str(value)).strip()
  try:
    meta["age"] = parse_dicom_age(meta["age"])
  except ValueError:
    meta["age"] = float("nan")
  return meta


def read_dicom(path: pathlib.Path, opts: ReadOptions) -> list[Slice]:
  import pydicom  # pylint: disable=g-import-not-at-top

  try:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
  except Exception as e:  # pydicom raises many types for bad/compressed files
    raise ReadError("unreadable_file", f"{path.name}: cannot read DICOM "
                    f"pixels ({type(e).__name__}: {e})") from e
  bits = int(ds.get("BitsAllocated", 0))
  if bits == 1 and not opts.allow_binary:
    raise ReadError("bad_bit_depth", f"{path.name}: 1-bit DICOM (set "
                    "--config.data.options.allow_binary=True to read it as 0/255)")
  if bits not in (1, 8, 16):
    raise ReadError("bad_bit_depth", f"{path.name}: BitsAllocated={bits}; "
                    "only 8- and 16-bit DICOM are read")
  meta = dicom_meta(ds)
  samples = int(ds.get("SamplesPerPixel", 1))
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if samples == 3:  # colour (pydicom already converted YBR to RGB)
    stack = pixels if frames > 1 else pixels[None]
    images = [uint8_image(f, opts) for f in stack]
  else:
    raw = pixels.astype(np.float64)
    raw = raw * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0)
    raw = raw if frames > 1 else raw[None]
    if bits == 1:
      window = (0.5, 1.0)
    elif opts.window is not None:
      window = opts.window
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth"):
      window = (float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth)))
    else:
      window = None
    invert = ds.get("PhotometricInterpretation", "") == "MONOCHROME1"
    images = raw_slices(raw, opts, invert=invert, window=window)
  if len(images) == 1:
    return [Slice(images[0], meta)]
  return [Slice(im, {**meta, "slice_index": k}) for k, im in enumerate(images)]


# --- NIfTI -----------------------------------------------------------------


def read_nifti(path: pathlib.Path, opts: ReadOptions) -> list[Slice]:
  """Axial slices of a volume in closest-canonical (RAS+) orientation; each
  slice is shown with anterior at the top (array transposed, flipped)."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top

  try:
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.get_fdata(dtype=np.float32))
  except Exception as e:  # nibabel raises many types for bad files
    raise ReadError("unreadable_file", f"{path.name}: cannot read NIfTI "
                    f"({type(e).__name__}: {e})") from e
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim == 2:
    data = data[..., None]
  if data.ndim != 3:
    raise ReadError("bad_shape", f"{path.name}: NIfTI of shape "
                    f"{list(data.shape)}; only 2D and 3D volumes are read")
  if not np.all(np.isfinite(data)):
    raise ReadError("unreadable_file", f"{path.name}: NIfTI has NaN/inf "
                    "voxels")
  planes = np.flip(np.transpose(data, (2, 1, 0)), axis=1)  # [Z, Y(A->P), X]
  return [Slice(im, {"slice_index": k})
          for k, im in enumerate(raw_slices(planes, opts))]


READERS: Registry[Reader] = Registry("image file type")
for _ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
  READERS.add(_ext, read_pil)
READERS.add(".dcm", read_dicom)
READERS.add(".nii", read_nifti)
READERS.add(".nii.gz", read_nifti)


def extension(path: str | os.PathLike) -> str:
  name = os.fspath(path).lower()
  return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def read(path: str | os.PathLike, opts: ReadOptions) -> list[Slice]:
  """The file's slices; ReadError (with a report `reason`) when it fails."""
  path = pathlib.Path(path)
  ext = extension(path)
  if ext not in READERS:
    raise ReadError("unsupported_file_type", f"{path.name}: extension "
                    f"{ext or '(none)'!r}; allowed: {', '.join(READERS)}")
  if not path.is_file():
    raise ReadError("missing_file", f"file not found: {path}")
  return READERS.get(ext)(path, opts)


def peek_channels(path: str | os.PathLike) -> int:
  """3 if the file is colour, else 1, reading as little as possible."""
  path = pathlib.Path(path)
  ext = extension(path)
  try:
    if READERS.get(ext) is read_pil:
      with _image_module().open(path) as img:
        return 1 if img.mode in ("1", "L", "LA") + _PIL_16BIT + ("I", "F") \
            else 3
    if ext == ".dcm":
      import pydicom  # pylint: disable=g-import-not-at-top
      ds = pydicom.dcmread(path, stop_before_pixels=True)
      return 3 if int(ds.get("SamplesPerPixel", 1)) == 3 else 1
  except (OSError, ValueError, KeyError):
    return 1
  return 1
