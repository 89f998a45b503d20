"""Pytree key paths as names: one reading of `tree_flatten_with_path` keys.

Sharding rules match regexes against these names, `last_k` picks trainable
blocks by them and the encoder loader finds the encoder by them, so all
must read a path the same way: a dict key, an attribute name or a sequence
index, whichever the key object carries. Nested dicts of arrays (weight
files, checkpoints) flatten to the same '/'-joined names.
"""
from __future__ import annotations

from typing import Any, Mapping

KEY_FIELDS = ("key", "name", "idx")  # DictKey, GetAttrKey, SequenceKey


def path_keys(path: tuple) -> tuple[Any, ...]:
  """The raw keys of a key path: ('encoder', 'stages', 0, 'conv1', ...);
  indices stay ints."""
  return tuple(_key(k) for k in path)


def path_str(path: tuple) -> str:
  """'params/encoder/blocks/0/fc1/kernel' for a pytree key path.

  NNX's trailing `.value` is dropped, so a name reads like the module tree.
  """
  parts = [str(k) for k in path_keys(path)]
  if parts and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def _key(entry: Any) -> Any:
  for field in KEY_FIELDS:
    if hasattr(entry, field):
      return getattr(entry, field)
  return entry


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """Nested mapping -> {'a/b/c': leaf}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(flatten(value, path))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b/c': leaf} -> nested dicts."""
  out: dict = {}
  for key, value in flat.items():
    *parents, last = key.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return out
