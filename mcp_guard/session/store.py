"""The `SessionStore` protocol: where governed sessions live between calls.

Async so a shared store (Redis) fits the same shape as the embedded one. Stores own every
mutation of a session, so counters stay consistent however many tasks or threads call at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol

from mcp_guard.model import Session, SessionState, ToolSpec

__all__ = ["EndResult", "SessionStore"]

EndResult = Literal["ended", "already_ended", "missing"]


class SessionStore(Protocol):
    """Where governed sessions live (`MemorySessionStore` in process). Async, so a store shared
    by replicas fits; each method is one step, safe to call from concurrent tasks and threads."""

    async def get(self, session_id: str) -> Session | None:
        """The session with this id, or None if there is none (or it was evicted)."""
        ...

    async def add(self, session: Session) -> tuple[Session, bool]:
        """Store a new session unless one with its id exists.

        Returns the stored session and whether it is the one just added: two first calls
        racing on one key both get the same session back, and only one of them opened it.
        """
        ...

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
        """Count one call on the session and return its risk score after adding ``risk``.

        An allowed call also restarts the idle timer from ``at`` (never back: a call decided
        slowly may be recorded after a later one) and enters the history: ``tool`` (its name
        and tags) and the (rule id, target) pairs in ``targets``.
        """
        ...

    async def record_activity(self, session: Session, at: float) -> None:
        """Restart the session's idle timer from ``at`` (never back): a call admitted on it
        ran until then, and the time a call runs is activity, not idleness."""
        ...

    async def bind_token(
        self, session: Session, token_id: str | None, presentable_until: float, retain_until: float
    ) -> bool:
        """Add ``token_id`` to the session's bound tokens, with ``presentable_until``, the first
        moment that token can no longer be presented; True when it was not among them.

        The session is then retained at least until ``retain_until``, when that token can no
        longer present its key. Exactly one of racing callers with the same new token sees True.
        """
        ...

    async def end(self, session_id: str, state: SessionState, reason: str) -> EndResult:
        """Move an active session to ``state`` (revoked or expired) for ``reason``.

        Says whether this call ended it, it had ended before (keeping its first state and
        reason), or there is no such session. Exactly one of racing callers sees "ended".
        """
        ...
