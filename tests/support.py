"""Helpers the tests share: a guarded notes server, a settable clock, a policy that explodes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context, MCPServer

from mcp_guard import (
    CallRequest,
    Decision,
    Guard,
    GuardMiddleware,
    Principal,
    Risk,
    ToolSpec,
    current_call,
)


class Clock:
    """A settable clock for TTL tests."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def notes_server(guard: Guard, **options: Any) -> MCPServer:
    """A small notes server: read, write, admin tools, a sync tool, one undeclared tool, and a
    resource and a prompt."""
    mcp = MCPServer("notes", middleware=[GuardMiddleware(guard)], **options)
    notes: dict[str, str] = {"welcome": "hello"}

    @mcp.tool()
    @guard.tool(scopes="notes:read")
    async def read_note(title: str, ctx: Context) -> dict[str, Any]:
        """Read one note by title."""
        token = get_access_token()
        call = current_call()
        request = ctx.request_context.request  # the HTTP request, when there is one
        return {
            "text": notes.get(title, ""),
            "scopes": token.scopes if token else None,
            "bearer": token.token if token else None,
            "session": call.session.id if call else None,
            "has_context": ctx is not None,
            "request_authorization": request.headers.get("authorization") if request is not None else None,
            "request_scopes": sorted(request.auth.scopes) if request is not None else None,
            "request_body": len(await request.body()) if request is not None else None,
        }

    @mcp.tool()
    @guard.tool(scopes="notes:write", risk=Risk.WRITE)
    def write_note(title: str, text: str) -> dict[str, Any]:
        """Write a note (a sync tool: the SDK runs it on a worker thread)."""
        notes[title] = text
        token = get_access_token()
        return {"scopes": token.scopes if token else None, "thread": threading.current_thread().name}

    @mcp.tool()
    @guard.tool(scopes="notes:admin", risk=Risk.ADMIN, conceal=True)
    async def purge_notes() -> str:
        """Delete every note."""
        notes.clear()
        return "purged"

    @mcp.tool()
    def undeclared() -> str:
        """A tool the guard does not know: always denied."""
        return "should never run"

    @mcp.resource("notes://index")
    def index() -> str:
        """The titles of the notes (a resource: read without a tool)."""
        return "\n".join(notes)

    @mcp.prompt()
    def summarise(title: str) -> str:
        """A prompt asking for one note's summary."""
        return f"Summarise the note {title}."

    return mcp


class ExplodingPolicy:
    """A policy whose every answer is an exception, carrying text that must never reach a client."""

    id = "exploding"
    version = "0"

    def decide(self, request: CallRequest) -> Decision:
        raise RuntimeError("policy secret: boom")

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        raise RuntimeError("policy secret: boom")


async def call_raw(client: Client, params: dict[str, Any]) -> dict[str, Any]:
    """Send ``tools/call`` with params the typed client would refuse to build."""
    request = types.Request[dict[str, Any], str](method="tools/call", params=params)
    result = await client.session.send_request(request, types.CallToolResult)
    return result.model_dump()


def subjects_on_two_loops(verify: Callable[[], Awaitable[Principal]], timeout: float) -> list[str]:
    """The subjects ``verify`` gives on two threads that each run their own event loop, the
    second starting 0.1 s after the first (while a fetch the first started is under way); fails
    if either is still waiting after ``timeout`` seconds."""
    subjects: list[str] = []

    def on_a_loop_of_its_own(delay: float) -> None:
        async def verified() -> None:
            await anyio.sleep(delay)
            subjects.append((await verify()).subject)

        anyio.run(verified)

    threads = [threading.Thread(target=on_a_loop_of_its_own, args=(delay,), daemon=True) for delay in (0, 0.1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert [thread.is_alive() for thread in threads] == [False, False]
    return subjects


def left_behind(work: Awaitable[Any]) -> None:
    """Start ``work`` on an event loop of its own, and close that loop 0.2 s later without
    cancelling it: the work is left pending for good, as a thread's loop stopped early leaves it."""
    loop = asyncio.new_event_loop()
    pending = loop.create_task(work)  # type: ignore[arg-type]
    loop.run_until_complete(asyncio.sleep(0.2))
    loop.close()
    assert not pending.done()
