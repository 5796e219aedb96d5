"""``make demo``: the quickstart notes server on 127.0.0.1 and a client walking through what the guard does.

It shows an allowed call, a trimmed call, a denied call naming its missing scopes, unknown
and look-alike tool names, a revoked session, the OpenTelemetry spans and the audit trail.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from server import DEMO_TOKENS, build_guard, build_server

from mcp_guard import EventKind, Guard, MemoryAuditSink
from mcp_guard.audit.chain import anchor_path
from mcp_guard.audit.file import FileAuditSink
from mcp_guard.cli import main as cli

SPANS = InMemorySpanExporter()
AUDIT_LOG = Path("quickstart-audit.jsonl")
"""Where the demo writes its chained audit log: the working tree (git ignores *.jsonl)."""


def heading(text: str) -> None:
    print(f"\n== {text}")


@contextmanager
def serving(guard: Guard) -> Iterator[str]:
    """Run the quickstart server with uvicorn on a free loopback port; yield its MCP URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    config = uvicorn.Config(
        build_server(guard, url).streamable_http_app(), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def client(url: str, bearer: str, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"})
    return Client(streamable_http_client(url, http_client=http), mode=mode)


async def attempt(session: Client, tool: str, arguments: dict[str, Any]) -> None:
    try:
        result = await session.call_tool(tool, arguments)
        print(f"   allowed  {tool}: {result.content[0].text}")  # type: ignore[union-attr]
    except MCPError as error:
        print(f"   DENIED   {tool}: [{error.error.code}] {error.error.message}")
        print(f"            data: {error.error.data}")


async def walkthrough(url: str, guard: Guard) -> None:
    heading("research-agent holds notes:read")
    async with client(url, "reader-token") as reader:
        print(f"   tools/list shows: {[tool.name for tool in (await reader.list_tools()).tools]}")
        await attempt(reader, "read_note", {"title": "welcome"})
        heading("research-agent tries to write: denied, with every missing scope named")
        await attempt(reader, "write_note", {"title": "x", "text": "y"})
        heading("an admin tool it may not see, and a look-alike name (Cyrillic 'a'): both just 'unknown'")
        await attempt(reader, "wipe_notes", {})
        await attempt(reader, "re\u0430d_note", {"title": "welcome"})

    heading("editor-agent holds notes:write mail:send calendar:read: the tool runs with notes:write only")
    async with client(url, "writer-token") as writer:
        await attempt(writer, "write_note", {"title": "plan", "text": "ship it"})
        heading("a policy rule refuses a title that is not a plain name, whatever the scopes")
        await attempt(writer, "write_note", {"title": "../../etc/passwd", "text": "x"})

    heading("a legacy (2025-11-25) session is revoked by the operator mid-way")
    async with client(url, "writer-token", mode="legacy") as legacy:
        await attempt(legacy, "read_note", {"title": "plan"})
        session_id = [e for e in audit_log(guard) if e.kind == EventKind.SESSION_OPENED][-1].session_id or ""
        await guard.revoke(session_id=session_id, reason="demo: operator revoked the session")
        print(f"   operator revoked session {session_id}")
        await attempt(legacy, "read_note", {"title": "plan"})


def audit_log(guard: Guard) -> list[Any]:
    sink = guard.sinks[0]
    assert isinstance(sink, MemoryAuditSink)
    return sink.events


def show_spans() -> None:
    heading("OpenTelemetry: the SDK's tools/call spans, annotated by the guard")
    for span in SPANS.get_finished_spans():
        attributes = span.attributes or {}
        if span.kind is not SpanKind.SERVER or "mcp_guard.decision" not in attributes:
            continue
        print(
            f"   {span.name:<24} status={span.status.status_code.name:<5} "
            f"decision={attributes['mcp_guard.decision']:<8} reason={attributes['mcp_guard.reason']:<26} "
            f"approved={attributes['mcp_guard.approved_scopes']!r}"
        )


def show_audit(guard: Guard) -> None:
    heading("Audit trail (in memory here; never a raw token)")
    for event in audit_log(guard):
        who = f"{event.subject}/{event.client_id}" if event.subject else "operator"
        if event.kind == EventKind.CALL_COMPLETED:
            facts = event.facts or {}
            print(f"   {event.kind:<15} {who:<28} {event.tool:<14} {facts['result']} in {facts['duration_ms']} ms")
            continue
        if event.outcome is None:  # a session event
            print(f"   {event.kind:<15} {who:<28} {event.session_id} {event.detail or ''}")
            continue
        scopes = f"requested={sorted(event.requested_scopes)} approved={sorted(event.approved_scopes)}"
        print(f"   {event.kind:<15} {who:<28} {event.tool:<14} {event.outcome:<8} {event.reasons[0]:<19} {scopes}")


def main() -> None:
    logging.disable(logging.INFO)  # keep the transport's request logs out of the walkthrough
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)
    AUDIT_LOG.unlink(missing_ok=True)  # a fresh chain for every run
    anchor_path(AUDIT_LOG).unlink(missing_ok=True)
    print("mcp-guard quickstart: a notes server on 127.0.0.1 with three demo identities")
    for bearer, token in DEMO_TOKENS.items():
        print(f"   {bearer:<13} -> {token.subject} ({token.client_id}) granted: {' '.join(token.scopes)}")
    chained = FileAuditSink(AUDIT_LOG)
    guard = build_guard(MemoryAuditSink(), chained)
    with serving(guard) as url:
        anyio.run(walkthrough, url, guard)
    chained.close()
    show_spans()
    show_audit(guard)
    heading(f"The same trail, hash-chained, in {AUDIT_LOG.resolve()}; mcp-guard audit verify says:")
    print("   ", end="")
    cli(["audit", "verify", str(AUDIT_LOG)])


if __name__ == "__main__":
    main()
