"""Records of changes already made that a sink refused: owed, and given again before anything else.

A session opened, bound or ended, or a revocation, takes effect before it is recorded (the
session store decides whether this very call made the change, and a revocation must not wait
on a disk). When a sink refuses such a record (a failing log, in deny mode), the change stands
and the record is owed to that sink: it is given again, after the records owed before it and
ahead of the next record any sink is given, and while it is refused that next record is
refused too, so the call it belongs to is denied. The log ends up with every change, in order.
"""

from __future__ import annotations

import logging
import threading

from mcp_guard.audit.events import AuditEvent
from mcp_guard.audit.sinks import AuditSink

__all__ = ["OwedRecords"]

logger = logging.getLogger("mcp_guard")


class OwedRecords:
    """The records some sink refused, each with the sinks it is still owed to, oldest first."""

    def __init__(self) -> None:
        self.entries: list[tuple[AuditEvent, tuple[AuditSink, ...]]] = []
        """Read inline on the call path: empty but for a sink failing."""
        self._lock = threading.Lock()

    def pay(self) -> None:
        """Give each sink what it is owed, in order; raise the first refusal while any is left."""
        with self._lock:
            self._pay()

    def record_change(self, event: AuditEvent, sinks: tuple[AuditSink, ...]) -> None:
        """Give ``event``, the record of a change already made, to ``sinks`` after what they are
        owed; a sink that refuses it is owed it. Raises the first refusal."""
        with self._lock:
            try:
                self._pay()
            except Exception:
                self.entries.append((event, sinks))
                raise
            refused: list[AuditSink] = []
            error: Exception | None = None
            for sink in sinks:
                try:
                    sink.emit(event)
                except Exception as failure:
                    refused.append(sink)
                    error = error or failure
            if error is not None:
                self.entries.append((event, tuple(refused)))
                logger.error("mcp-guard: the record of %s %s is owed: %s", event.kind, event.event_id, error)
                raise error

    def _pay(self) -> None:
        if not self.entries:
            return
        left: list[tuple[AuditEvent, tuple[AuditSink, ...]]] = []
        blocked: set[int] = set()  # a sink that refused one record gets none after it, to keep their order
        error: Exception | None = None
        for event, sinks in self.entries:
            refused: list[AuditSink] = []
            for sink in sinks:
                if id(sink) not in blocked:
                    try:
                        sink.emit(event)
                        continue
                    except Exception as failure:
                        blocked.add(id(sink))
                        error = error or failure
                refused.append(sink)
            if refused:
                left.append((event, tuple(refused)))
        paid = len(self.entries) - len(left)
        self.entries = left
        if paid and not left:
            logger.warning("mcp-guard: %d owed audit records written", paid)
        if error is not None:
            raise error
