"""MedMNIST v3 (Yang et al., Scientific Data 2023) as npz files: fetch + load.

Files come from the official Zenodo record and are checked against the
official md5 table of medmnist 3.0.2, so a truncated download or a file from
an older MedMNIST version (organ*mnist changed in v3) fails loudly instead of
silently changing a benchmark.

Where files live (`resolve_data_dir`): the config's `data_dir` if set, else
the environment variable SSL_JAX_DATA_DIR, else the user cache dir
`<platformdirs.user_cache_dir('ssl_jax')>/medmnist`. The directory holds the
npz files directly, under their official names (`<name>.npz` for 28 px,
`<name>_<size>.npz` otherwise).

No TensorFlow here: this module only needs numpy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import logging
import os
import pathlib
import urllib.request
from typing import BinaryIO

import numpy as np
import platformdirs

from data_pipelines.source import SPLITS, DatasetInfo
from ssl_jax import files
from ssl_jax.registry import Registry

_log = logging.getLogger(__name__)

ENV_VAR = "SSL_JAX_DATA_DIR"
URL_PATTERN = "https://zenodo.org/records/10519652/files/{file}?download=1"
SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)

CITATION = (
    "Yang, J., Shi, R., Wei, D. et al. MedMNIST v2 - A large-scale lightweight"
    " benchmark for 2D and 3D biomedical image classification. Scientific Data"
    " 10, 41 (2023). doi:10.1038/s41597-022-01721-8; Yang, J., Shi, R., Ni, B."
    " MedMNIST Classification Decathlon. ISBI 2021. Also cite the source-data"
    " paper of each set (see medmnist.github.io)."
)

_CC_BY = "CC BY 4.0"
_CC_BY_NC = "CC BY-NC 4.0"

# Official md5 of every MedMNIST v3 file (medmnist 3.0.2 info.py, Zenodo
# record 10519652), copied from /work/shared/data/medmnist/MANIFEST.txt.
MD5 = {
    "pathmnist.npz": "a8b06965200029087d5bd730944a56c1",
    "pathmnist_64.npz": "55aa9c1e0525abe5a6b9d8343a507616",
    "pathmnist_128.npz": "ac42d08fb904d92c244187169d1fd1d9",
    "pathmnist_224.npz": "2c51a510bcdc9cf8ddb2af93af1eadec",
    "chestmnist.npz": "02c8a6516a18b556561a56cbdd36c4a8",
    "chestmnist_64.npz": "9de6cd0b934ebb5b7426cfba5efbae16",
    "chestmnist_128.npz": "db107e5590b27930b62dbaf558aebee3",
    "chestmnist_224.npz": "45bd33e6f06c3e8cdb481c74a89152aa",
    "dermamnist.npz": "0744692d530f8e62ec473284d019b0c7",
    "dermamnist_64.npz": "b70a2f5635c6199aeaa28c31d7202e1f",
    "dermamnist_128.npz": "2defd784463fa5243564e855ed717de1",
    "dermamnist_224.npz": "8974907d8e169bef5f5b96bc506ae45d",
    "octmnist.npz": "c68d92d5b585d8d81f7112f81e2d0842",
    "octmnist_64.npz": "e229e9440236b774d9f0dfef9d07bdaf",
    "octmnist_128.npz": "0a97e76651ace45c5d943ee3f65b63ae",
    "octmnist_224.npz": "abc493b6d529d5de7569faaef2773ba3",
    "pneumoniamnist.npz": "28209eda62fecd6e6a2d98b1501bb15f",
    "pneumoniamnist_64.npz": "8f4eceb4ccffa70c672198ea285246c6",
    "pneumoniamnist_128.npz": "05b46931834c231683c68f40c47b2971",
    "pneumoniamnist_224.npz": "d6a3c71de1b945ea11211b03746c1fe1",
    "retinamnist.npz": "bd4c0672f1bba3e3a89f0e4e876791e4",
    "retinamnist_64.npz": "afda852cc34dcda56f86ad2b2457dbcc",
    "retinamnist_128.npz": "e48e916a24454daf90583d4e6efb1a18",
    "retinamnist_224.npz": "eae7e3b6f3fcbda4ae613ebdcbe35348",
    "breastmnist.npz": "750601b1f35ba3300ea97c75c52ff8f6",
    "breastmnist_64.npz": "742edef2a1fd1524b2efff4bd7ba9364",
    "breastmnist_128.npz": "363e4b3f8d712e9b5de15470a2aaadf1",
    "breastmnist_224.npz": "b56378a6eefa9fed602bb16d192d4c8b",
    "bloodmnist.npz": "7053d0359d879ad8a5505303e11de1dc",
    "bloodmnist_64.npz": "2b94928a2ae4916078ca51e05b6b800b",
    "bloodmnist_128.npz": "adace1e0ed228fccda1f39692059dd4c",
    "bloodmnist_224.npz": "b718ff6835fcbdb22ba9eacccd7b2601",
    "tissuemnist.npz": "ebe78ee8b05294063de985d821c1c34b",
    "tissuemnist_64.npz": "123ece2eba09d0aa5d698fda57103344",
    "tissuemnist_128.npz": "61b955355d7425a89687b06cca3ce0c2",
    "tissuemnist_224.npz": "b077128c4a949f0a4eb01517f9037b9c",
    "organamnist.npz": "68e3f8846a6bd62f0c9bf841c0d9eacc",
    "organamnist_64.npz": "2dcccc29b88e6da5a01161ef20cda288",
    "organamnist_128.npz": "eeae80d0a227a8d099027e1b3cfd3b60",
    "organamnist_224.npz": "50747347e05c87dd3aaf92c49f9f3170",
    "organcmnist.npz": "b9ceb9546e10131b32923c5bbeaea2b1",
    "organcmnist_64.npz": "3ce34a8724ea6f548e6db4744d03b6a9",
    "organcmnist_128.npz": "773c1f009daa3fe5d9a2a201b2a7ed94",
    "organcmnist_224.npz": "050f5e875dc056f6768abf94ec9995d1",
    "organsmnist.npz": "9ab87b696fb54e2a387ebe992d6ed5f1",
    "organsmnist_64.npz": "53a6d115339d874c25e309a994ff46d3",
    "organsmnist_128.npz": "ded0c5fa01a95dc4978b956f613e9b8e",
    "organsmnist_224.npz": "b354719e553fbbb2513d5533f52a4cb1",
    "organmnist3d.npz": "a0c5a1ff56af4f155c46d46fbb45a2fe",
    "organmnist3d_64.npz": "58a2205adf14a9d0a189cb06dc78bf10",
    "nodulemnist3d.npz": "8755a7e9e05a4d9ce80a24c3e7a256f3",
    "nodulemnist3d_64.npz": "c47c5b7d457bf6332200d2ea6d64ecd8",
    "adrenalmnist3d.npz": "bbd3c5a5576322bc4cdfea780653b1ce",
    "adrenalmnist3d_64.npz": "17721accfe9fb005146a47d33bc54b2f",
    "fracturemnist3d.npz": "6aa7b0143a6b42da40027a9dda61302f",
    "fracturemnist3d_64.npz": "f01d7e6316aedf4210da0da5b7437b42",
    "vesselmnist3d.npz": "b41fd4f7e7e2feedddb201585ecafa1b",
    "vesselmnist3d_64.npz": "6bb274a8846e1097066dcd64e2c4520f",
    "synapsemnist3d.npz": "1235b78a3cd6280881dd7850a78eadb6",
    "synapsemnist3d_64.npz": "43bd14ebf3af9d3dd072446fedc14d5e",
}


class ChecksumError(ValueError):
  """A MedMNIST file's md5 is not the official one."""


class DownloadError(OSError):
  """A MedMNIST file is missing and could not be downloaded."""


class DataDirError(OSError):
  """The data directory cannot be created or written."""


@dataclasses.dataclass(frozen=True)
class _Spec:
  task: str
  num_classes: int
  num_channels: int
  license: str
  num_examples: dict[str, int]
  ndim: int = 2  # Spatial dimensions: 2 for images, 3 for volumes.


def _n(train: int, val: int, test: int) -> dict[str, int]:
  return {"train": train, "val": val, "test": test}


# Per-set facts from medmnist 3.0.2 info.py (also listed in MANIFEST.txt).
_SPECS = {
    "pathmnist": _Spec("multi-class", 9, 3, _CC_BY, _n(89996, 10004, 7180)),
    "chestmnist": _Spec(
        "multi-label, binary-class", 14, 1, _CC_BY, _n(78468, 11219, 22433)),
    "dermamnist": _Spec(
        "multi-class", 7, 3, _CC_BY_NC, _n(7007, 1003, 2005)),
    "octmnist": _Spec("multi-class", 4, 1, _CC_BY, _n(97477, 10832, 1000)),
    "pneumoniamnist": _Spec(
        "binary-class", 2, 1, _CC_BY, _n(4708, 524, 624)),
    "retinamnist": _Spec(
        "ordinal-regression", 5, 3, _CC_BY, _n(1080, 120, 400)),
    "breastmnist": _Spec("binary-class", 2, 1, _CC_BY, _n(546, 78, 156)),
    "bloodmnist": _Spec("multi-class", 8, 3, _CC_BY, _n(11959, 1712, 3421)),
    "tissuemnist": _Spec(
        "multi-class", 8, 1, _CC_BY, _n(165466, 23640, 47280)),
    "organamnist": _Spec(
        "multi-class", 11, 1, _CC_BY, _n(34561, 6491, 17778)),
    "organcmnist": _Spec(
        "multi-class", 11, 1, _CC_BY, _n(12975, 2392, 8216)),
    "organsmnist": _Spec(
        "multi-class", 11, 1, _CC_BY, _n(13932, 2452, 8827)),
    # 3D volumes (28^3 or 64^3 voxels, one channel); loaded as [N, D, H, W, 1].
    "organmnist3d": _Spec(
        "multi-class", 11, 1, _CC_BY, _n(971, 161, 610), ndim=3),
    "nodulemnist3d": _Spec(
        "binary-class", 2, 1, _CC_BY, _n(1158, 165, 310), ndim=3),
    "adrenalmnist3d": _Spec(
        "binary-class", 2, 1, _CC_BY, _n(1188, 98, 298), ndim=3),
    "fracturemnist3d": _Spec(
        "multi-class", 3, 1, _CC_BY, _n(1027, 103, 240), ndim=3),
    "vesselmnist3d": _Spec(
        "binary-class", 2, 1, _CC_BY, _n(1335, 191, 382), ndim=3),
    "synapsemnist3d": _Spec(
        "binary-class", 2, 1, _CC_BY, _n(1230, 177, 352), ndim=3),
}

ALL_SETS: Registry[_Spec] = Registry("MedMNIST dataset")
SETS_2D: Registry[_Spec] = Registry("MedMNIST 2D dataset")
SETS_3D: Registry[_Spec] = Registry("MedMNIST 3D dataset")
for _name, _spec in _SPECS.items():
  ALL_SETS.add(_name, _spec)
  (SETS_2D if _spec.ndim == 2 else SETS_3D).add(_name, _spec)
NAMES_2D = tuple(SETS_2D.names())
NAMES_3D = tuple(SETS_3D.names())


def _check_size(name: str, spec: _Spec, size: int) -> None:
  sizes = SIZES_2D if spec.ndim == 2 else SIZES_3D
  if size not in sizes:
    raise ValueError(
        f"MedMNIST {name!r} has no size {size!r}; allowed sizes: {sizes}")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


def filename(name: str, size: int = 28) -> str:
  """Official file name: `<name>.npz` at 28 px, `<name>_<size>.npz` else."""
  _check_size(name, ALL_SETS.get(name), size)
  return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def url(name: str, size: int = 28) -> str:
  return URL_PATTERN.format(file=filename(name, size))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """Explicit `data_dir` if non-empty, else $SSL_JAX_DATA_DIR, else cache."""
  if data_dir is not None and os.fspath(data_dir) != "":
    return pathlib.Path(data_dir).expanduser()
  from_env = os.environ.get(ENV_VAR, "")
  if from_env:
    return pathlib.Path(from_env).expanduser()
  return pathlib.Path(platformdirs.user_cache_dir("ssl_jax")) / "medmnist"


# Paths whose md5 this process already checked, keyed with size and mtime so
# that a replaced file is checked again. Large files take seconds to hash.
_verified: set[tuple[str, int, int]] = set()


def _verified_key(path: pathlib.Path) -> tuple[str, int, int]:
  stat = path.stat()
  return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _md5_file(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "md5").hexdigest()


def verify(path: pathlib.Path, expected_md5: str) -> None:
  """Raises ChecksumError unless `path` has the expected md5 (cached)."""
  key = _verified_key(path)
  if key in _verified:
    return
  actual = _md5_file(path)
  if actual != expected_md5:
    raise ChecksumError(
        f"{path}: md5 is {actual}, expected the official {expected_md5} "
        f"(MedMNIST v3, Zenodo record 10519652). The file is corrupt, "
        f"truncated or from another MedMNIST version. Delete it so that it is "
        f"downloaded again, or point {ENV_VAR} (or the config's data_dir) at "
        f"a directory holding the official file.")
  _verified.add(key)


def _open_url(url_: str) -> BinaryIO:
  """The one network call (tests replace it)."""
  request = urllib.request.Request(url_, headers={"User-Agent": "ssl_jax"})
  return urllib.request.urlopen(request, timeout=60)


def _download(url_: str, path: pathlib.Path, expected_md5: str) -> None:
  """Streams `url_` to a temp file beside `path`, checks md5, renames.

  The final name appears only through an atomic rename of a complete, verified
  (and fsynced) file, so concurrent processes and interrupted runs never see
  a partial file (`files.atomic_open`).
  """
  with contextlib.ExitStack() as stack:
    try:  # the temp file is made on entering: an unwritable dir fails here
      out = stack.enter_context(files.atomic_open(
          path, "wb", fsync=True, permissions=None, prefix=f".{path.name}.",
          suffix=".part"))
    except OSError as e:
      raise DataDirError(
          f"data dir {path.parent} is not writable ({e}), so {path.name} "
          f"cannot be downloaded there. Set {ENV_VAR} (or the config's "
          f"data_dir) to a writable directory, or put the file there yourself "
          f"from {url_}") from e
    _log.info("downloading %s to %s", url_, path)
    digest = hashlib.md5()
    try:
      with _open_url(url_) as response:
        while chunk := response.read(1 << 20):
          digest.update(chunk)
          out.write(chunk)
    except (OSError, http.client.HTTPException) as e:
      raise DownloadError(
          f"{path} is missing and downloading it from {url_} failed: {e!r}. "
          f"If this machine is offline, download the file elsewhere and set "
          f"{ENV_VAR} (or the config's data_dir) to the directory holding "
          f"it.") from e
    actual = digest.hexdigest()
    if actual != expected_md5:  # raising here removes the temp file
      raise ChecksumError(
          f"downloaded {url_} has md5 {actual}, expected the official "
          f"{expected_md5}; nothing was saved as {path}. Retry, or download "
          f"the file yourself and set {ENV_VAR} to its directory.")
  _verified.add(_verified_key(path))


def fetch(
    name: str, size: int = 28, data_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Path of the verified official file, downloading it if missing."""
  fname = filename(name, size)
  path = resolve_data_dir(data_dir) / fname
  if not path.exists():
    _download(url(name, size), path, MD5[fname])
  verify(path, MD5[fname])
  return path


def info(name: str, size: int = 28) -> DatasetInfo:
  """Facts about a set (2D or 3D) at one size, without touching the files."""
  spec = ALL_SETS.get(name)
  _check_size(name, spec, size)
  return DatasetInfo(
      name=name,
      task=spec.task,
      num_classes=spec.num_classes,
      num_channels=spec.num_channels,
      image_size=size,
      multi_label=spec.task.startswith("multi-label"),
      license=spec.license,
      citation=CITATION,
      num_examples=dict(spec.num_examples),
      spatial_dims=spec.ndim,
  )


def _array(npz, path: pathlib.Path, key: str) -> np.ndarray:
  if key not in npz.files:
    raise ValueError(f"{path}: no array {key!r}; found {sorted(npz.files)}")
  return npz[key]


def _check_images(images: np.ndarray, field: str, d: DatasetInfo) -> None:
  # The npz stores grayscale without a channel axis: [N, H, W] / [N, D, H, W].
  side = (d.image_size,) * d.spatial_dims
  expected = side if d.num_channels == 1 else side + (d.num_channels,)
  if images.dtype != np.uint8 or images.shape[1:] != expected:
    raise ValueError(
        f"{field}: expected uint8 [N, {', '.join(map(str, expected))}], got "
        f"{images.dtype} {list(images.shape)}")


def _check_labels(labels: np.ndarray, n: int, field: str,
                  d: DatasetInfo) -> None:
  width = d.num_classes if d.multi_label else 1
  if labels.shape != (n, width):
    raise ValueError(
        f"{field}: expected shape [{n}, {width}], got {list(labels.shape)}")
  high = 2 if d.multi_label else d.num_classes
  if labels.size and (labels.min() < 0 or labels.max() >= high):
    raise ValueError(
        f"{field}: labels must lie in [0, {high}), got "
        f"[{labels.min()}, {labels.max()}]")


def load_split(
    name: str,
    split: str,
    *,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of a 2D or 3D set.

  Returns images uint8 [N, H, W, C] (C=1 for grayscale sets, 3 for RGB), or
  [N, D, H, W, 1] for the 3D sets (`info(name).spatial_dims == 3`), and
  labels int32: [N] for single-label tasks, [N, num_classes] of 0/1 for
  multi-label (ChestMNIST).
  """
  d = info(name, size)
  _check_split(split)
  path = fetch(name, size, data_dir)
  with np.load(path) as npz:
    images = _array(npz, path, f"{split}_images")
    labels = _array(npz, path, f"{split}_labels")
  _check_images(images, f"{path}[{split}_images]", d)
  _check_labels(labels, len(images), f"{path}[{split}_labels]", d)
  if d.num_channels == 1:
    images = images[..., None]
  labels = labels.astype(np.int32)
  if not d.multi_label:
    labels = labels[:, 0]
  return images, labels


@dataclasses.dataclass(frozen=True)
class MedMNISTSource:
  """One MedMNIST set (2D or 3D), as registered in `data_pipelines.SOURCES`."""

  name: str

  def info(self, size: int = 28) -> DatasetInfo:
    return info(self.name, size)

  def load(
      self,
      split: str,
      size: int = 28,
      data_dir: str | os.PathLike | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    return load_split(self.name, split, size=size, data_dir=data_dir)
