"""Real services in tests: skipped when missing on a developer machine, a failure in CI.

CI sets ``MCP_GUARD_REQUIRE_SERVICES=1``: there a missing service must fail loudly instead of
silently skipping what it was meant to prove.
"""

from __future__ import annotations

import os

import pytest


def require(service: str, problem: str | None) -> None:
    """Skip (or, under MCP_GUARD_REQUIRE_SERVICES=1, fail) when ``problem`` says ``service`` is missing."""
    if problem is None:
        return
    if os.environ.get("MCP_GUARD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{service} is required here (MCP_GUARD_REQUIRE_SERVICES=1) but {problem}")
    pytest.skip(f"{service}: {problem}")
