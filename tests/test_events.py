"""What audit events say: how calls ended, who owns the session, which OWASP risks they touch."""

from __future__ import annotations

import itertools
import os
import time

import pytest
from mcp import Client, MCPError
from mcp.server.mcpserver import MCPServer

from mcp_guard import (
    AuditEvent,
    EventKind,
    Guard,
    GuardMiddleware,
    MemoryAuditSink,
    SessionOwners,
    SessionSettings,
    ToolSpec,
)
from mcp_guard.testing import access_token, acting_as

pytestmark = pytest.mark.anyio


def server(guard: Guard) -> MCPServer:
    mcp = MCPServer("events", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool(scopes="x:use")
    async def fine() -> str:
        return "fine"

    @mcp.tool()
    @guard.tool(scopes="x:use")
    async def broken() -> str:
        raise ValueError("the tool failed")

    @mcp.tool()
    @guard.tool(scopes="x:use")
    async def refusing() -> str:
        raise MCPError(code=-32001, message="refused by the tool")

    return mcp


async def test_every_admitted_call_records_how_it_ended(mode: str) -> None:
    audit = MemoryAuditSink()
    owners = SessionOwners(policy_owner="sec@example.test", operator="oncall")
    ticks = itertools.count(int(time.time()))  # whole seconds, each reading one later
    guard = Guard(audit=[audit], session_settings=SessionSettings(owners=owners), clock=lambda: float(next(ticks)))
    with acting_as(access_token("alice", "x:use")):
        async with Client(server(guard), mode=mode) as client:
            await client.call_tool("fine", {})
            assert (await client.call_tool("broken", {})).is_error
            with pytest.raises(MCPError):
                await client.call_tool("refusing", {})
    completed = [e for e in audit.events if e.kind == EventKind.CALL_COMPLETED]
    assert [(e.tool, e.facts["result"], e.facts["error_type"]) for e in completed] == [
        ("fine", "ok", None),
        ("broken", "tool_error", None),
        ("refusing", "error", "MCPError"),
    ]
    assert all(e.facts["duration_ms"] >= 0 for e in completed)
    record = completed[0].record()
    assert record["result"] == "ok"
    assert record["owners"] == {"policy_owner": "sec@example.test", "operator": "oncall"}
    decided = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED]
    assert decided[0].owners == owners
    assert decided[0].record()["session_id"] == record["session_id"]
    for decision, completion in zip(decided, completed, strict=True):  # each follows its own decision
        assert (completion.principal, completion.session_id, completion.tool) == (
            decision.principal,
            decision.session_id,
            decision.tool,
        )
        assert (completion.trace_id, completion.span_id) == (decision.trace_id, decision.span_id)
        assert completion.at > decision.at and completion.at.is_integer()  # the guard's clock, read at the end
        assert completion.event_id != decision.event_id


async def test_a_clock_failing_once_the_call_has_run_leaves_its_result_alone(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The completion is recorded after the tool ran: a clock that fails then is logged, and
    the caller still gets the tool's answer."""
    readings = iter([time.time()])

    def clock() -> float:
        return next(readings)  # StopIteration once the decision has read it: a clock that broke

    audit = MemoryAuditSink()
    with acting_as(access_token("alice", "x:use")):
        async with Client(server(Guard(audit=[audit], clock=clock)), mode=mode) as client:
            assert not (await client.call_tool("fine", {})).is_error
    assert "the clock failed as a call to tool fine ended" in caplog.text
    decided, completed = [e for e in audit.events if e.kind in (EventKind.CALL_DECIDED, EventKind.CALL_COMPLETED)]
    assert completed.kind == EventKind.CALL_COMPLETED and completed.at == decided.at  # at its decision's time


async def test_events_are_tagged_with_the_owasp_risks_they_touch() -> None:
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit])
    guard.declare(ToolSpec("use_x", scopes=frozenset({"x:use"})))

    async def tags(tool: str, scopes: str, issuer: str | None = "https://auth.example.test") -> tuple[str, ...]:
        await guard.authorize(tool, {}, access_token("alice", scopes, issuer=issuer))
        return audit.events[-1].owasp

    assert {"ASI03", "MCP02"} <= set(await tags("use_x", "other"))
    assert "MCP03" in await tags("us\u0435_x", "x:use")
    assert "MCP02" in await tags("use_x", "x:use extra")  # trimmed: contained scope creep
    assert {"ASI03", "MCP01"} <= set(await tags("use_x", "x:use", issuer=None))
    assert "owasp" in audit.events[-1].record()


async def test_completion_events_can_be_left_out() -> None:
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit])
    mcp = server(guard)
    mcp.middleware[-1] = GuardMiddleware(guard, record_completions=False)
    with acting_as(access_token("alice", "x:use")):
        async with Client(mcp) as client:
            await client.call_tool("fine", {})
    assert [e.kind for e in audit.events] == [EventKind.SESSION_OPENED, EventKind.SESSION_BOUND, EventKind.CALL_DECIDED]


async def test_each_token_bound_to_a_session_is_recorded_once(mode: str) -> None:
    """The first token acting in a session and each refreshed one get a ``session.bound``;
    further calls on a token already bound do not, even when tokens take turns."""
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit])
    first, refreshed = access_token("alice", "x:use", jti="t-1"), access_token("alice", "x:use", jti="t-2")
    async with Client(server(guard), mode=mode) as client:
        for token in (first, first, refreshed, refreshed, first):
            with acting_as(token):
                await client.call_tool("fine", {})
    bound = [e for e in audit.events if e.kind == EventKind.SESSION_BOUND]
    opened = [e for e in audit.events if e.kind == EventKind.SESSION_OPENED]
    assert all(e.subject == "alice" for e in bound)
    if mode == "legacy":  # one transport session, and the tokens take turns in it
        assert [e.token_id for e in bound] == ["t-1", "t-2"]
        assert len(opened) == 1 and {e.session_id for e in bound} == {opened[0].session_id}
    else:  # stateless: each token keys a session of its own
        assert [e.token_id for e in bound] == ["t-1", "t-2"]
        assert [e.session_id for e in bound] == [e.session_id for e in opened]


def test_a_completion_follows_its_decision_with_the_duration_rounded_to_the_microsecond() -> None:
    decided = AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="t", session_id="s")
    completed = decided.completion(1_900_000_001.0, "ok", 0.0222756, None)
    assert (completed.kind, completed.at, completed.tool, completed.session_id) == (
        EventKind.CALL_COMPLETED,
        1_900_000_001.0,
        "t",
        "s",
    )
    assert completed.facts == {
        "result": "ok",
        "duration_ms": 22.276,
        "error_type": None,
        "decided_event_id": decided.event_id,
    }
    assert decided.completion(0.0, "error", 0.0222754, "ValueError").facts["duration_ms"] == 22.275


def test_a_forked_child_mints_event_ids_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id and leave at once
        os.write(write, AuditEvent.build(EventKind.CALL_DECIDED, 0.0).event_id.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        childs = pipe.read().decode()
    os.waitpid(pid, 0)
    parents = AuditEvent.build(EventKind.CALL_DECIDED, 0.0).event_id
    assert childs.split("-")[0] != parents.split("-")[0]  # another origin: ids never repeat across workers
