"""tf.data assembly: numpy batches, determinism, sharding, resuming."""
from __future__ import annotations

import itertools
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import input_pipeline
from data_pipelines import medmnist

from tests.conftest import MEDMNIST_DIR as SHARED  # honours SSL_JAX_DATA_DIR

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _toy(n=50):
  images = np.zeros((n, 4, 4, 1), np.uint8) + (np.arange(n) % 256)[
      :, None, None, None].astype(np.uint8)
  return images, np.arange(n) % 3, {"id": np.arange(n)}


def _iter(n=50, **kw):
  images, labels, extra = _toy(n)
  args = dict(batch_size=8, shuffle=True, repeat=True, seed=0,
              drop_remainder=True, process_index=0, process_count=1,
              extra=extra)
  args.update(kw)
  return input_pipeline.make_iterator(images, labels, **args)


def _ids(iterator, k):
  return [b["id"] for b in itertools.islice(iterator, k)]


@pytest.mark.usefixtures("medmnist_dir")  # skip with the reason, or fail in CI
def test_breastmnist_numpy_batches():
  images, labels = medmnist.load_split("breastmnist", "train",
                                       data_dir=SHARED)
  batches = list(input_pipeline.make_iterator(
      images, labels, batch_size=64, shuffle=True, repeat=False, seed=0,
      drop_remainder=False, process_index=0, process_count=1))
  assert len(batches) == input_pipeline.num_batches(546, 64, False) == 9
  for b in batches:
    assert set(b) == {"image", "label"}
    assert type(b["image"]) is np.ndarray and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32
  assert batches[0]["image"].shape == (64, 28, 28, 1)
  assert batches[-1]["image"].shape == (546 - 8 * 64, 28, 28, 1)
  assert sorted(np.concatenate([b["label"] for b in batches])) == sorted(
      labels)


def test_num_batches():
  assert input_pipeline.num_batches(10, 4, True) == 2
  assert input_pipeline.num_batches(10, 4, False) == 3
  assert input_pipeline.num_batches(8, 4, False) == 2


def test_extra_keys_stay_aligned():
  b = next(_iter())
  assert set(b) == {"image", "label", "id"}
  np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["id"])
  np.testing.assert_array_equal(b["label"], b["id"] % 3)


def test_same_seed_same_stream_and_each_epoch_reshuffled():
  a = np.concatenate(_ids(_iter(n=48), 18))  # 3 epochs of 48.
  b = np.concatenate(_ids(_iter(n=48), 18))
  np.testing.assert_array_equal(a, b)
  epochs = a.reshape(3, 48)
  for epoch in epochs:
    assert sorted(epoch) == list(range(48))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(48))
  other = np.concatenate(_ids(_iter(n=48, seed=1), 18))
  assert not np.array_equal(a, other)


def test_two_processes_split_disjointly_and_cover_all():
  shards = [
      np.concatenate(_ids(_iter(n=51, repeat=False, drop_remainder=False,
                                process_index=i, process_count=2), 100))
      for i in range(2)]
  assert set(shards[0]).isdisjoint(shards[1])
  assert sorted(np.concatenate(shards)) == list(range(51))


@pytest.mark.parametrize("repeat,skip", [(True, 7), (True, 13), (False, 3)])
def test_skip_batches_continues_the_stream(repeat, skip):
  # n=50, b=8: batches straddle epoch boundaries when repeating.
  full = _ids(_iter(repeat=repeat, drop_remainder=not repeat), 20)
  resumed = _ids(_iter(repeat=repeat, drop_remainder=not repeat,
                       skip_batches=skip), 20 - skip)
  assert len(resumed) == len(full) - skip
  for x, y in zip(full[skip:], resumed):
    np.testing.assert_array_equal(x, y)


def test_skip_batches_continues_the_partner_draws():
  from data_pipelines import pairs  # pylint: disable=g-import-not-at-top
  table = pairs.build_partners("patient", {"patient_id": np.arange(50) // 5})
  def pairs_of(iterator, k):
    return [(b["id"], b["pair_image"][:, 0, 0, 0])
            for b in itertools.islice(iterator, k)]
  full = pairs_of(_iter(partners=table), 20)
  resumed = pairs_of(_iter(partners=table, skip_batches=13), 7)
  for (ids, partners), (ids2, partners2) in zip(full[13:], resumed):
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(partners, partners2)
  ids, partners = map(np.concatenate, zip(*full))
  assert (partners // 5 == ids // 5).all() and (partners != ids).all()


def test_no_shuffle_keeps_order():
  ids = np.concatenate(_ids(_iter(shuffle=False, repeat=False,
                                  drop_remainder=False), 10))
  np.testing.assert_array_equal(ids, np.arange(50))


def test_bad_inputs_are_named():
  images, labels, _ = _toy()
  common = dict(batch_size=8, shuffle=False, repeat=False, seed=0,
                drop_remainder=False, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="images: expected uint8"):
    input_pipeline.make_iterator(images.astype(np.float32), labels, **common)
  with pytest.raises(ValueError, match="clashes"):
    input_pipeline.make_iterator(images, labels, extra={"label": labels},
                                 **common)
  with pytest.raises(ValueError, match="id: expected 50 rows"):
    input_pipeline.make_iterator(images, labels, extra={"id": labels[:3]},
                                 **common)


def test_the_input_stream_needs_no_tensorflow():
  """Index batches are numpy in the calling thread: tf.data's read-ahead
  of them stalled every run when its iterator was dropped (module doc)."""
  code = ("import sys, itertools, numpy as np; "
          "from data_pipelines import input_pipeline as ip; "
          "it = ip.make_iterator(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10), "
          "batch_size=4, shuffle=True, repeat=True, seed=0, drop_remainder=True); "
          "assert len(list(itertools.islice(it, 5))) == 5; "
          "assert 'tensorflow' not in sys.modules, 'TF imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_epoch_batch_sizes_keep_the_short_batch_trimmed_to_the_devices():
  # BreastMNIST's 546 training images at batch 128: PyTorch's DataLoader.
  assert input_pipeline.epoch_batch_sizes(546, 128, drop_remainder=False) == [
      128, 128, 128, 128, 34]
  assert input_pipeline.epoch_batch_sizes(546, 128, drop_remainder=True) == [
      128] * 4
  # Split over 8 devices, the short batch keeps 32 of its 34.
  assert input_pipeline.epoch_batch_sizes(
      546, 128, drop_remainder=False, multiple=8)[-1] == 32
  assert input_pipeline.epoch_batch_sizes(515, 128, drop_remainder=False,
                                          multiple=8) == [128] * 4
  with pytest.raises(ValueError, match="multiple of 8"):
    input_pipeline.epoch_batch_sizes(546, 100, drop_remainder=False, multiple=8)


def test_per_epoch_batches_cover_each_epoch_once_and_end_short():
  batches = _ids(_iter(n=50, per_epoch=True, drop_remainder=False), 21)  # 3 epochs of 6 + 1
  assert [len(b) for b in batches] == ([8] * 6 + [2]) * 3
  epochs = [np.concatenate(batches[i * 7:(i + 1) * 7]) for i in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(50))
  assert not np.array_equal(epochs[0], epochs[1])
  # The same epoch orders as the carried stream: only the cuts differ.
  carried = np.concatenate(_ids(_iter(n=50), 25))[:150]
  np.testing.assert_array_equal(np.concatenate(epochs), carried)
  # Resuming mid-epoch and across an epoch yields the same batches.
  for skip in (3, 7, 10):
    resumed = _ids(_iter(n=50, per_epoch=True, drop_remainder=False, skip_batches=skip), 21 - skip)
    for x, y in zip(batches[skip:], resumed):
      np.testing.assert_array_equal(x, y)


def test_per_epoch_batches_line_up_across_processes():
  # 51 images over 2 processes: shards of 26 and 25, each reads 25 an epoch
  # (4 per batch), trimmed to 2 devices per process: 6 x 4 + 0 -> 6 steps.
  streams = [_ids(_iter(n=51, per_epoch=True, drop_remainder=False, batch_size=4, batch_multiple=2,
                        process_index=i, process_count=2), 12)
             for i in range(2)]
  assert [len(b) for b in streams[0]] == [len(b) for b in streams[1]] == [4] * 12
  firsts = [np.concatenate(s[:6]) for s in streams]
  assert set(firsts[0]).isdisjoint(firsts[1])
  assert len(set(firsts[0])) == len(set(firsts[1])) == 24
  # batch 8 of 25 per process: 3 full + 1 -> trimmed to 0 with 2 devices.
  sizes = [len(b) for b in _ids(_iter(n=51, per_epoch=True, drop_remainder=False, batch_multiple=2,
                                      process_index=1, process_count=2), 6)]
  assert sizes == [8] * 6


def test_per_epoch_stream_resumes_mid_epoch():
  kwargs = dict(epoch_size=10, batch_size=4, shuffle=True, repeat=True, seed=3,
                drop_remainder=False, process_index=1)
  whole = list(itertools.islice(
      input_pipeline.epoch_slot_batches(11, skip_batches=0, **kwargs), 11))
  resumed = list(itertools.islice(
      input_pipeline.epoch_slot_batches(11, skip_batches=2, **kwargs), 9))
  assert [len(b) for b in resumed] == [2, 4, 4, 2, 4, 4, 2, 4, 4]
  for a, b in zip(whole[2:], resumed):
    np.testing.assert_array_equal(a, b)
