"""The embedded session store: a bounded map in process memory, for one server process."""

from __future__ import annotations

import threading

from cachetools import FIFOCache

from mcp_guard.model import Session, SessionState
from mcp_guard.session.store import EndResult

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    """Sessions in process memory, at most ``max_sessions`` of them.

    When full, the oldest session is evicted first; with an absolute lifetime on every session
    that is the one closest to its end anyway. An ended session stays stored, so its id keeps
    being refused, until it is evicted for room. Safe across tasks (no method awaits while
    touching state) and threads: reads are single dict lookups, changes take a lock.
    """

    def __init__(self, *, max_sessions: int = 100_000) -> None:
        self._sessions: FIFOCache[str, Session] = FIFOCache(maxsize=max_sessions)
        self._lock = threading.Lock()

    async def get(self, session_id: str) -> Session | None:
        try:
            return self._sessions[session_id]
        except KeyError:
            return None

    async def add(self, session: Session) -> tuple[Session, bool]:
        with self._lock:
            stored = self._sessions.get(session.id)
            if stored is not None:
                return stored, False
            self._sessions[session.id] = session
            return session, True

    async def record_call(self, session: Session, at: float, *, allowed: bool) -> None:
        with self._lock:
            if allowed:
                session.call_count += 1
                session.last_active_at = at
            else:
                session.denied_count += 1

    async def end(self, session_id: str, state: SessionState, reason: str) -> EndResult:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return "missing"
            if session.state is not SessionState.ACTIVE:
                return "already_ended"
            session.state = state
            session.end_reason = reason
            return "ended"

    def __len__(self) -> int:
        return len(self._sessions)
