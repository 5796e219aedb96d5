"""pytest-benchmark suite: the warm decision, its flatness in the number of tools, and a full call.

Run with ``make bench``; ``benchmarks/ratios.py`` prints the targets' medians and ratios.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_guard.testing import access_token, acting_as
from workloads import guard_with_tools, notes_server, run_now, warm


@pytest.mark.parametrize("tools", [10, 50, 10_000])
def test_warm_decision(benchmark: Any, tools: int) -> None:
    """``guard.authorize`` with the token verified before and the session open: target <= 5 us at 50 tools."""
    guard = guard_with_tools(tools)
    token, arguments = warm(guard)
    result = benchmark(lambda: run_now(guard.authorize("tool_0", arguments, token)))
    assert result.allowed


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
def test_client_call(benchmark: Any, guarded: bool, mode: str) -> None:
    """One in-process ``Client`` call to a trivial async tool, 100 calls per round."""
    server = notes_server(guarded)

    async def hundred_calls() -> None:
        with acting_as(access_token("agent-7", "notes:read")):
            async with Client(server, mode=mode) as client:
                for _ in range(100):
                    result = await client.call_tool("echo", {"text": "hi"})
                    assert not result.is_error

    benchmark.pedantic(lambda: anyio.run(hundred_calls), rounds=10, warmup_rounds=1)
