"""Audit events as OpenTelemetry log records, correlated with the call's span."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from mcp_guard import Guard, ToolSpec
from mcp_guard.audit.otel_logs import OTelLogSink
from mcp_guard.testing import access_token

pytestmark = pytest.mark.anyio


async def test_decisions_become_log_records_on_the_calls_trace() -> None:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    guard = Guard(audit=[OTelLogSink(provider.get_logger("mcp_guard.audit"))])
    guard.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("tools/call read_note") as span:
        await guard.authorize("read_note", {}, access_token("alice", "notes:read extra"))
        await guard.authorize("read_note", {}, access_token("bob", "other"))
    records = [data.log_record for data in exporter.get_finished_logs()]
    decided = [record for record in records if record.event_name == "call.decided"]
    allowed, denied = decided
    assert allowed.severity_number is SeverityNumber.INFO
    assert denied.severity_number is SeverityNumber.WARN
    assert (allowed.attributes or {})["mcp_guard.decision"] == "trimmed"
    assert tuple((denied.attributes or {})["mcp_guard.missing_scopes"]) == ("notes:read",)
    assert (denied.attributes or {})["mcp_guard.subject"] == "bob"
    assert denied.body == "call.decided bob read_note denied"
    assert allowed.trace_id == span.get_span_context().trace_id
