"""The quickstart notes server, shipping spans and audit events to an OpenTelemetry collector.

    pip install 'mcp-guard[otlp]'
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python examples/quickstart/otlp.py

Spans go out over OTLP/HTTP, and so does every audit event, as a log record correlated with its
span (`OTelLogSink`). The hash-chained log is still written to disk: the collector gets the
events fast, and the chain proves later that none was edited. docs/audit-export.md has a
collector configuration that also tails the chained log.
"""

from __future__ import annotations

from opentelemetry import _logs, trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from server import build_guard, build_server

from mcp_guard import Guard
from mcp_guard.audit.file import FileAuditSink
from mcp_guard.audit.otel_logs import OTelLogSink


def configure_telemetry(service_name: str = "notes-mcp") -> tuple[TracerProvider, LoggerProvider]:
    """Install OTLP/HTTP exporters for spans and logs (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT)."""
    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    _logs.set_logger_provider(logger_provider)
    return tracer_provider, logger_provider


def exporting_guard(log_path: str = "notes-audit.jsonl") -> Guard:
    """The notes guard, recording to the chained log and to OpenTelemetry logs."""
    return build_guard(FileAuditSink(log_path), OTelLogSink())


def main() -> None:
    import uvicorn

    configure_telemetry()
    app = build_server(exporting_guard()).streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=8000)


if __name__ == "__main__":
    main()
