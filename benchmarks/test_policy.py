"""pytest-benchmark suite for policies: a warm decision under a policy file, and the built-in
engine against cedarpy on the same policy. ``benchmarks/ratios.py`` prints the targets."""

from __future__ import annotations

from typing import Any

import pytest

from policies import policy_guard, same_policy_both_ways, warm_policy_caller
from workloads import run_now


@pytest.mark.parametrize("tools", [10, 50, 10_000])
def test_warm_decision_under_a_policy_file(benchmark: Any, tools: int) -> None:
    """``guard.authorize`` under a file with three rules per tool: target <= 10 us at 50 tools."""
    guard, _ = policy_guard(tools)
    token, arguments = warm_policy_caller(guard)
    assert benchmark(lambda: run_now(guard.authorize("tool_0", arguments, token))).allowed


@pytest.mark.parametrize("engine", ["builtin", "cedarpy"])
def test_same_policy(benchmark: Any, engine: str) -> None:
    """The same policy decided by the built-in engine and by a bare cedarpy call: built-in >= 5x faster."""
    pytest.importorskip("cedarpy")
    builtin, cedar = same_policy_both_ways()
    assert benchmark(builtin if engine == "builtin" else cedar).allowed
