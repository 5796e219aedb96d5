"""`make demo` keeps working: the quickstart walkthrough runs and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving import free_port, serving

DEMO = Path(__file__).parent.parent / "examples" / "quickstart" / "demo.py"


def test_the_quickstart_walkthrough(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path
    )
    out = result.stdout
    assert "tools/list shows: ['read_note']" in out
    assert "allowed  read_note" in out
    assert "DENIED   write_note: [-32003]" in out and "'missing_scopes': ['notes:write']" in out
    assert "Unknown tool 'wipe_notes'." in out and "Unknown tool 're\\u0430d_note'." in out
    assert "with scopes [notes:write]" in out  # trimmed from three granted scopes
    assert "'reason': 'argument_rejected'" in out and "plain-titles" in out
    assert "'reason': 'session_revoked'" in out
    assert "decision=trimmed" in out and "status=ERROR" in out
    assert "session.revoked" in out
    assert "quickstart-audit.jsonl; mcp-guard audit verify says:" in out
    chained = (tmp_path / "quickstart-audit.jsonl").read_text()
    for bearer in ("reader-token", "writer-token", "admin-token"):  # what the clients sent
        assert bearer not in chained
    assert "intact: " in out


EXPORT_CHECK = """
import anyio
from otlp import configure_telemetry, exporting_guard
from server import DEMO_TOKENS
tracer_provider, logger_provider = configure_telemetry()
guard = exporting_guard("audit.jsonl")
async def call():
    with __import__("opentelemetry").trace.get_tracer("check").start_as_current_span("tools/call read_note"):
        await guard.authorize("read_note", {"title": "welcome"}, DEMO_TOKENS["reader-token"])
anyio.run(call)
guard.sinks[0].close()  # the chained file log
tracer_provider.force_flush()
logger_provider.force_flush()
"""


def test_the_otlp_example_ships_spans_and_audit_events(tmp_path: Path) -> None:
    received: dict[str, int] = {}

    async def collect(request: Request) -> Response:
        received[request.url.path] = received.get(request.url.path, 0) + len(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    collector = Starlette(
        routes=[Route("/v1/traces", collect, methods=["POST"]), Route("/v1/logs", collect, methods=["POST"])]
    )
    port = free_port()
    environment = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "PYTHONPATH": str(DEMO.parent),
    }
    with serving(collector, port):
        subprocess.run([sys.executable, "-c", EXPORT_CHECK], cwd=tmp_path, env=environment, timeout=60, check=True)
    assert received.get("/v1/traces", 0) > 0
    assert received.get("/v1/logs", 0) > 0
    assert (tmp_path / "audit.jsonl").exists()
