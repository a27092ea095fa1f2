"""The in-process cache in front of the served model: least recently used entries, with hit counts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    """Lookups so far: `hit_rate` is hits / (hits + misses), 0 before the first lookup."""

    hits: int
    misses: int
    size: int
    capacity: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __str__(self) -> str:
        return (f"cache {self.size}/{self.capacity} entries, {self.hits} hits / {self.hits + self.misses} lookups "
                f"({self.hit_rate:.1%})")


class LRUCache(Generic[V]):
    """At most `capacity` entries (0: caches nothing); `get` counts a hit or a miss."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        try:
            value = self._entries[key]
        except KeyError:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def peek(self, key: Hashable) -> V | None:
        """The entry, without counting a lookup or making it recently used."""
        return self._entries.get(key)

    def put(self, key: Hashable, value: V) -> None:
        if self.capacity == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, len(self._entries), self.capacity)
