"""The per-process memory behind the credential and submission caches."""

from __future__ import annotations

from broker.ttl_cache import TtlCache
from tests.clocks import ManualClock


def test_a_value_lives_for_the_ttl_and_not_a_moment_longer() -> None:
    clock = ManualClock()
    cache: TtlCache[str, int] = TtlCache(5.0, clock=clock)
    cache.put("a", 1)
    clock.now = 4.9
    assert cache.get("a") == 1
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0


def test_putting_again_renews_and_forgetting_drops() -> None:
    clock = ManualClock()
    cache: TtlCache[str, int] = TtlCache(5.0, clock=clock)
    cache.put("a", 1)
    clock.now = 4.0
    cache.put("a", 2)
    clock.now = 8.0
    assert cache.get("a") == 2
    cache.forget("a")
    cache.forget("never there")
    assert cache.get("a") is None


def test_the_least_recently_put_goes_first_when_full() -> None:
    cache: TtlCache[str, int] = TtlCache(5.0, max_entries=2, clock=ManualClock())
    for value, key in enumerate("abc"):
        cache.put(key, value)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (None, 1, 2, 2)


def test_no_ttl_keeps_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(0, clock=ManualClock())
    cache.put("a", 1)
    assert (cache.get("a"), len(cache)) == (None, 0)
