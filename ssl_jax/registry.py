"""One tiny name -> object registry, shared by every pluggable kind.

Configs name things (`objective.name='simclr'`); registries resolve the names.
An unknown name fails early with the list of allowed names, so a typo in a
config is caught before anything compiles.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects of one kind (backbones, objectives, policies...)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@BACKBONES.register('resnet18')`."""
    def add(obj: T) -> T:
      self.add(name, obj)
      return obj
    return add

  def add(self, name: str, obj: T) -> None:
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    self._entries[name] = obj

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(
          f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
      ) from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def items(self) -> list[tuple[str, T]]:
    """(name, object) pairs in registration order, for listings whose order
    the registering module chose (names() is sorted)."""
    return list(self._entries.items())

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
