"""Revocations that outlive any one session record: by token, subject, client, and session id.

Token, subject and client revocations are checked on every call with a handful of dict
lookups (none at all while nothing is revoked). Each may carry an end time; a permanent one
lasts until `restore` lifts it. A subject, client or token id revoked without an issuer is
revoked under every issuer (a ``jti`` is unique only within its issuer). Revoked session ids
are kept too, and checked whenever a session would be opened, so a revoked session can never
come back, even after its record left the session store: for good, or, for a key only one
token can present, until that token can no longer be (its session's ``retain_until``), so the
ids of sessions keyed by short-lived tokens do not pile up.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from mcp_guard.model import Principal
from mcp_guard.reasons import ReasonCode

__all__ = ["Revocations"]

_Key = tuple[str | None, str]


class Revocations:
    """Token, subject and client revocations. ``active`` is false while none is in force:
    revocations whose end has passed are dropped by the next check after it."""

    def __init__(self) -> None:
        self._sessions: dict[str, float] = {}
        self._next_session_lapse = math.inf
        self._tokens: dict[_Key, float] = {}
        self._subjects: dict[_Key, float] = {}
        self._clients: dict[_Key, float] = {}
        self._lock = threading.Lock()
        self._next_lapse = math.inf
        self.active = False

    def revoke_session(self, session_id: str, *, until: float = math.inf, now: float = -math.inf) -> None:
        """Revoke a session id until ``until``, when no credential can present its key any more
        (for good by default); revoked ids whose time has passed at ``now`` are let go."""
        with self._lock:
            if now >= self._next_session_lapse:
                for lapsed in [key for key, end in self._sessions.items() if end <= now]:
                    del self._sessions[lapsed]
                self._next_session_lapse = min(self._sessions.values(), default=math.inf)
            self._sessions[session_id] = max(self._sessions.get(session_id, until), until)
            self._next_session_lapse = min(self._next_session_lapse, until)

    def session_revoked(self, session_id: str) -> bool:
        return session_id in self._sessions

    def revoke_token(self, token_id: str, *, issuer: str | None = None, until: float = math.inf) -> None:
        """Revoke by ``jti`` or by token fingerprint (`token_fingerprint`). ``issuer`` and
        ``until`` are named: an end time taken for an issuer would revoke nothing."""
        self._revoke(self._tokens, (issuer, token_id), until)

    def revoke_subject(self, subject: str, *, issuer: str | None = None, until: float = math.inf) -> None:
        self._revoke(self._subjects, (issuer, subject), until)

    def revoke_client(self, client_id: str, *, issuer: str | None = None, until: float = math.inf) -> None:
        self._revoke(self._clients, (issuer, client_id), until)

    def _revoke(self, table: dict[Any, float], key: object, until: float) -> None:
        """Revoke ``key`` until ``until`` at least: a shorter revocation never cuts a longer one
        short (only `restore` lifts one)."""
        with self._lock:
            table[key] = max(table.get(key, until), until)
            self._next_lapse = min(self._next_lapse, until)
            self.active = True

    def restore(
        self,
        *,
        now: float | None = None,
        token_id: str | None = None,
        subject: str | None = None,
        client_id: str | None = None,
        issuer: str | None = None,
    ) -> float | None:
        """Lift the revocation of the target named by the same arguments, however many
        revocations of it were merged; return when it would have ended (None: there was none
        in force at ``now``, the current time unless given, as one that has run out is not)."""
        with self._lock:
            lifted = None
            if token_id is not None:
                lifted = self._tokens.pop((issuer, token_id), None)
            if subject is not None:
                lifted = self._subjects.pop((issuer, subject), None)
            if client_id is not None:
                lifted = self._clients.pop((issuer, client_id), None)
            self._settle()
            return lifted if _active(lifted, time.time() if now is None else now) else None

    def check(self, principal: Principal, now: float) -> ReasonCode | None:
        """The reason ``principal`` is revoked at ``now``, or None."""
        if now >= self._next_lapse:
            self._drop_lapsed(now)
        tokens = self._tokens
        if tokens:  # by jti and by fingerprint, each under its issuer or every issuer
            for token_id in (principal.token_id, principal.token_hash):
                if token_id is not None and (
                    _active(tokens.get((principal.issuer, token_id)), now) or _active(tokens.get((None, token_id)), now)
                ):
                    return ReasonCode.TOKEN_REVOKED
        if self._subjects and (
            _active(self._subjects.get((principal.issuer, principal.subject)), now)
            or _active(self._subjects.get((None, principal.subject)), now)
        ):
            return ReasonCode.SUBJECT_REVOKED
        if self._clients and (
            _active(self._clients.get((principal.issuer, principal.client_id)), now)
            or _active(self._clients.get((None, principal.client_id)), now)
        ):
            return ReasonCode.CLIENT_REVOKED
        return None

    def _drop_lapsed(self, now: float) -> None:
        with self._lock:
            for table in (self._tokens, self._subjects, self._clients):
                for key in [key for key, until in table.items() if until <= now]:
                    del table[key]
            self._settle()

    def _settle(self) -> None:
        """Recompute ``active`` and the next end time (lock held)."""
        tables = (self._tokens, self._subjects, self._clients)
        self._next_lapse = min((until for table in tables for until in table.values()), default=math.inf)
        self.active = any(tables)


def _active(until: float | None, now: float) -> bool:
    return until is not None and now < until
