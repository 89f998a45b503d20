"""The persistent compilation cache run.py turns on: where it lives, how to
turn it off, and that a second process loads what the first compiled."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jaxlib
import pytest

from ssl_jax import runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def no_cache_dir(monkeypatch):
  """The process's cache setting, restored after the test."""
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  yield monkeypatch
  jax.config.update("jax_compilation_cache_dir", before)


def test_cache_lives_in_the_user_cache_keyed_by_jaxlib_and_cpu(no_cache_dir, tmp_path):
  no_cache_dir.setenv("SSL_JAX_CACHE_DIR", str(tmp_path))
  no_cache_dir.setenv("SSL_JAX_COMPILE_CACHE", "0")
  assert runtime.use_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir is None
  no_cache_dir.delenv("SSL_JAX_COMPILE_CACHE")
  path = runtime.use_compilation_cache()
  assert path == (tmp_path / "xla" /
                  f"jaxlib-{jaxlib.__version__}-{runtime.host_fingerprint()}")
  assert jax.config.jax_compilation_cache_dir == str(path)
  assert len(runtime.host_fingerprint()) == 12
  # A directory the user chose is kept.
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert runtime.use_compilation_cache() == tmp_path / "mine"


SCRIPT = """
import json, jax, jax.numpy as jnp
from ssl_jax import runtime
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event)
    if event == "/jax/compilation_cache/cache_hits" else None)
path = runtime.use_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0))
out = f(jnp.arange(12.0).reshape(3, 4) / 10)
print(json.dumps({"out": out.tolist(), "hits": len(hits), "dir": str(path)}))
"""


def test_a_second_process_loads_the_program_the_first_compiled(tmp_path):
  env = dict(os.environ, SSL_JAX_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
  env.pop("SSL_JAX_COMPILE_CACHE")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's own cache

  def run():
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])

  first, second = run(), run()
  assert first["hits"] == 0 and second["hits"] >= 1
  assert second["out"] == first["out"]
  entries = list((tmp_path / "xla").glob("*/*"))
  assert entries and all(str(e).startswith(first["dir"]) for e in entries)
  # Entries a killed run left half-written: read fails, the program
  # compiles again, the result is the same.
  for entry in entries:
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
  third = run()
  assert third["hits"] == 0 and third["out"] == first["out"]
