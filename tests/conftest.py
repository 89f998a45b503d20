"""Shared test setup: CPU only, quiet TF, the local MedMNIST mirror."""
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run tiny programs a few times, so XLA's compile time is most of the
# suite: compile without LLVM's optimisation passes (the same HLO and the
# same maths, slower code; a tiny run.py pretrain + stage 2 took 42 s of CPU
# instead of 102), and with XLA:CPU's older LLVM-IR fusion emitters, which
# compile faster than its MLIR ones without those passes (five objectives'
# init and train step: 37 s of CPU instead of 58; with them, run.py's case,
# the demo step took 44 s instead of 16, so run.py keeps XLA's default).
# Subprocesses inherit it.
# SSL_JAX_TEST_OPTIMIZED=1 keeps XLA's defaults.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true",
                      "--xla_cpu_use_fusion_emitters=false")


def subprocess_xla_flags(*extra: str) -> str:
  """XLA_FLAGS for a test's subprocess that sets its own (a device count):
  those, plus the fast-compile flags."""
  return " ".join(extra + FAST_COMPILE_FLAGS)


if not os.environ.get("SSL_JAX_TEST_OPTIMIZED"):
  _flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join(
      _flags + [f for f in FAST_COMPILE_FLAGS if f not in _flags])

# run.py keeps compiled programs in the user cache; tests never touch it.
# The suite (its xdist workers and their run.py subprocesses inherit this
# environment) shares one cache of its own instead, removed at exit by the
# process that made it: many tests compile the same tiny programs.
# tests/test_compilation_cache.py tests the cache in directories of its own.
os.environ.setdefault("SSL_JAX_COMPILE_CACHE", "0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  # JAX writes entries in place: an entry one worker reads while another
  # writes it fails to load, with a warning, and compiles again.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="ssl_jax_test_xla_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

SHARED_MEDMNIST = ROOT.parent / "shared" / "data" / "medmnist"
# $SSL_JAX_DATA_DIR, else ../shared/data/medmnist next to the checkout.
MEDMNIST_DIR = pathlib.Path(os.environ.get("SSL_JAX_DATA_DIR") or SHARED_MEDMNIST)


def missing_data() -> str | None:
  """Why the real-data tests cannot run here, or None when they can."""
  if (MEDMNIST_DIR / "breastmnist.npz").exists():
    return None
  return (f"MedMNIST files not found in {MEDMNIST_DIR} (set SSL_JAX_DATA_DIR "
          "to the directory holding breastmnist.npz etc.)")


@pytest.fixture(scope="session")
def medmnist_dir() -> pathlib.Path:
  """Real, md5-verified MedMNIST files (read-only in CI).

  Missing data fails loudly when it was asked for (SSL_JAX_DATA_DIR set) or
  in CI (CI set); elsewhere the test is skipped with the reason, which the
  summary lists (pytest.ini: -rs)."""
  reason = missing_data()
  if reason:
    if os.environ.get("SSL_JAX_DATA_DIR") or os.environ.get("CI"):
      pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
  return MEDMNIST_DIR


# The slowest files, slowest first (seconds of one 2-worker run, 2026-12-02).
# `make test` hands whole files to its two workers in collection order
# (--no-loadscope-reorder: xdist would otherwise order files by how many
# tests they hold), so the long ones start early, the short ones fill in
# at the end, and neither worker idles while the other finishes a long
# file. Any other file keeps its place after them; a stale entry only
# costs time.
SLOWEST_FILES = (
    "test_objective_contract.py",  # 452
    "test_train.py",               # 206
    "test_benchmark.py",           # 140
    "test_scale_sharding.py",      # 89
    "test_adversarial.py",         # 86
    "test_jobs.py",                # 78
    "test_stage2_convergence.py",  # 71
    "test_scale_throughput.py",    # 61
    "test_models.py",              # 59
    "test_volumes.py",             # 54
    "test_self_prediction.py",     # 51
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
