"""Audit events as OpenTelemetry log records, for shipping to a collector.

Each event becomes one log record: ``event_name`` is the kind (``call.decided``...), the body
its one-line summary, the attributes its fields under ``mcp_guard.*``, and it is correlated to
the call's span through its trace and span ids. Denials are WARN, the rest INFO. The logs
provider is whatever the application installed (an OTLP exporter, say); this sink only emits.
"""

from __future__ import annotations

import json

from opentelemetry._logs import Logger, SeverityNumber, get_logger
from opentelemetry.util.types import AttributeValue

from mcp_guard.audit.events import AuditEvent

__all__ = ["OTelLogSink"]


class OTelLogSink:
    """An `AuditSink` that emits each event as an OpenTelemetry log record."""

    def __init__(self, logger: Logger | None = None) -> None:
        self._logger = logger if logger is not None else get_logger("mcp_guard.audit")

    def emit(self, event: AuditEvent) -> None:
        record = event.record()
        attributes: dict[str, AttributeValue] = {}
        for name, value in record.items():
            if value is None or value == [] or value == {}:
                continue
            if isinstance(value, dict):
                attributes[f"mcp_guard.{name}"] = json.dumps(value, sort_keys=True)
            elif isinstance(value, list):
                attributes[f"mcp_guard.{name}"] = [str(item) for item in value]
            else:
                attributes[f"mcp_guard.{name}"] = value
        denied = record.get("decision") == "denied" or str(event.kind) == "token.rejected"
        self._logger.emit(
            timestamp=int(event.at * 1e9),
            severity_number=SeverityNumber.WARN if denied else SeverityNumber.INFO,
            severity_text="WARN" if denied else "INFO",
            event_name=str(event.kind),
            body=_summary(record),
            attributes=attributes,
        )


def _summary(record: dict[str, object]) -> str:
    who = record.get("subject") or "-"
    what = record.get("tool") or record.get("session_id") or "-"
    outcome = record.get("decision") or record.get("result") or ""
    return f"{record['kind']} {who} {what} {outcome}".strip()
