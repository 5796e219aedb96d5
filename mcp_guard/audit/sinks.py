"""Where audit events go: the `AuditSink` protocol and the in-memory sink."""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from mcp_guard.audit.events import AuditEvent

__all__ = ["AuditSink", "MemoryAuditSink"]


class AuditSink(Protocol):
    """Receives every audit event. ``emit`` is called on the request path: it must not block.

    A sink that raises makes the guard deny the call it was recording (fail closed).
    """

    def emit(self, event: AuditEvent) -> None: ...


class MemoryAuditSink:
    """The most recent ``maxlen`` events in memory: for tests, demos and debugging endpoints."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: deque[AuditEvent] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def emit(self, event: AuditEvent) -> None:
        self._events.append(event)

    @property
    def events(self) -> list[AuditEvent]:
        """A snapshot, oldest first."""
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        self._events.clear()
