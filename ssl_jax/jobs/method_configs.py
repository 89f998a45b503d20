"""Method configs read as files: `<configs_dir>/<method>.py`'s get_config(arg).

Why: the benchmark sweeps methods by config name, and a fork keeps its own
methods' configs in its own folder (`benchmark.configs_dir`). The library
reads those files by path, like `--config=` does; it does not import an
experiments package. The default folder is this checkout's `configs/`.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def path(name: str, directory: str = "") -> str:
  return os.path.join(directory or DEFAULT_DIR, f"{name}.py")


def exists(name: str, directory: str = "") -> bool:
  return os.path.isfile(path(name, directory))


def load(name: str, *args, directory: str = "") -> ml_collections.ConfigDict:
  """`get_config(*args)` of the file `name`.py in `directory`."""
  file = path(name, directory)
  if not os.path.isfile(file):
    raise ValueError(f"no config file {file} for {name!r}")
  spec = importlib.util.spec_from_file_location(f"_method_config_{name}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)
