"""`pool:a+b+c`: the union of several sources' images, for pretraining.

Self-supervised pretraining needs images, not labels, and gains from more of
them; so a pool concatenates the *train* split of every member. Its labels
are all -1 ("unlabelled": the online probe skips them) and num_classes is 0
with task 'unlabeled', so nothing can mistake a pool for a labelled
benchmark (evaluators reject the task; turn `online_probe` off, as it has no
class to predict). val/test are the first member's val/test images (labels
-1): the other members' val/test never enter the pool, so fine-tuning and
evaluating on any member later stays clean.

Members are any dataset names, prefixed ones included. A member's options
are options["members"][member] when given there, else the pool's other
options (so `{"channels": 1}` applies to every csv member). All members
must have the same number of channels and spatial dims (no silent RGB ->
gray conversion).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from data_pipelines.source import SPLITS, DatasetInfo, Source

UNLABELED = "unlabeled"
# The pool's own option (the others go to its members): {member: options}.
OPTION_TYPES = {"members": dict}


class PoolSource:
  """Union of the members' train splits; val/test from the first member."""

  def __init__(self, spec: str, options: Mapping[str, Any] | None,
               resolve: Callable[[str, Mapping[str, Any] | None], Source]):
    members = [m.strip() for m in spec.split("+")]
    if not spec or any(not m for m in members):
      raise ValueError(f"pool source: expected 'pool:<name>+<name>[+...]', "
                       f"got 'pool:{spec}'")
    if len(set(members)) != len(members):
      raise ValueError(f"pool source: a member appears twice in "
                       f"'pool:{spec}'; its images would count double")
    options = dict(options or {})
    per_member = dict(options.pop("members", None) or {})
    unknown = sorted(set(per_member) - set(members))
    if unknown:
      raise ValueError(f"pool source: options.members names {unknown}, which "
                       f"are not in the pool {members}")
    self.name = f"pool:{spec}"
    self.members = members
    self.sources = [resolve(m, per_member.get(m, options) or None)
                    for m in members]

  def _check_compatible(self, infos: list[DatasetInfo]) -> None:
    first = infos[0]
    for member, d in zip(self.members[1:], infos[1:]):
      for field in ("num_channels", "spatial_dims"):
        a, b = getattr(first, field, 2), getattr(d, field, 2)
        if a != b:
          raise ValueError(
              f"{self.name}: {self.members[0]!r} has {field}={a} but "
              f"{member!r} has {field}={b}; pooled images must match (pick "
              f"options.channels of a csv member, or pool like with like)")

  def info(self, size: int = 28) -> DatasetInfo:
    infos = [s.info(size) for s in self.sources]
    self._check_compatible(infos)
    extra = {}
    if hasattr(infos[0], "spatial_dims"):
      extra["spatial_dims"] = infos[0].spatial_dims
    counts = [d.num_examples for d in infos]
    num_examples = {}
    if all("train" in c for c in counts):
      num_examples = {"train": sum(c["train"] for c in counts),
                      **{s: counts[0][s] for s in SPLITS[1:]
                         if s in counts[0]}}
    return DatasetInfo(
        name=self.name, task=UNLABELED, num_classes=0,
        num_channels=infos[0].num_channels, image_size=size,
        multi_label=False,
        license="; ".join(f"{m}: {d.license}"
                          for m, d in zip(self.members, infos)),
        citation="\n".join(dict.fromkeys(d.citation for d in infos
                                         if d.citation)),
        num_examples=num_examples, **extra)

  def _members_for(self, split: str) -> list[Source]:
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return self.sources if split == "train" else self.sources[:1]

  def load(self, split: str, size: int = 28,
           data_dir: str | os.PathLike | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    self.info(size)  # channel check before reading anything
    images = np.concatenate([s.load(split, size=size, data_dir=data_dir)[0]
                             for s in self._members_for(split)])
    return images, np.full(len(images), -1, np.int32)

  def metadata(self, split: str, size: int = 28,
               data_dir: str | os.PathLike | None = None
               ) -> dict[str, np.ndarray]:
    """`source` (the member each row came from) plus the metadata columns
    that every member of this split has, concatenated."""
    members = self._members_for(split)
    names = self.members[:len(members)]
    parts, sizes = [], []
    for s in members:
      sizes.append(len(s.load(split, size=size, data_dir=data_dir)[0]))
      parts.append(s.metadata(split, size=size, data_dir=data_dir)
                   if hasattr(s, "metadata") else {})
    common = set(parts[0]).intersection(*parts[1:]) if parts else set()
    out = {c: np.concatenate([p[c] for p in parts]) for c in sorted(common)}
    out["source"] = np.repeat(np.array(names, dtype=str), sizes)
    return out
