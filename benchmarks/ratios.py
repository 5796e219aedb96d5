"""Print the speed targets as medians and ratios, each against a baseline measured in the same run.

    python benchmarks/ratios.py

Machines here are noisy, so every figure is a median over many rounds, and the two sides of
each ratio are measured in alternating rounds. Exits non-zero if a target is missed.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from joserfc import jwt
from joserfc.jwk import ECKey
from mcp import Client
from mcp.server.auth.provider import AccessToken
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_guard import AuditSink, Guard, Refused
from mcp_guard.audit.chain import verify_files
from mcp_guard.audit.file import FileAuditSink
from mcp_guard.testing import access_token, acting_as
from policies import policy_guard, same_policy_both_ways, warm_policy_caller
from test_cedar import cedar_ratio
from workloads import ISSUER, decided_events, guard_with_tools, notes_server, run_now, signed_token, warm


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def decision_medians(
    tool_counts: tuple[int, ...],
    warmed: Callable[[int], tuple[Guard, AccessToken, dict[str, Any]]],
    rounds: int = 41,
    calls: int = 2000,
) -> dict[int, float]:
    """Median per-call time of a warm ``guard.authorize`` for each tool count, rounds interleaved.

    ``warmed(count)`` builds the guard with ``count`` tools and a caller it has already seen.
    """
    runners = {}
    for count in tool_counts:
        guard, token, arguments = warmed(count)
        runners[count] = lambda g=guard, t=token, a=arguments: run_now(g.authorize("tool_0", a, t))
    samples: dict[int, list[float]] = {count: [] for count in tool_counts}
    for _ in range(rounds):
        for count, run in runners.items():
            samples[count].append(per_call_us(run, calls))
    return {count: statistics.median(values) for count, values in samples.items()}


def scope_guard(count: int) -> tuple[Guard, AccessToken, dict[str, Any]]:
    guard = guard_with_tools(count)
    return (guard, *warm(guard))


def policy_file_guard(count: int) -> tuple[Guard, AccessToken, dict[str, Any]]:
    guard, _ = policy_guard(count)
    return (guard, *warm_policy_caller(guard))


def same_policy_medians(rounds: int = 41, calls: int = 1000) -> tuple[float, float]:
    """Median per-call time of one policy decided by the built-in engine and by bare cedarpy."""
    builtin, cedar = same_policy_both_ways()
    samples: dict[str, list[float]] = {"builtin": [], "cedar": []}
    for _ in range(rounds):
        samples["builtin"].append(per_call_us(builtin, calls))
        samples["cedar"].append(per_call_us(cedar, calls))
    return statistics.median(samples["builtin"]), statistics.median(samples["cedar"])


def token_medians(alg: str, rounds: int = 21, calls: int = 200) -> tuple[float, float, float]:
    """Median per-call time of a cached verification, a cold one (a token not seen before, the
    issuer's keys cached), and the bare signature check."""
    verifier, token, bare, unseen = signed_token(alg, rounds * calls)
    anyio.run(verifier.verify, token)
    fresh = iter(unseen)

    def cold() -> None:
        run_now(verifier.verify(next(fresh)))

    samples: dict[str, list[float]] = {"hit": [], "cold": [], "bare": []}
    for _ in range(rounds):
        samples["hit"].append(per_call_us(lambda: run_now(verifier.verify(token)), 2000))
        samples["cold"].append(per_call_us(cold, calls))
        samples["bare"].append(per_call_us(bare, 200))
    return statistics.median(samples["hit"]), statistics.median(samples["cold"]), statistics.median(samples["bare"])


def concurrent_unknown_kid_fetches(requests: int) -> int:
    """How many JWKS fetches ``requests`` concurrent tokens with an unknown ``kid`` cause."""
    verifier, _, _, _ = signed_token("ES256")
    stranger = ECKey.generate_key("P-256", parameters={"kid": "unknown"})
    tokens = [
        jwt.encode({"alg": "ES256", "kid": "unknown", "typ": "at+jwt"}, {"iss": ISSUER, "n": i}, stranger)
        for i in range(requests)
    ]

    async def attempt(token: str) -> None:
        with contextlib.suppress(Refused):
            await verifier.verify(token)

    async def run_all() -> None:
        async with anyio.create_task_group() as tasks:
            for token in tokens:
                tasks.start_soon(attempt, token)

    anyio.run(run_all)
    return verifier.jwks.fetches


def chain_rates(events: int = 100_000) -> tuple[float, float]:
    """Sustained chained appends per second (to a file, through the sink), and verified entries per second."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "audit.jsonl"
        sink = FileAuditSink(path, max_bytes=1 << 40)
        batch = decided_events(events)
        start = time.perf_counter()
        for event in batch:
            sink.emit(event)
        sink.flush(timeout=300)
        appended = events / (time.perf_counter() - start)
        sink.close()
        start = time.perf_counter()
        verdict = verify_files([str(path)])
        verified = verdict.entries / (time.perf_counter() - start)
        if not verdict.ok:
            raise RuntimeError(str(verdict))
    return appended, verified


def client_call_medians(
    mode: str,
    rounds: int = 61,
    calls: int = 200,
    *sinks: AuditSink,
    between_rounds: Callable[[], object] = lambda: None,
) -> tuple[float, float]:
    """Median per-call time of an in-process Client call, unguarded and guarded.

    Both clients stay open in one event loop; each round times a batch on each side, in an
    order that alternates from round to round, after ``between_rounds`` and a full collection,
    so neither side pays for the other's garbage.
    """
    unguarded, guarded = notes_server(False), notes_server(True, *sinks)
    samples: dict[bool, list[float]] = {False: [], True: []}

    async def measure() -> None:
        with acting_as(access_token("agent-7", "notes:read")):
            async with Client(unguarded, mode=mode) as plain, Client(guarded, mode=mode) as safe:
                clients = {False: plain, True: safe}
                for client in clients.values():
                    for _ in range(100):
                        await client.call_tool("echo", {"text": "hi"})
                for index in range(rounds):
                    for is_guarded in (False, True) if index % 2 == 0 else (True, False):
                        client = clients[is_guarded]
                        between_rounds()
                        gc.collect()
                        start = time.perf_counter()
                        for _ in range(calls):
                            await client.call_tool("echo", {"text": "hi"})
                        samples[is_guarded].append((time.perf_counter() - start) / calls * 1e6)

    anyio.run(measure)
    return statistics.median(samples[False]), statistics.median(samples[True])


def main() -> int:
    failures = []

    def report(label: str, value: float, target: float, unit: str, *, at_least: bool = False) -> None:
        ok = value >= target if at_least else value <= target
        bound = ">=" if at_least else "<="
        print(f"  {label:<58} {value:8.3f} {unit:<3} (target {bound} {target}) {'ok' if ok else 'MISSED'}")
        if not ok:
            failures.append(label)

    print("Warm decision: guard.authorize, 5 scopes, in-memory session, built-in rules")
    medians = decision_medians((10, 50, 10_000), scope_guard)
    for count, median in medians.items():
        print(f"  {count:>6} tools: median {median:.3f} us")
    report("median at 50 tools", medians[50], 5.0, "us")
    report("10,000 tools / 10 tools", medians[10_000] / medians[10], 1.2, "x")

    print("Policy file: a tool's caller, argument and rate rules, plus tag rules (guard.authorize, warm)")
    policy_medians = decision_medians((10, 50, 10_000), policy_file_guard)
    for count, median in policy_medians.items():
        print(f"  {count:>6} tools ({3 * count + 2} rules): median {median:.3f} us")
    report("median at 50 tools", policy_medians[50], 10.0, "us")
    report("10,000 tools / 10 tools", policy_medians[10_000] / policy_medians[10], 1.3, "x")

    print("Cedar: the adapter against a bare cedarpy.is_authorized with pre-parsed policies")
    for reads_session in (False, True):
        bare, adapter, ratio = cedar_ratio(reads_session=reads_session)
        label = "policies reading the session" if reads_session else "principal and arguments"
        print(f"  {label}: bare {bare:.1f} us, CedarPolicy.decide {adapter:.1f} us")
        report(f"adapter / bare ({label})", ratio, 1.2, "x")
    builtin, cedar = same_policy_medians()
    print(f"  the same policy: built-in engine {builtin:.2f} us, bare cedarpy {cedar:.1f} us")
    report("bare cedarpy / built-in engine", cedar / builtin, 5.0, "x", at_least=True)

    print("JWT access tokens (keys cached): a token seen before, and cold verification vs bare cryptography")
    for alg in ("ES256", "RS256"):
        hit, cold, bare = token_medians(alg)
        print(f"  {alg}: seen before {hit:.2f} us, cold {cold:.1f} us, bare signature check {bare:.1f} us")
        report(f"{alg} token seen before", hit, 3.0, "us")
        report(f"{alg} cold / bare cryptography", cold / bare, 1.5, "x")
    fetches = concurrent_unknown_kid_fetches(1000)
    report("JWKS fetches for 1,000 concurrent unknown kids", fetches, 1, "")

    print("In-process Client call to a trivial async tool, guarded / unguarded (no OTel SDK)")
    for mode in ("auto", "legacy"):
        plain, safe = client_call_medians(mode)
        print(f"  {mode:>6}: unguarded {plain:.1f} us, guarded {safe:.1f} us")
        report(f"guarded / unguarded ({mode})", safe / plain, 1.05, "x")

    print("Chained audit log")
    appended, verified = chain_rates()
    report("chained appends per second", appended, 50_000, "/s", at_least=True)
    report("verified entries per second", verified, 100_000, "/s", at_least=True)

    print("In-process Client call, OpenTelemetry SDK on both sides (in-memory exporter), chained log on")
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with tempfile.TemporaryDirectory() as directory:
        chained = FileAuditSink(Path(directory) / "audit.jsonl", max_bytes=1 << 40)
        # Finished spans are dropped between rounds: kept, they pile up and trigger full
        # collections inside whichever batch happens to be timed.
        plain, safe = client_call_medians("auto", 61, 200, chained, between_rounds=exporter.clear)
        chained.close()
    print(f"    auto: unguarded {plain:.1f} us, guarded {safe:.1f} us")
    report("guarded / unguarded with OTel and the chained log", safe / plain, 1.10, "x")

    if failures:
        print(f"missed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
