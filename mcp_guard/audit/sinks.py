"""Where audit events go: the `AuditSink` protocol and the in-memory sink."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
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
        self.emit: Callable[[AuditEvent], None] = self._events.append
        """Append an event (the deque's own append: atomic, and no Python frame on the hot path)."""

    @property
    def events(self) -> list[AuditEvent]:
        """A snapshot, oldest first."""
        return list(self._events)

    def clear(self) -> None:
        self._events.clear()
