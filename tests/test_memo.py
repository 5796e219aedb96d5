"""The bounded memo every cache of cheap answers uses."""

from __future__ import annotations

from mcp_guard.memo import remember


def test_a_full_memo_is_emptied_before_it_takes_another_entry() -> None:
    memo: dict[int, str] = {}
    assert [remember(memo, n, str(n), limit=3) for n in range(3)] == ["0", "1", "2"]
    assert memo == {0: "0", 1: "1", 2: "2"}
    assert remember(memo, 3, "3", limit=3) == "3"
    assert memo == {3: "3"}  # never more than the limit, and the newest answer kept
    remember(memo, 3, "three", limit=3)
    assert memo == {3: "three"}
