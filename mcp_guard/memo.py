"""Bounded memos: a plain dict that is emptied when full.

Every memo here holds answers that are cheap to work out again (a parsed header, a scope
decision, a JSON fragment), so forgetting them all at once costs a few misses and keeps the
hit path a single dict lookup, with no bookkeeping per entry as an LRU cache would need.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store ``value`` under ``key``, emptying ``memo`` first when it holds ``limit`` entries."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value
