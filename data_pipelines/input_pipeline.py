"""Host batches: shard per process, seeded shuffle, repeat, batch.

Numpy only: the stream of index batches is a generator in the calling
thread, computing each costs microseconds, and `parallel.prefetch_to_device`
overlaps the host-to-device copies with the step. It used to be read
ahead on tf.data's threads (`Dataset.from_generator`), which bought nothing
and cost a stall each time such an iterator was dropped: the main thread
waited in tf.data's iterator destructor with every core idle, 20 s after
`make demo`'s pretraining and 4-9 s after its stage-2 cells, 35 s of a
254 s run (py-spy --native; docs/performance.md). TensorFlow is now only
imported by `tfds:` sources (tfds_source.py).

Design, and why:
- The stream is of *indices*, and each batch is a numpy gather on the host
  from arrays held once in memory (TissueMNIST at 224 px is ~8 GB).
- Epoch e of this process's shard of m examples is the numpy permutation
  seeded by (seed, process_index, e). So every epoch is reshuffled, the
  stream is a pure function of (seed, position), and `skip_batches=s`
  resumes a run cheaply: with p = s * batch_size it starts at epoch p // m
  and skips p % m slots of it.
  (tf.data's own `shuffle` cannot jump ahead; its stateless `index_shuffle`
  gives near-identity orders for low-entropy seeds such as [0, 0, 0].)
- With `repeat`, batches run across epoch boundaries (like
  `ds.repeat().batch()`); `drop_remainder` only matters without `repeat`.
  `per_epoch=True` batches each epoch on its own instead, ending it with
  its short batch (PyTorch's DataLoader(shuffle=True), which published
  recipes such as MedMNIST's train with), trimmed to a multiple of the
  data-parallel devices it is split over; every process then reads the
  same number of examples per epoch (N // processes), so their batches
  line up.
- With a `PartnerTable` (data_pipelines/pairs.py) each batch also carries
  `pair_image`, the images of one partner per row, drawn by a numpy rng
  seeded by (seed, process_index, batch position): still a pure function of
  (seed, position), so `skip_batches` resumes pairs exactly too. Partners
  are global rows and may lie outside this process's shard (every process
  holds all the arrays).
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable, Iterator

import numpy as np

from data_pipelines import pairs as pairs_lib

def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
  """Batches in one pass over `n` examples."""
  return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_batch_sizes(m: int, batch_size: int, *, drop_remainder: bool,
                      multiple: int = 1) -> list[int]:
  """Batch sizes of one epoch of `m` examples batched on its own: full
  batches, then the rest trimmed to a multiple of `multiple` (dropped with
  `drop_remainder`, or when trimming leaves nothing)."""
  if multiple <= 0 or batch_size % multiple:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple "
                     f"of {multiple} (the devices a batch is split over)")
  full, rest = divmod(m, batch_size)
  rest -= rest % multiple
  return [batch_size] * full + ([rest] if rest and not drop_remainder else [])


def _default_processes(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else (
        process_index)
    process_count = jax.process_count() if process_count is None else (
        process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count="
                     f"{process_count}), got {process_index}")
  return process_index, process_count


def _columns(
    images: np.ndarray, labels: np.ndarray, extra: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
  """Checks the arrays and names them as the batch keys."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim not in (4, 5):
    raise ValueError(f"images: expected uint8 [N, H, W, C] or [N, D, H, W, C]"
                     f", got {images.dtype} {list(images.shape)}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels: expected integers, got {labels.dtype}")
  columns = {"image": images, "label": labels.astype(np.int32, copy=False)}
  for key, value in (extra or {}).items():
    if key in columns:
      raise ValueError(f"extra key {key!r} clashes with a batch key; "
                       f"reserved: {sorted(columns)}")
    columns[key] = np.asarray(value)
  for key, value in columns.items():
    if len(value) != len(images):
      raise ValueError(f"{key}: expected {len(images)} rows (as images), "
                       f"got {len(value)}")
  return columns


def epoch_order(
    m: int, epoch: int, *, shuffle: bool, seed: int, process_index: int
) -> np.ndarray:
  """Order of this process's m shard slots in one epoch (pure, seeded)."""
  if not shuffle:
    return np.arange(m, dtype=np.int64)
  rng = np.random.default_rng([seed % 2**64, process_index, epoch])
  return rng.permutation(m).astype(np.int64)


def _epoch_orders(m: int, *, shuffle: bool, repeat: bool, seed: int,
                  first_epoch: int, process_index: int
                  ) -> Callable[[], Iterator[np.ndarray]]:
  def epochs() -> Iterator[np.ndarray]:
    numbers = itertools.count(first_epoch) if repeat else range(first_epoch, 1)
    for epoch in numbers:
      yield epoch_order(
          m, epoch, shuffle=shuffle, seed=seed, process_index=process_index)
  return epochs


def slot_batches(
    m: int, *, batch_size: int, shuffle: bool, repeat: bool, seed: int,
    drop_remainder: bool, skip_batches: int, process_index: int,
) -> Iterator[np.ndarray]:
  """Batches of slots in this process's shard (see module doc); with
  `repeat` they run across epoch boundaries."""
  first_epoch, offset = divmod(skip_batches * batch_size, m)
  epochs = _epoch_orders(m, shuffle=shuffle, repeat=repeat, seed=seed,
                         first_epoch=first_epoch, process_index=process_index)
  slots = itertools.islice(itertools.chain.from_iterable(epochs()), offset, None)
  while True:
    batch = np.fromiter(itertools.islice(slots, batch_size), np.int64)
    if len(batch) == 0 or (drop_remainder and len(batch) < batch_size):
      return
    yield batch


def epoch_slot_batches(
    m: int, *, epoch_size: int, batch_size: int, shuffle: bool, repeat: bool,
    seed: int, drop_remainder: bool, skip_batches: int, process_index: int,
    multiple: int = 1,
) -> Iterator[np.ndarray]:
  """Slot batches of `epoch_size` of this process's m slots per epoch (the
  first ones of the epoch's order), each epoch batched on its own
  (`epoch_batch_sizes`). A pure function of (seed, position) as well."""
  sizes = epoch_batch_sizes(epoch_size, batch_size,
                            drop_remainder=drop_remainder, multiple=multiple)
  if not sizes:
    raise ValueError(f"an epoch of {epoch_size} examples per process gives "
                     f"no batch of {batch_size}")
  first_epoch, skip = divmod(skip_batches, len(sizes))
  bounds = np.cumsum([0] + sizes)
  epochs = _epoch_orders(m, shuffle=shuffle, repeat=repeat, seed=seed,
                         first_epoch=first_epoch, process_index=process_index)
  for order in epochs():
    for i in range(skip, len(sizes)):
      yield order[bounds[i]:bounds[i + 1]]
    skip = 0


def make_iterator(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    repeat: bool,
    seed: int,
    drop_remainder: bool,
    process_index: int | None = None,
    process_count: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    skip_batches: int = 0,
    partners: pairs_lib.PartnerTable | None = None,
    per_epoch: bool = False,
    batch_multiple: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image': uint8 [b,H,W,C], 'label': int32 [b] or [b,L], **extra}.

  Volumes [N, D, H, W, C] pass the same way. With `partners`, batches also
  hold 'pair_image': images[partner rows] (see the module doc), and
  'pair_<key>' for every `extra` column (the partner's metadata).

  `batch_size` is per process. Process i of k reads examples i, i+k, i+2k...
  (as `ds.shard(k, i)`); the defaults come from jax.process_index/count.
  The same arguments give the same batches; `skip_batches=s` yields exactly
  what the uninterrupted iterator yields after its first s batches.
  Without `repeat`, shards of unequal size give processes unequal batch
  counts; multi-host evaluation must pad or agree on a count itself.
  `per_epoch`: each epoch batched on its own (module doc), its short batch
  trimmed to a multiple of `batch_multiple`.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if skip_batches < 0:
    raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
  columns = _columns(images, labels, extra)
  if "pair_image" in columns:
    raise ValueError("extra key 'pair_image' is reserved for partners")
  if partners is not None and partners.num_rows != len(columns["image"]):
    raise ValueError(f"partners: table of {partners.mode!r} pairs has "
                     f"{partners.num_rows} rows, images have "
                     f"{len(columns['image'])}")
  process_index, process_count = _default_processes(
      process_index, process_count)
  shard = np.arange(process_index, len(columns["image"]), process_count)
  if len(shard) == 0:
    raise ValueError(f"process {process_index} of {process_count} gets no "
                     f"examples from {len(columns['image'])}")
  if per_epoch:
    slot_stream = epoch_slot_batches(
        len(shard), epoch_size=len(columns["image"]) // process_count,
        batch_size=batch_size, shuffle=shuffle, repeat=repeat, seed=seed,
        drop_remainder=drop_remainder, skip_batches=skip_batches,
        process_index=process_index, multiple=batch_multiple)
  else:
    slot_stream = slot_batches(
        len(shard), batch_size=batch_size, shuffle=shuffle, repeat=repeat,
        seed=seed, drop_remainder=drop_remainder, skip_batches=skip_batches,
        process_index=process_index)
  draw = None if partners is None else functools.partial(
      _partner_rows, partners, seed=seed, process_index=process_index)
  return _gather(slot_stream, shard, columns, draw, first=skip_batches)


# Distinguishes the partner draws' seeds from the epoch permutations'.
_PAIRS_STREAM = 0x9A125


def partner_rng(seed: int, process_index: int,
                position: int) -> np.random.Generator:
  """The rng of the partner draw for batch `position` of the stream."""
  return np.random.default_rng(
      [seed % 2**64, process_index, _PAIRS_STREAM, position])


def _partner_rows(table: pairs_lib.PartnerTable, rows: np.ndarray,
                  position: int, *, seed: int, process_index: int
                  ) -> np.ndarray:
  rng = partner_rng(seed, process_index, position)
  return pairs_lib.sample_partners(table, rows, rng)


def _gather(
    slot_stream: Iterator[np.ndarray], shard: np.ndarray,
    columns: dict[str, np.ndarray],
    draw_partners: Callable[[np.ndarray, int], np.ndarray] | None = None,
    *, first: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches; `first` is the stream position of the first batch."""
  for position, slots in enumerate(slot_stream, start=first):
    rows = shard[slots]
    batch = {key: value[rows] for key, value in columns.items()}
    if draw_partners is not None:
      # The partner's image and its metadata (pair_days: a longitudinal
      # task's time between the two), label excluded.
      partner = draw_partners(rows, position)
      batch.update({f"pair_{key}": value[partner]
                    for key, value in columns.items() if key != "label"})
    yield batch
