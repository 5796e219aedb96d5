"""The bounded memo every cache of cheap answers uses, and lock-free cache reads."""

from __future__ import annotations

import pytest
from cachetools import FIFOCache

from mcp_guard.memo import peek, remember


def test_a_full_memo_is_emptied_before_it_takes_another_entry() -> None:
    memo: dict[int, str] = {}
    assert [remember(memo, n, str(n), limit=3) for n in range(3)] == ["0", "1", "2"]
    assert memo == {0: "0", 1: "1", 2: "2"}
    assert remember(memo, 3, "3", limit=3) == "3"
    assert memo == {3: "3"}  # never more than the limit, and the newest answer kept
    remember(memo, 3, "three", limit=3)
    assert memo == {3: "three"}


class _EvictedWhileRead(FIFOCache[str, int]):
    """A cache another thread empties just after a reader found its key in it."""

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        self.clear()
        return found


def test_a_peek_at_an_entry_evicted_while_it_is_read_is_a_miss() -> None:
    cache = _EvictedWhileRead(maxsize=2)
    cache["a"] = 1
    with pytest.raises(KeyError):
        FIFOCache.get(cache, "a")  # what the lock-free reads did: the caller got a bare KeyError
    cache["a"] = 1
    assert peek(cache, "a") is None
    assert peek(cache, "b") is None


def test_a_peek_finds_what_the_cache_holds() -> None:
    cache: FIFOCache[str, int] = FIFOCache(maxsize=2)
    cache["a"] = 1
    assert peek(cache, "a") == 1
