"""pytest-benchmark suite for token verification: a token seen before, and cold ES256 / RS256.

``benchmarks/ratios.py`` prints the targets: the cache hit in microseconds, and the cold paths
as ratios to the bare `cryptography` signature check of the same token.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from workloads import run_now, signed_token


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_token_seen_before(benchmark: Any, alg: str) -> None:
    verifier, token, _, _ = signed_token(alg)
    anyio.run(verifier.verify, token)
    assert benchmark(lambda: run_now(verifier.verify(token))).subject == "agent-7"


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_cold_verification(benchmark: Any, alg: str) -> None:
    verifier, token, _, unseen = signed_token(alg, 500)
    anyio.run(verifier.verify, token)  # the issuer's keys are cached; the tokens are not
    fresh = iter(unseen)

    def cold() -> Any:
        return run_now(verifier.verify(next(fresh)))

    assert benchmark.pedantic(cold, rounds=500, iterations=1).subject == "agent-7"


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_bare_signature_check(benchmark: Any, alg: str) -> None:
    _, _, bare, _ = signed_token(alg)
    benchmark(bare)
