"""ssl_jax/files.py: a file appears whole or not at all."""
import json
import os

import pytest

from ssl_jax import files


def test_atomic_open_renames_a_complete_file_with_shared_permissions(tmp_path):
  path = tmp_path / "new" / "out.txt"  # the directory is made on demand
  with files.atomic_open(path, fsync=True) as f:
    f.write("whole")
    assert not path.exists()  # nothing under the final name while writing
  assert path.read_text() == "whole"
  assert os.stat(path).st_mode & 0o777 == files.SHARED
  assert os.listdir(path.parent) == ["out.txt"]


def test_an_error_leaves_the_old_file_and_no_temp_file(tmp_path):
  path = tmp_path / "out.json"
  files.write_json_atomic(path, {"a": 1})
  with pytest.raises(RuntimeError, match="killed"):
    with files.atomic_open(path, "wb", prefix=".out.", suffix=".part") as f:
      f.write(b"half")
      raise RuntimeError("killed mid-write")
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(tmp_path) == ["out.json"]


def test_json_round_trip_and_missing_file(tmp_path):
  import numpy as np  # noqa: PLC0415
  path = tmp_path / "r.json"
  assert files.read_json(path) is None
  files.write_json_atomic(path, {"auroc": np.float32(0.5)})  # default=float
  assert files.read_json(path) == {"auroc": 0.5}
  files.write_json_atomic(path, {"x": np.int64(3)}, default=int)
  assert files.read_json(path) == {"x": 3}


def test_permissions_none_keeps_private_temp_mode(tmp_path):
  path = tmp_path / "download.npz"
  with files.atomic_open(path, "wb", permissions=None) as f:
    f.write(b"x")
  assert os.stat(path).st_mode & 0o777 == 0o600
