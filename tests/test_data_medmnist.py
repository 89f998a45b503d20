"""MedMNIST source: real files, md5 checks, download paths, registry errors."""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

import data_pipelines
from data_pipelines import medmnist

from tests.conftest import MEDMNIST_DIR as SHARED  # honours SSL_JAX_DATA_DIR

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every test here reads the real files: skipped with the reason, or failed
# when SSL_JAX_DATA_DIR / CI says they must be there (conftest.medmnist_dir).
pytestmark = pytest.mark.usefixtures("medmnist_dir")


@pytest.mark.parametrize("split,n", [("train", 546), ("val", 78),
                                     ("test", 156)])
def test_breastmnist_is_grayscale_binary(split, n):
  images, labels = data_pipelines.load("breastmnist", split, data_dir=SHARED)
  assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (n,) and labels.dtype == np.int32
  assert set(np.unique(labels)) == {0, 1}


@pytest.mark.parametrize("split,n", [("train", 1080), ("val", 120),
                                     ("test", 400)])
def test_retinamnist_is_rgb_five_classes(split, n, monkeypatch):
  monkeypatch.setenv(medmnist.ENV_VAR, str(SHARED))  # Found through the env.
  images, labels = medmnist.load_split("retinamnist", split)
  assert images.shape == (n, 28, 28, 3) and images.dtype == np.uint8
  assert labels.shape == (n,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() <= 4
  info = data_pipelines.info("retinamnist")
  assert (info.num_classes, info.num_channels, info.task) == (
      5, 3, "ordinal-regression")
  assert info.num_examples[split] == n


def test_tables_cover_every_set_and_size():
  assert len(data_pipelines.names()) == 12 + 6  # 2D sets + 3D sets
  rgb = {"pathmnist", "dermamnist", "retinamnist", "bloodmnist"}
  for name in data_pipelines.names():
    sizes = (medmnist.SIZES_2D if name in medmnist.NAMES_2D
             else medmnist.SIZES_3D)
    for size in sizes:
      info = data_pipelines.get(name).info(size)
      assert info.image_size == size
      assert info.num_channels == (3 if name in rgb else 1)
      assert medmnist.filename(name, size) in medmnist.MD5
  chest = data_pipelines.info("chestmnist", 224)
  assert chest.multi_label and chest.num_classes == 14
  assert chest.task == "multi-label, binary-class"
  assert data_pipelines.info("dermamnist").license == "CC BY-NC 4.0"
  assert medmnist.filename("pathmnist") == "pathmnist.npz"
  assert medmnist.filename("pathmnist", 64) == "pathmnist_64.npz"
  assert medmnist.url("organsmnist", 224) == (
      "https://zenodo.org/records/10519652/files/organsmnist_224.npz"
      "?download=1")
  assert medmnist.filename("synapsemnist3d", 64) in medmnist.MD5
  assert len(medmnist.MD5) == 12 * 4 + 6 * 2


def test_table_md5_matches_the_shared_files():
  for path in SHARED.glob("*.npz"):
    expected = hashlib.md5(path.read_bytes()).hexdigest()
    assert medmnist.MD5[path.name] == expected


def test_unknown_names_list_the_allowed_ones():
  with pytest.raises(KeyError, match="allowed: .*breastmnist.*tissuemnist"):
    data_pipelines.get("breastmnistt")
  with pytest.raises(KeyError, match="allowed: .*retinamnist"):
    medmnist.load_split("cifar10", "train", data_dir=SHARED)
  with pytest.raises(ValueError, match="allowed: train, val, test"):
    data_pipelines.load("breastmnist", "valid", data_dir=SHARED)
  with pytest.raises(ValueError, match=r"allowed sizes: \(28, 64, 128, 224\)"):
    data_pipelines.info("breastmnist", 32)


def test_md5_mismatch_names_file_and_both_md5s(tmp_path):
  bad = bytearray((SHARED / "breastmnist.npz").read_bytes())
  bad[-100] ^= 0xFF
  (tmp_path / "breastmnist.npz").write_bytes(bad)
  actual = hashlib.md5(bad).hexdigest()
  with pytest.raises(medmnist.ChecksumError) as e:
    data_pipelines.load("breastmnist", "train", data_dir=tmp_path)
  message = str(e.value)
  assert isinstance(e.value, ValueError)
  assert str(tmp_path / "breastmnist.npz") in message
  assert actual in message and medmnist.MD5["breastmnist.npz"] in message
  assert "Delete it" in message and "SSL_JAX_DATA_DIR" in message


def test_offline_download_names_url_path_and_env_var(tmp_path, monkeypatch):
  def offline(url):
    raise urllib.error.URLError("no network")
  monkeypatch.setattr(medmnist, "_open_url", offline)
  with pytest.raises(medmnist.DownloadError) as e:
    medmnist.fetch("breastmnist", 28, tmp_path)
  message = str(e.value)
  assert medmnist.url("breastmnist") in message
  assert str(tmp_path / "breastmnist.npz") in message
  assert "SSL_JAX_DATA_DIR" in message
  assert list(tmp_path.iterdir()) == []


def _serve(data: bytes, calls: list[str]):
  def opener(url):
    calls.append(url)
    return io.BytesIO(data)
  return opener


def test_download_verifies_and_renames(tmp_path, monkeypatch):
  calls = []
  data = (SHARED / "breastmnist.npz").read_bytes()
  monkeypatch.setattr(medmnist, "_open_url", _serve(data, calls))
  target = tmp_path / "new" / "dir"  # Created on demand.
  path = medmnist.fetch("breastmnist", 28, target)
  assert path == target / "breastmnist.npz"
  assert calls == [medmnist.url("breastmnist")]
  assert [p.name for p in target.iterdir()] == ["breastmnist.npz"]
  assert path.read_bytes() == data
  images, _ = medmnist.load_split("breastmnist", "val", data_dir=target)
  assert images.shape == (78, 28, 28, 1)
  assert len(calls) == 1  # Present now: not downloaded again.


def test_bad_download_leaves_no_file(tmp_path, monkeypatch):
  data = (SHARED / "breastmnist.npz").read_bytes()[:-1000]  # Truncated.
  monkeypatch.setattr(medmnist, "_open_url", _serve(data, []))
  with pytest.raises(medmnist.ChecksumError, match="nothing was saved"):
    medmnist.fetch("breastmnist", 28, tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_unwritable_data_dir_says_so(tmp_path, monkeypatch):
  monkeypatch.setattr(medmnist, "_open_url", _serve(b"", []))
  (tmp_path / "a_file").write_text("")
  with pytest.raises(medmnist.DataDirError, match="not writable"):
    medmnist.fetch("breastmnist", 28, tmp_path / "a_file" / "sub")


def test_md5_checked_once_per_process(tmp_path, monkeypatch):
  shutil.copy(SHARED / "breastmnist.npz", tmp_path)
  calls = []
  real = medmnist._md5_file
  monkeypatch.setattr(medmnist, "_md5_file",
                      lambda p: calls.append(p) or real(p))
  for split in ("train", "val", "test"):
    medmnist.load_split("breastmnist", split, data_dir=tmp_path)
  assert len(calls) == 1


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
  monkeypatch.setenv("SSL_JAX_DATA_DIR", str(tmp_path / "env"))
  assert medmnist.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
  assert medmnist.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
  assert medmnist.resolve_data_dir("") == tmp_path / "env"
  assert medmnist.resolve_data_dir(None) == tmp_path / "env"
  monkeypatch.delenv("SSL_JAX_DATA_DIR")
  monkeypatch.setattr(medmnist.platformdirs, "user_cache_dir",
                      lambda app: str(tmp_path / "cache" / app))
  assert medmnist.resolve_data_dir(None) == (
      tmp_path / "cache" / "ssl_jax" / "medmnist")


def test_jobs_import_without_tensorflow_or_file_readers():
  """MedMNIST jobs run on accelerator images that hold JAX alone: building
  a config (which declares every source's options), the data sources and
  the jobs pull in neither TensorFlow nor the file readers (Pillow,
  pydicom, nibabel) nor matplotlib."""
  code = ("import sys, data_pipelines, data_pipelines.medmnist, "
          "data_pipelines.fractions, ssl_jax.jobs.pretrain, "
          "ssl_jax.jobs.finetune, ssl_jax.jobs.benchmark; "
          "from configs import demo; demo.get_config(); "
          "data_pipelines.info('breastmnist'); "
          "loaded = [m for m in ('tensorflow', 'PIL', 'pydicom', 'nibabel', "
          "'matplotlib') if m in sys.modules]; assert not loaded, loaded")
  env = dict(os.environ, PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)


def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch):
  class Broken(io.BytesIO):
    def read(self, size=-1):
      if self.tell() > 0:
        raise ConnectionResetError("connection dropped")
      return super().read(1000)
  monkeypatch.setattr(medmnist, "_open_url", lambda url: Broken(b"x" * 5000))
  with pytest.raises(medmnist.DownloadError, match="connection dropped"):
    medmnist.fetch("retinamnist", 28, tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_data_report_counts_labels_per_split_from_the_npz(tmp_path, capsys):
  """MedMNIST's data_report.json has label counts per split, as the CSV
  source's; checked against the original npz, and printed as the class
  table at load."""
  from ssl_jax.jobs import common  # noqa: PLC0415
  from tests.tiny import tiny_config  # noqa: PLC0415
  report = data_pipelines.report("breastmnist", size=28, data_dir=SHARED)
  with np.load(pathlib.Path(SHARED) / "breastmnist.npz") as npz:
    for split in ("train", "val", "test"):
      counts = np.bincount(npz[f"{split}_labels"].reshape(-1), minlength=2)
      assert report["splits"][split] == {
          "images": int(counts.sum()),
          "label_counts": {"0": int(counts[0]), "1": int(counts[1])}}
  config = tiny_config(**{"data.data_dir": str(SHARED)})
  common.write_data_report(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "data: 2 classes in breastmnist; labels per split:" in out
  assert out.splitlines()[2].split()[:2] == ["data:", "0"]
