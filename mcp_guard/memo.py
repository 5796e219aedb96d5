"""Bounded memos, and lock-free reads of bounded caches.

Every memo here holds answers that are cheap to work out again (a parsed header, a scope
decision, a JSON fragment), so forgetting them all at once costs a few misses and keeps the
hit path a single dict lookup, with no bookkeeping per entry as an LRU cache would need.
"""

from __future__ import annotations

from typing import TypeVar

from cachetools import FIFOCache

__all__ = ["peek", "remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store ``value`` under ``key``, emptying ``memo`` first when it holds ``limit`` entries."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


def peek(cache: FIFOCache[K, V], key: K) -> V | None:
    """What ``cache`` holds under ``key``, or None, without taking the lock its writers take.

    A FIFO cache's reads do not reorder it, so they need no lock; but cachetools' own ``get``
    tests membership and then reads, and a writer on another thread evicting ``key`` between
    the two makes it raise `KeyError`. Here that is a miss.
    """
    if key not in cache:
        return None
    try:
        return cache[key]
    except KeyError:  # evicted between the test and the read
        return None
