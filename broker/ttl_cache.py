"""A small per-process memory with a time to live, for reads that many requests repeat within seconds (a
client's token, its projects and their allocations). What it may serve stale, and for how long, is each
user's business; see :mod:`broker.identity.service` and :mod:`broker.jobs.service`."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")

DEFAULT_MAX_ENTRIES = 10_000


class TtlCache(Generic[Key, Value]):
    """Key -> value for ``ttl_s`` seconds after it was put; when ``max_entries`` are held, the least recently
    put goes first. ``ttl_s`` = 0 keeps nothing."""

    def __init__(
        self, ttl_s: float, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Key, tuple[float, Value]] = OrderedDict()

    def get(self, key: Key) -> Value | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, value = entry
        if until <= self._clock():
            del self._entries[key]
            return None
        return value

    def put(self, key: Key, value: Value) -> None:
        if self.ttl_s <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl_s, value)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
