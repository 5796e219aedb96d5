"""Shared set-up for the benchmarks: guards with N tools, a warm principal, in-process servers."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer

from mcp_guard import Guard, GuardMiddleware, MemoryAuditSink, ToolSpec
from mcp_guard.testing import access_token

T = TypeVar("T")

SCOPES = "notes:read notes:write files:read mail:send calendar:read"


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without an event loop, and return its result.

    The in-memory guard never awaits real I/O, so this measures the decision itself and not
    the scheduler. A coroutine that does suspend is an error, not a silent mismeasurement.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the coroutine suspended; it cannot be driven synchronously")


def guard_with_tools(count: int) -> Guard:
    """A guard with ``count`` declared tools; ``tool_0`` needs ``notes:read``."""
    guard = Guard(scope_hierarchy={"notes:write": "notes:read"}, audit=[MemoryAuditSink(maxlen=1024)])
    for index in range(count):
        guard.declare(ToolSpec(f"tool_{index}", scopes=frozenset({"notes:read" if index % 2 == 0 else "files:read"})))
    return guard


def warm(guard: Guard) -> tuple[AccessToken, dict[str, Any]]:
    """A caller with five scopes whose token is verified and whose session is open."""
    token = access_token("agent-7", SCOPES, sid="bench-session")
    arguments = {"title": "welcome"}
    decision = run_now(guard.authorize("tool_0", arguments, token)).decision
    if not decision.allowed or decision.approved_scopes != {"notes:read"}:
        raise RuntimeError(f"the warm-up call was not allowed as expected: {decision}")
    return token, arguments


def notes_server(guarded: bool) -> MCPServer:
    """A server with one trivial async tool, with or without the guard."""
    guard = Guard(audit=[MemoryAuditSink(maxlen=1024)])
    server = MCPServer("bench", middleware=[GuardMiddleware(guard)] if guarded else [])

    async def echo(text: str) -> str:
        return text

    server.tool()(guard.tool(scopes="notes:read")(echo) if guarded else echo)
    return server
