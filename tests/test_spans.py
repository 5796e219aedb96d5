"""Every decision is on the SDK's `tools/call` span: MCP semantic conventions plus ``mcp_guard.*``."""

from __future__ import annotations

import pytest
from mcp import Client, MCPError
from mcp.server.mcpserver import MCPServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mcp_guard import Guard, GuardMiddleware, MemoryAuditSink, RulePolicy
from mcp_guard.policy import ArgumentConstraint, ArgumentRule
from mcp_guard.policy.scopes import RULE_REQUIRED_SCOPES
from mcp_guard.testing import access_token, acting_as

pytestmark = pytest.mark.anyio


def call_spans(spans: InMemorySpanExporter) -> list[dict[str, object]]:
    return [
        {"name": s.name, "status": s.status.status_code, **(s.attributes or {})}
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.SERVER and (s.attributes or {}).get("mcp.method.name") == "tools/call"
    ]


async def test_allowed_and_denied_calls_are_on_the_call_span(
    server: MCPServer, mode: str, spans: InMemorySpanExporter, audit: MemoryAuditSink
) -> None:
    token = access_token("alice", "notes:read extra", jti="jti-span")
    with acting_as(token):
        async with Client(server, mode=mode) as client:
            await client.call_tool("read_note", {"title": "welcome"})
            with pytest.raises(MCPError):
                await client.call_tool("write_note", {"title": "t", "text": "x"})
    allowed, denied = call_spans(spans)

    assert allowed["name"] == "tools/call read_note"
    assert allowed["gen_ai.operation.name"] == "execute_tool"
    assert allowed["gen_ai.tool.name"] == "read_note"
    assert allowed["mcp_guard.decision"] == "trimmed"
    assert allowed["mcp_guard.reason"] == "allowed"
    assert allowed["mcp_guard.requested_scopes"] == "extra notes:read"
    assert allowed["mcp_guard.approved_scopes"] == "notes:read"
    assert allowed["mcp_guard.missing_scopes"] == ""
    assert allowed["mcp_guard.rule_ids"] == (RULE_REQUIRED_SCOPES,)
    assert allowed["mcp_guard.principal.issuer"] == "https://auth.example.test"
    assert allowed["mcp_guard.principal.subject"] == "alice"
    assert allowed["mcp_guard.principal.client_id"] == "test-client"
    assert allowed["mcp_guard.token.id"] == "jti-span"
    assert allowed["mcp_guard.policy.id"] == "mcp-guard/scopes"
    assert str(allowed["mcp_guard.session.id"])
    assert ("mcp.session.id" in allowed) == (mode == "legacy")
    assert allowed["status"] is not StatusCode.ERROR

    assert denied["name"] == "tools/call write_note"
    assert denied["status"] is StatusCode.ERROR
    assert denied["error.type"]  # the SDK records the JSON-RPC code of the denial
    assert denied["mcp_guard.decision"] == "denied"
    assert denied["mcp_guard.reason"] == "insufficient_scope"
    assert denied["mcp_guard.missing_scopes"] == "notes:write"

    decided = [e for e in audit.events if e.kind == "call.decided"]
    assert [e.trace_id is not None and e.span_id is not None for e in decided] == [True, True]
    assert allowed["mcp_guard.event_id"] == decided[0].event_id

    everything = repr(spans.get_finished_spans()) + repr(audit.events)
    assert token.token not in everything  # never the raw token


async def test_refused_identity_is_visible_too(server: MCPServer, mode: str, spans: InMemorySpanExporter) -> None:
    with acting_as(None):
        async with Client(server, mode=mode) as client:
            with pytest.raises(MCPError):
                await client.call_tool("read_note", {"title": "welcome"})
    [span] = call_spans(spans)
    assert span["status"] is StatusCode.ERROR
    assert span["mcp_guard.reason"] == "token_missing"
    assert span["gen_ai.tool.name"] == "read_note"


async def test_repeated_decisions_share_their_attributes_but_not_their_call_facts(
    server: MCPServer, mode: str, spans: InMemorySpanExporter, audit: MemoryAuditSink
) -> None:
    for scopes in ("notes:read", "notes:read", "notes:read extra"):
        with acting_as(access_token("alice", scopes)):
            async with Client(server, mode=mode) as client:
                await client.call_tool("read_note", {"title": "welcome"})
    first, second, wider = call_spans(spans)
    decided = [e for e in audit.events if e.kind == "call.decided"]
    assert [first["mcp_guard.event_id"], second["mcp_guard.event_id"], wider["mcp_guard.event_id"]] == [
        e.event_id for e in decided
    ]
    assert (first["mcp_guard.decision"], second["mcp_guard.decision"], wider["mcp_guard.decision"]) == (
        "allowed",
        "allowed",
        "trimmed",
    )
    assert wider["mcp_guard.requested_scopes"] == "extra notes:read"
    assert first["mcp_guard.requested_scopes"] == second["mcp_guard.requested_scopes"] == "notes:read"


async def test_a_redacted_argument_never_reaches_the_span_through_a_refusal(
    mode: str, spans: InMemorySpanExporter
) -> None:
    """A refusal's message may quote the argument it refuses; the span says only its code."""
    hosts = ArgumentRule(
        "fetch-hosts", tools=frozenset({"fetch"}), constraints=(ArgumentConstraint("url", hosts=("api.example.com",)),)
    )
    guard = Guard(policy=RulePolicy([hosts]), record_arguments=True)
    server = MCPServer("fetching", middleware=[GuardMiddleware(guard)])

    @server.tool()
    @guard.tool(scopes="web", redact=["url"])
    async def fetch(url: str) -> str:
        return "fetched"

    with acting_as(access_token("alice", "web")):
        async with Client(server, mode=mode) as client:
            for url in ("https://alice:hunter2@api.example.com/x", "https://evil.example/reset?token=hunter2"):
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("fetch", {"url": url})
                assert "hunter2" not in refused.value.error.message
    denied = [span for span in spans.get_finished_spans() if span.name == "tools/call fetch"]
    assert [span.status.status_code for span in denied] == [StatusCode.ERROR, StatusCode.ERROR]
    assert "hunter2" not in repr([(span.attributes, span.status.description, span.events) for span in denied])


async def test_session_events_join_the_trace_of_the_call_that_caused_them(
    server: MCPServer, guard: Guard, mode: str, spans: InMemorySpanExporter, audit: MemoryAuditSink
) -> None:
    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            await client.call_tool("read_note", {"title": "welcome"})
    [call] = [s for s in spans.get_finished_spans() if s.name == "tools/call read_note"]
    trace_id = format(call.context.trace_id, "032x")
    opened, bound = [e for e in audit.events if e.kind in ("session.opened", "session.bound")]
    assert opened.trace_id == bound.trace_id == trace_id
    session_id = opened.session_id
    assert session_id is not None
    await guard.revoke(session_id=session_id, reason="incident 9")
    [revoked] = [e for e in audit.events if e.kind == "session.revoked"]
    assert (revoked.subject, revoked.client_id) == ("alice", "test-client")  # whose session it was
    assert revoked.owners == opened.owners


async def test_a_refused_request_other_than_a_tool_call_is_on_its_span_too(
    server: MCPServer, mode: str, spans: InMemorySpanExporter, audit: MemoryAuditSink
) -> None:
    with acting_as(access_token("alice", "notes:read", expires_in=-3600)):  # expired
        async with Client(server, mode=mode) as client:
            with pytest.raises(MCPError):
                await client.read_resource("notes://index")
    [span] = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.SERVER and (s.attributes or {}).get("mcp.method.name") == "resources/read"
    ]
    attributes = span.attributes or {}
    assert span.status.status_code is StatusCode.ERROR and attributes["mcp_guard.reason"] == "token_expired"
    recorded = audit.events[-1]
    assert (recorded.detail, attributes["mcp_guard.event_id"]) == ("resources/read request", recorded.event_id)
    assert recorded.trace_id == format(span.context.trace_id, "032x")
