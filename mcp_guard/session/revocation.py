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

import heapq
import itertools
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
    revocations whose end has passed are dropped by the next check after it.

    Their ends wait in a heap, so letting the lapsed ones go costs a step per revocation
    dropped, not a scan of all of them each time one lapses."""

    def __init__(self) -> None:
        self._sessions: dict[str, float] = {}
        self._tokens: dict[_Key, float] = {}
        self._subjects: dict[_Key, float] = {}
        self._clients: dict[_Key, float] = {}
        self._tables: tuple[dict[Any, float], ...] = (self._sessions, self._tokens, self._subjects, self._clients)
        self._ends: list[tuple[float, int, int, Any]] = []
        """(end, order, table number, key) of every revocation that ends, stale once lifted or
        lengthened; the order breaks ties, so keys (of different types) are never compared."""
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._next_lapse = math.inf
        self.active = False
        self.made = 0
        """How many revocations were made: a call decided while one was made is checked again."""

    def revoke_session(self, session_id: str, *, until: float = math.inf, now: float = -math.inf) -> bool:
        """Revoke a session id until ``until``, when no credential can present its key any more
        (for good by default); revoked ids whose time has passed at ``now`` are let go. True when
        the id was not revoked before (exactly one of racing callers sees it)."""
        if now >= self._next_lapse:
            self._drop_lapsed(now)
        return self._revoke(0, session_id, until)

    def session_revoked(self, session_id: str) -> bool:
        return session_id in self._sessions

    def revoke_token(self, token_id: str, *, issuer: str | None = None, until: float = math.inf) -> None:
        """Revoke by ``jti`` or by token fingerprint (`token_fingerprint`). ``issuer`` and
        ``until`` are named: an end time taken for an issuer would revoke nothing."""
        self._revoke(1, (issuer, token_id), until)

    def revoke_subject(self, subject: str, *, issuer: str | None = None, until: float = math.inf) -> None:
        self._revoke(2, (issuer, subject), until)

    def revoke_client(self, client_id: str, *, issuer: str | None = None, until: float = math.inf) -> None:
        self._revoke(3, (issuer, client_id), until)

    def _revoke(self, table_number: int, key: Any, until: float) -> bool:
        """Revoke ``key`` until ``until`` at least: a shorter revocation never cuts a longer one
        short (only `restore` lifts one). True when ``key`` was not revoked before."""
        with self._lock:
            table = self._tables[table_number]
            before = table.get(key)
            until = table[key] = until if before is None else max(before, until)
            if until < math.inf and until != before:  # a new end: the heap holds one entry per end
                heapq.heappush(self._ends, (until, next(self._order), table_number, key))
                self._next_lapse = min(self._next_lapse, until)
                if len(self._ends) > 2 * sum(map(len, self._tables)) + 64:  # mostly ends lifted or lengthened
                    self._rebuild_ends()
            self.active = any(self._tables[1:])
            self.made += 1
            return before is None

    def _rebuild_ends(self) -> None:
        """The heap of ends again from the revocations in force, so ends that were lifted or
        lengthened since (re-revoking with a ttl, over and over) do not pile up. Under the lock."""
        self._ends = [
            (until, next(self._order), number, key)
            for number, table in enumerate(self._tables)
            for key, until in table.items()
            if until < math.inf
        ]
        heapq.heapify(self._ends)

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
            self.active = any(self._tables[1:])
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
        """Let go of every revocation whose end has passed at ``now``; an entry in the heap
        whose revocation was lifted or lengthened since is passed over."""
        with self._lock:
            ends = self._ends
            while ends and ends[0][0] <= now:
                until, _, table_number, key = heapq.heappop(ends)
                table = self._tables[table_number]
                if table.get(key) == until:
                    del table[key]
            self._next_lapse = ends[0][0] if ends else math.inf
            self.active = any(self._tables[1:])


def _active(until: float | None, now: float) -> bool:
    return until is not None and now < until
