"""pytest-benchmark suite for the Cedar adapter: `CedarPolicy.decide` against a bare ``cedarpy.is_authorized``.

The bare call gets the same policies (a pre-parsed ``PolicySet``), the same request and the same
principal and session entities (a pre-parsed ``Entities``): everything the adapter does on top of
Cedar is the difference. ``cedar_ratio()`` measures both sides interleaved in one run; the target
is adapter / bare <= 1.2. With ``reads_session=True`` a policy also reads the session's counters,
which change with every call: any caller must then hand Cedar the session as it is now, so the bare
call adds the session entity, built from the live session, to the pre-parsed principal entity (the
least a hand-written integration can do), exactly as the adapter must.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from mcp_guard import Guard
from mcp_guard.model import CallRequest, Principal, Session
from mcp_guard.policy.cedar import CedarPolicy

cedarpy = pytest.importorskip("cedarpy")

POLICIES = """
@id("engineers-read-docs")
permit (principal, action == McpGuard::Action::"read_file", resource)
when {
  principal.groups.contains("eng") &&
  (if context.arguments has limit then context.arguments.limit <= 100 else true)
};

@id("no-secrets")
forbid (principal, action, resource)
when { context.arguments.path like "/secrets/*" };
"""

SESSION_POLICY = """
@id("session-budget")
forbid (principal, action, resource) when { resource.call_count >= 10000 };
"""

ISSUER = "https://auth.bench.test"


def cedar_workload(
    *, schema: bool = False, reads_session: bool = False
) -> tuple[CedarPolicy, CallRequest, Callable[[], Any]]:
    """The adapter, a call it allows, and the bare ``cedarpy.is_authorized`` of the same call.

    With ``schema``, the adapter validates each request against the schema generated from the tool;
    with ``reads_session``, a policy reads the session's call count.
    """
    policies = POLICIES + SESSION_POLICY if reads_session else POLICIES
    guard = Guard()

    @guard.tool(scopes="files:read")
    def read_file(path: str, limit: int = 10) -> str:
        return path

    tool = guard.tools["read_file"]
    scopes = frozenset({"files:read", "files:write", "mail:send"})
    principal = Principal(ISSUER, "alice", "bench-app", scopes, claims=MappingProxyType({"groups": ["eng", "docs"]}))
    now = time.time()
    session = Session("bench-session", principal.binding, now, now + 3600, 900, now, now + 3600, call_count=42)
    arguments = {"path": "/docs/guide.md", "limit": 20}
    request = CallRequest(principal, session, tool, arguments, now)
    policy = CedarPolicy(policies, tools=[tool] if schema else ())

    policy_set = cedarpy.PolicySet.from_str(policies)
    principal_entity = {
        "uid": {"type": "McpGuard::Principal", "id": "alice"},
        "attrs": {
            "issuer": ISSUER,
            "subject": "alice",
            "client_id": "bench-app",
            "scopes": sorted(scopes),
            "actor": "",
            "delegated": False,
            "groups": ["docs", "eng"],
            "roles": [],
        },
        "parents": [],
    }
    session_entity = {
        "uid": {"type": "McpGuard::Session", "id": "bench-session"},
        "attrs": {"call_count": 42, "denied_count": 0, "purpose": ""},
        "parents": [],
    }
    entities = cedarpy.Entities.from_json_str(json.dumps([principal_entity, session_entity]))
    principal_only = cedarpy.Entities.from_json_str(json.dumps([principal_entity]))
    bare_request = {
        "principal": {"type": "McpGuard::Principal", "id": "alice"},
        "action": {"type": "McpGuard::Action", "id": "read_file"},
        "resource": {"type": "McpGuard::Session", "id": "bench-session"},
        "context": {
            "arguments": arguments,
            "scopes": ["files:read"],
            "tool_risk": "read",
            "tool_tags": [],
            "time": int(now),
        },
    }

    def bare() -> Any:
        if not reads_session:
            return cedarpy.is_authorized(bare_request, policy_set, entities)
        attrs = {"call_count": session.call_count, "denied_count": session.denied_count, "purpose": session.purpose}
        live = principal_only.with_added_json_str(json.dumps([{**session_entity, "attrs": attrs}]))
        return cedarpy.is_authorized(bare_request, policy_set, live)

    decision = policy.decide(request)
    if not (bare().allowed and decision.allowed and decision.rule_ids == ("scopes.required", "engineers-read-docs")):
        raise RuntimeError(f"the workload is not allowed as expected: {decision}")
    return policy, request, bare


@pytest.mark.parametrize("reads_session", [False, True], ids=["principal-arguments", "with-session"])
def test_bare_is_authorized(benchmark: Any, reads_session: bool) -> None:
    _, _, bare = cedar_workload(reads_session=reads_session)
    assert benchmark(bare).allowed


@pytest.mark.parametrize("schema", [False, True], ids=["no-schema", "schema"])
@pytest.mark.parametrize("reads_session", [False, True], ids=["principal-arguments", "with-session"])
def test_adapter_decide(benchmark: Any, reads_session: bool, schema: bool) -> None:
    policy, request, _ = cedar_workload(schema=schema, reads_session=reads_session)
    assert benchmark(lambda: policy.decide(request)).allowed


def cedar_ratio(rounds: int = 41, calls: int = 1000, *, reads_session: bool = False) -> tuple[float, float, float]:
    """Median per-call microseconds of the bare call and of the adapter, and adapter / bare.

    The two sides alternate round by round (which goes first alternates too), each after a
    full collection, so neither pays for the other's garbage.
    """
    policy, request, bare = cedar_workload(reads_session=reads_session)

    def adapter() -> Any:
        return policy.decide(request)

    sides = {"bare": bare, "adapter": adapter}
    samples: dict[str, list[float]] = {"bare": [], "adapter": []}
    for side in sides.values():
        for _ in range(calls):
            side()
    for index in range(rounds):
        for name in ("bare", "adapter") if index % 2 == 0 else ("adapter", "bare"):
            side = sides[name]
            gc.collect()
            start = time.perf_counter()
            for _ in range(calls):
                side()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    bare_median, adapter_median = statistics.median(samples["bare"]), statistics.median(samples["adapter"])
    return bare_median, adapter_median, adapter_median / bare_median


if __name__ == "__main__":
    for reads_session in (False, True):
        bare_us, adapter_us, ratio = cedar_ratio(reads_session=reads_session)
        label = "with a session-reading policy" if reads_session else "principal and arguments"
        print(f"{label}: bare {bare_us:.1f} us, CedarPolicy.decide {adapter_us:.1f} us, ratio {ratio:.3f}")
