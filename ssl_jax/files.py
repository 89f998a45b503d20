"""Files that appear whole or not at all: write beside, then rename.

A job killed mid-write (SIGKILL, preemption, a full disk) must never leave a
half-written results.json, cell, data report or download where a rerun
would read it. Every writer here writes a temporary file in the target's
directory (same filesystem, so the rename is atomic) and `os.replace`s it
onto the target only once the write finished; on an error the temporary
file is removed and the target is untouched.

Standard library only: data_pipelines and every ssl_jax layer import this.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Callable, Iterator

SHARED = 0o644  # mkstemp makes 0600; results and reports are for sharing


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *,
                fsync: bool = False, permissions: int | None = SHARED,
                prefix: str | None = None, suffix: str = ".tmp",
                **open_kwargs) -> Iterator[IO]:
  """An open temporary file beside `path`, renamed onto it on success.

  The directory is created when missing. `fsync` forces the bytes to disk
  before the rename (downloads: a power cut then leaves the old state, not
  an empty file under the final name). `permissions=None` keeps mkstemp's
  0600. Errors creating the file are raised when the `with` is entered.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
  try:
    with os.fdopen(fd, mode, **open_kwargs) as f:
      yield f
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    if permissions is not None:
      os.chmod(tmp, permissions)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Write-then-rename: a crash never leaves a half-written file."""
  with atomic_open(path) as f:
    f.write(text)


def write_json_atomic(path: str | os.PathLike, payload: Any, *,
                      default: Callable[[Any], Any] = float) -> None:
  """`payload` as indented JSON, atomically; `default` converts what JSON
  lacks (numpy scalars: float)."""
  write_text_atomic(path, json.dumps(payload, indent=2, default=default))


def read_json(path: str | os.PathLike) -> Any:
  """The parsed file, or None when it does not exist yet."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
