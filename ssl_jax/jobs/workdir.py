"""A job's workdir: writable, held by one process, and holding one setup.

- `check_writable(workdir)` writes (and removes) a probe file before any
  data is read, so a read-only or missing-permission workdir fails up front
  with its name, not later on a temp file of the checkpointer.
- `Lock(workdir)`: an advisory lock file `<workdir>/.lock` (flock) holding
  the host, pid and job of its holder. A second process on the same workdir
  is refused with a message naming the holder; a lock whose holder died
  (SIGKILL, OOM) is not held any more (the kernel drops a dead process's
  flock) and is taken over. One process may take the same lock again
  (re-entrant), e.g. a job that runs another job in the same workdir.
  Sweeps share a workdir by locking each run's own directory
  (`pretrain/<method>/seed<k>`), so one process per seed keeps working.
- `changed_fields(config, saved, not_binding)`: the fields where a config
  differs from the one a workdir was made with (config.json), so a rerun
  with other settings is refused before it damages the workdir.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Any, Iterable

import ml_collections

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # realpath of the lock file -> [fd, depth]


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock."""


def check_writable(workdir: str | os.PathLike) -> None:
  """Writes (and removes) a probe file in `workdir`, or in its nearest
  existing parent when it does not exist yet (nothing is created); fails
  with the workdir's name when it cannot (read-only file system,
  permissions, a file in the way)."""
  workdir = os.path.abspath(workdir)
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  probe = os.path.join(existing, f".ssl_jax_write_probe.{os.getpid()}")
  try:
    if not os.path.isdir(existing):
      raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
        f"workdir {workdir} is not writable ({e.strerror or e}); every job "
        "writes its checkpoints, metrics and results there: choose a "
        "--workdir you can write to") from None


def _describe(holder: dict[str, Any]) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
          f"({holder.get('job', '?')}, since {holder.get('since', '?')})")


def read_holder(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """What the lock file says about its (last) holder, or None."""
  try:
    with open(os.path.join(workdir, LOCK_NAME)) as f:
      return json.loads(f.read() or "null")
  except (OSError, ValueError):
    return None


class Lock:
  """`with Lock(workdir, job='pretrain'):` holds the workdir (see module doc).

  `wait_s` > 0 waits that long for another holder to finish instead of
  failing at once.
  """

  def __init__(self, workdir: str | os.PathLike, job: str = "job", *,
               wait_s: float = 0.0, enabled: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.job, self.wait_s, self.enabled = job, wait_s, enabled
    self.took_over: dict[str, Any] | None = None

  def __enter__(self) -> "Lock":
    if self.enabled:
      self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    if self.enabled:
      self.release()

  def acquire(self) -> None:
    key = os.path.realpath(self.path)
    if key in _held:
      _held[key][1] += 1
      return
    os.makedirs(self.workdir, exist_ok=True)
    deadline = time.monotonic() + self.wait_s
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        if time.monotonic() < deadline:
          time.sleep(0.5)
          continue
        holder = read_holder(self.workdir) or {}
        raise WorkdirBusy(
            f"workdir {self.workdir} is in use by {_describe(holder)}: two "
            "processes on one workdir clobber each other's checkpoints and "
            "metrics. Wait for it to finish (or stop it), or use another "
            f"--workdir. The lock is {self.path}; it is released when its "
            "holder exits, even if killed") from None
      # The file may have been removed (released) between open and flock.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:
        os.close(fd)
        continue
      break
    previous = read_holder(self.workdir)
    if previous and previous.get("pid") != os.getpid():
      self.took_over = previous  # its holder died without releasing
    me = {"host": socket.gethostname(), "pid": os.getpid(), "job": self.job,
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    _held[key] = [fd, 1]
    if self.took_over:
      print(f"took over the stale lock of {self.workdir} from "
            f"{_describe(self.took_over)}, which no longer runs", flush=True)

  def release(self) -> None:
    key = os.path.realpath(self.path)
    entry = _held.get(key)
    if entry is None:
      return
    entry[1] -= 1
    if entry[1] > 0:
      return
    del _held[key]
    fd = entry[0]
    try:
      os.remove(self.path)  # still locked: no one else can hold it now
    except FileNotFoundError:
      pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def is_busy(workdir: str | os.PathLike) -> bool:
  """Whether another process holds the workdir's lock right now."""
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  if os.path.realpath(path) in _held or not os.path.exists(path):
    return False
  try:
    fd = os.open(path, os.O_RDWR)
  except FileNotFoundError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    return True
  finally:
    os.close(fd)  # closing drops a lock we got
  return False


# ------------------------------------------------------- same settings only


def flatten(config: ml_collections.ConfigDict | dict,
            not_binding: Iterable[str] = ()) -> dict[str, Any]:
  """{'a.b.c': value} of a config (as JSON sees it), without the fields
  under any prefix in `not_binding`."""
  not_binding = tuple(not_binding)
  tree = (json.loads(config.to_json_best_effort())
          if hasattr(config, "to_json_best_effort") else config)
  flat: dict[str, Any] = {}

  def walk(prefix: str, node: Any) -> None:
    if isinstance(node, dict):
      for key, value in node.items():
        walk(f"{prefix}.{key}" if prefix else key, value)
    elif not any(prefix == k or prefix.startswith(k + ".")
                 for k in not_binding):
      flat[prefix] = node

  walk("", tree)
  return flat


def changed_fields(now: dict[str, Any], before: dict[str, Any],
                   default: dict[str, Any]) -> list[str]:
  """Flat fields that differ; a field newer than the saved config (absent
  from `before`) binds only if it left its default."""
  return sorted(k for k in set(now) | set(before)
                if now.get(k) != before.get(k, default.get(k, before.get(k))))
