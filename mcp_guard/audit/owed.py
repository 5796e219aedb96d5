"""Records of changes already made that a sink refused: owed to it, and given before anything else.

A session opened, bound or ended, or a revocation, takes effect before it is recorded (the
session store decides whether this very call made the change, and a revocation must not wait
on a disk). When a sink refuses such a record (a failing log, in deny mode), the change stands
and the record is owed to that sink: every record given to it later first pays what it is
owed, oldest first, so its log ends up with every change, in order. While it cannot be paid,
that sink refuses every record (one attempt per record, whatever the backlog), so the calls
they belong to are denied; the other sinks take them as usual.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable

from mcp_guard.audit.events import AuditEvent
from mcp_guard.audit.sinks import AuditSink

__all__ = ["OwedRecords"]

logger = logging.getLogger("mcp_guard")


class OwedRecords:
    """What each sink is owed, oldest first."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[AuditSink, deque[AuditEvent]]] = {}
        """By the sink's id: read inline on the call path, and empty but for a sink failing."""
        self._lock = threading.Lock()

    def give(self, event: AuditEvent, sinks: Iterable[AuditSink], *, change: bool = False) -> Exception | None:
        """Give ``event`` to each of ``sinks`` after what that sink is owed; the first refusal,
        if any. With ``change`` (the record of a change already made), a sink that refuses it
        is owed it."""
        refusal: Exception | None = None
        with self._lock:
            for sink in sinks:
                try:
                    self._pay(sink)
                    sink.emit(event)
                except Exception as error:
                    refusal = refusal or error
                    if change:
                        self._owe(sink, event, error)
        return refusal

    def settle(self) -> None:
        """Pay every sink what it is owed; raise the first refusal (before a change is made:
        while a sink cannot take its records, no more changes pile up for it)."""
        with self._lock:
            for sink, _ in list(self.entries.values()):
                self._pay(sink)

    def _pay(self, sink: AuditSink) -> None:
        owed = self.entries.get(id(sink))
        if owed is None:
            return
        backlog = owed[1]
        paid = 0
        while backlog:
            sink.emit(backlog[0])  # a refusal leaves it first in line
            backlog.popleft()
            paid += 1
        del self.entries[id(sink)]
        logger.warning("mcp-guard: audit sink %r took the %d records it was owed", sink, paid)

    def _owe(self, sink: AuditSink, event: AuditEvent, error: Exception) -> None:
        if id(sink) not in self.entries:
            self.entries[id(sink)] = (sink, deque())
            logger.error("mcp-guard: audit sink %r refused the record of a change made; it is owed: %s", sink, error)
        self.entries[id(sink)][1].append(event)
