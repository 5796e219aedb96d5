"""Shared fixtures: a guarded notes server, both protocol generations, recorded spans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mcp.server.mcpserver import MCPServer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_guard import Guard, MemoryAuditSink
from support import notes_server

MODES = ("auto", "legacy")
"""``Client(server)`` speaks MCP 2026-07-28 (stateless); ``mode="legacy"`` speaks 2025-11-25 (sessions)."""

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def audit() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def guard(audit: MemoryAuditSink) -> Guard:
    return Guard(scope_hierarchy={"notes:write": "notes:read"}, audit=[audit])


@pytest.fixture
def server(guard: Guard) -> MCPServer:
    return notes_server(guard)
