"""The embedded session store: a bounded map in process memory, for one server process."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

from mcp_guard.errors import Refused
from mcp_guard.model import MAX_SESSION_TOKENS, Session, SessionState, ToolSpec
from mcp_guard.reasons import ReasonCode
from mcp_guard.session.store import EndResult

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    """Sessions in process memory, at most ``max_sessions`` of them, and at most
    ``max_sessions_per_subject`` (a tenth of them unless given) bound to any one subject (an
    issuer and a subject, whatever client ids it comes with).

    A session is kept until its ``retain_until`` has passed, ended or not, so an ended
    session's key stays refused and a live session is never silently reset. When the store is
    full, sessions past that point are swept out. If none is, opening a new session is refused
    (``session_unavailable``) rather than forgetting one that still matters: fail closed. The
    per-subject bound keeps one identity opening session after session (a connection each)
    from filling the store for everyone else, however many client registrations it holds.

    Safe across tasks (no method awaits while touching state) and threads: a read is one dict
    lookup, and changes take a lock. A plain dict, not a cachetools cache: a cachetools read is
    a Python call on every tool call, and eviction here is by retention, not by recency.
    """

    def __init__(self, *, max_sessions: int = 100_000, max_sessions_per_subject: int | None = None) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions!r}")
        if max_sessions_per_subject is None:
            max_sessions_per_subject = max(1, max_sessions // 10)
        if max_sessions_per_subject < 1:
            raise ValueError(f"max_sessions_per_subject must be at least 1, not {max_sessions_per_subject!r}")
        self.max_sessions = max_sessions
        self.max_sessions_per_subject = max_sessions_per_subject
        self._sessions: dict[str, Session] = {}
        self._held: dict[tuple[str, str], int] = {}
        """Sessions held per (issuer, subject)."""
        self._lock = threading.Lock()
        self._next_sweep = -math.inf

    async def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def add(self, session: Session) -> tuple[Session, bool]:
        with self._lock:
            stored = self._sessions.get(session.id)
            if stored is not None:
                return stored, False
            subject, now = session.binding[:2], session.created_at
            if self._held.get(subject, 0) >= self.max_sessions_per_subject and not (
                self._sweep(now) and self._held.get(subject, 0) < self.max_sessions_per_subject
            ):
                raise Refused(
                    ReasonCode.SESSION_UNAVAILABLE,
                    "This identity holds as many governed sessions as it may: retry once some have ended.",
                )
            if len(self._sessions) >= self.max_sessions and not self._sweep(now):
                raise Refused(
                    ReasonCode.SESSION_UNAVAILABLE,
                    "The server holds as many governed sessions as it may: retry later.",
                )
            self._sessions[session.id] = session
            self._held[subject] = self._held.get(subject, 0) + 1
            self._next_sweep = min(self._next_sweep, session.retain_until)
            return session, True

    async def record_call(
        self,
        session: Session,
        at: float,
        *,
        allowed: bool,
        tool: ToolSpec | None = None,
        targets: Iterable[tuple[str, str]] = (),
        risk: float = 0.0,
    ) -> float:
        with self._lock:
            if allowed:
                session.call_count += 1
                session.last_active_at = max(session.last_active_at, at)  # a slow call finishing late
                if tool is not None:
                    session.history.tools.add(tool.name)
                    if tool.tags:
                        session.history.tags |= tool.tags
                if targets:
                    for rule_id, target in targets:
                        session.history.targets.setdefault(rule_id, set()).add(target)
            else:
                session.denied_count += 1
            if risk:
                session.risk_score += risk
            return session.risk_score

    async def record_activity(self, session: Session, at: float) -> None:
        with self._lock:
            session.last_active_at = max(session.last_active_at, at)

    async def bind_token(
        self, session: Session, token_id: str | None, presentable_until: float, retain_until: float
    ) -> bool:
        with self._lock:
            if token_id in session.tokens:
                return False
            session.retain_until = max(session.retain_until, retain_until)
            if len(session.tokens) >= MAX_SESSION_TOKENS:
                del session.tokens[next(iter(session.tokens))]
            session.tokens[token_id] = presentable_until
            return True

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

    def _sweep(self, now: float) -> bool:
        """Drop every session past its retention; say whether any room was made (lock held).

        Each sweep notes when the earliest retention left ends (a session added later lowers
        it), and until then a full store refuses at once instead of scanning again: one pass
        over the store per retention that ends, not one per session opened while it is full.
        """
        if now < self._next_sweep:
            return False
        expired, next_sweep = [], math.inf
        for key, session in self._sessions.items():
            if session.retain_until <= now:
                expired.append(key)
            elif session.retain_until < next_sweep:
                next_sweep = session.retain_until
        for key in expired:
            subject = self._sessions.pop(key).binding[:2]
            self._held[subject] -= 1
            if not self._held[subject]:
                del self._held[subject]
        self._next_sweep = next_sweep
        return bool(expired)
