"""Shared test setup: CPU only, quiet TF, the local MedMNIST mirror."""
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

SHARED_MEDMNIST = ROOT.parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def medmnist_dir() -> pathlib.Path:
  """Real, md5-verified MedMNIST files (read-only in CI)."""
  path = pathlib.Path(os.environ.get("SSL_JAX_DATA_DIR") or SHARED_MEDMNIST)
  if not (path / "breastmnist.npz").exists():
    pytest.skip(f"MedMNIST files not found in {path}")
  return path
