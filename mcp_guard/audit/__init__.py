"""What happened: audit events, sinks, and the span annotations that carry them."""

from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.sinks import AuditSink, MemoryAuditSink

__all__ = ["AuditEvent", "AuditSink", "EventKind", "MemoryAuditSink"]
