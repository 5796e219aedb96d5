"""Arguments in spans and the log: only when opted in, redacted per tool, and always bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.server.mcpserver import MCPServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mcp_guard import EventKind, Guard, GuardMiddleware, MemoryAuditSink
from mcp_guard.audit.arguments import REDACTED, summarize_arguments
from mcp_guard.testing import access_token, acting_as

pytestmark = pytest.mark.anyio


def server(guard: Guard) -> MCPServer:
    mcp = MCPServer("args", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool(scopes="mail:send", redact=["password", "body"])
    async def send_mail(to: str, subject: str, body: str, password: str, extra: dict[str, Any] | None = None) -> str:
        return "sent"

    return mcp


CALL = {
    "to": "bob@example.test",
    "subject": "hi",
    "body": "secret text",
    "password": "hunter2",
    "extra": {"nested": {"password": "also secret", "keep": 1}},
}


async def test_arguments_stay_out_unless_opted_in(mode: str, spans: InMemorySpanExporter) -> None:
    audit = MemoryAuditSink()
    with acting_as(access_token("alice", "mail:send")):
        async with Client(server(Guard(audit=[audit])), mode=mode) as client:
            await client.call_tool("send_mail", CALL)
    decided = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED][-1]
    assert "arguments" not in decided.record()
    assert "hunter2" not in repr(spans.get_finished_spans())


async def test_opted_in_arguments_are_redacted_at_any_depth(mode: str, spans: InMemorySpanExporter) -> None:
    audit = MemoryAuditSink()
    with acting_as(access_token("alice", "mail:send")):
        async with Client(server(Guard(audit=[audit], record_arguments=True)), mode=mode) as client:
            await client.call_tool("send_mail", CALL)
    decided = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED][-1]
    recorded = json.loads(decided.record()["arguments"])
    assert recorded["to"] == "bob@example.test"
    assert recorded["password"] == recorded["body"] == REDACTED
    assert recorded["extra"]["nested"] == {"password": REDACTED, "keep": 1}
    [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.name == "tools/call send_mail"]
    assert json.loads(str((span.attributes or {})["mcp_guard.arguments"])) == recorded
    everything = repr(audit.events) + repr(spans.get_finished_spans())
    assert "hunter2" not in everything and "also secret" not in everything and "secret text" not in everything


def test_huge_and_deep_arguments_are_capped() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["next"] = {}
        node = node["next"]
    arguments = {"blob": "x" * 10_000_000, "items": list(range(100_000)), "deep": deep, "nan": float("nan")}
    summary = summarize_arguments(arguments, max_bytes=2048)
    assert len(summary) <= 2048
    parsed = json.loads(summary) if summary.endswith("}") else None
    if parsed is not None:
        assert len(parsed["blob"]) < 300


class Counted(dict[str, Any]):
    """A mapping that counts how often its items are walked."""

    walked = 0

    def items(self) -> Any:
        Counted.walked += 1
        return super().items()


def test_shared_and_cyclic_arguments_cost_what_their_capped_rendering_holds() -> None:
    """The walk stops once past max_bytes, so references shared at every level (32**3 paths
    here, 32**6 OOM-killed it) are not all rendered, and a cycle is cut where it recurs."""
    node: Any = "x" * 300
    for _ in range(3):
        node = Counted({str(index): node for index in range(32)})
    Counted.walked = 0
    summary = summarize_arguments({"a": node})
    assert len(summary) == 2048 and Counted.walked <= 3
    cycle: list[Any] = []
    cycle.extend([cycle, 1])
    assert summarize_arguments({"a": cycle}) == '{"a":["[cycle]",1]}'


async def test_a_denial_with_an_unrenderable_argument_is_still_recorded() -> None:
    """An integer past Python's 4,300-digit limit (possible in process, never over the wire)
    once made the denial go unrecorded and uncounted."""
    from mcp_guard import Guard, MemoryAuditSink, ToolSpec
    from mcp_guard.testing import access_token

    audit = MemoryAuditSink()
    guard = Guard(audit=[audit], record_arguments=True)
    guard.declare(ToolSpec("count", scopes=frozenset({"n:write"})))
    decision = (await guard.authorize("count", {"n": 10**5000}, access_token("alice", "n:read"))).decision
    assert decision.reason.code == "insufficient_scope"
    [decided] = [event for event in audit.events if event.kind == "call.decided"]
    assert decided.facts == {"arguments": '{"n":"<int of 16610 bits>"}'}
    assert summarize_arguments({"n": 2**256}) == '{"n":"<int of 257 bits>"}'


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=50),
        lambda children: st.lists(children, max_size=40) | st.dictionaries(st.text(max_size=10), children, max_size=40),
        max_leaves=400,
    )
)
def test_any_arguments_render_within_bounds(value: Any) -> None:
    summary = summarize_arguments({"value": value, "password": value}, frozenset({"password"}), max_bytes=1024)
    assert len(summary) <= 1024
    assert summary.isascii()
