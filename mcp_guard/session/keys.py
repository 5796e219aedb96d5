"""Which governed session a call belongs to.

Legacy MCP (2025-11-25 and earlier) has sessions: the transport's ``Mcp-Session-Id``, or for
stdio and in-process connections an id minted per connection. MCP 2026-07-28 is stateless, so
the key comes from the credential: a configured token claim (``sid`` by default, which
authorization servers set per login session, shared by every client signed in with it) with
the issuer and client it came from, else the token itself (its fingerprint), else the
principal. Keys are prefixed by their source so the sources never collide.
"""

from __future__ import annotations

from mcp_guard.errors import Refused
from mcp_guard.memo import remember
from mcp_guard.model import Principal
from mcp_guard.reasons import ReasonCode

__all__ = ["MAX_SESSION_KEY_LENGTH", "SessionKeys", "named_by_one_token"]

MAX_SESSION_KEY_LENGTH = 256

_TOKEN_KEY = "token:"


def named_by_one_token(session_id: str) -> bool:
    """Whether ``session_id`` is one token's own key (its fingerprint): once that token can no
    longer be presented, nothing can present the key. Any other key (a transport's session id,
    a claim a refreshed token carries again, the principal) may come back."""
    return session_id.startswith(_TOKEN_KEY)


class SessionKeys:
    """Derives the session key for a call; ``claim=None`` turns the token-claim source off.

    A credential-derived key depends only on the token, so it is memoised by the token's
    fingerprint (bounded): a warm call pays one dict lookup.
    """

    __slots__ = ("_by_token", "claim")

    _MEMO_LIMIT = 10_000

    def __init__(self, *, claim: str | None = "sid") -> None:
        self.claim = claim
        self._by_token: dict[str, str] = {}

    def key(self, principal: Principal, transport_session: str | None) -> str:
        if transport_session is not None:
            return "mcp:" + _bounded(transport_session)
        token_hash = principal.token_hash
        if token_hash is None:
            return self._from_credential(principal)
        key = self._by_token.get(token_hash)
        if key is None:
            key = remember(self._by_token, token_hash, self._from_credential(principal), self._MEMO_LIMIT)
        return key

    def _from_credential(self, principal: Principal) -> str:
        if self.claim is not None:
            value = principal.claims.get(self.claim)
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise Refused(
                        ReasonCode.SESSION_UNAVAILABLE,
                        f"The token's {self.claim!r} claim must be a non-empty string.",
                    )
                issuer, client_id = principal.issuer, principal.client_id  # a login serves many clients
                return f"claim:{len(issuer)}:{issuer}{len(client_id)}:{client_id}:{_bounded(value)}"
        if principal.token_hash is not None:
            return _TOKEN_KEY + principal.token_hash
        issuer, subject, client_id = principal.binding
        return f"principal:{len(issuer)}:{issuer}{len(subject)}:{subject}{client_id}"


def _bounded(value: str) -> str:
    if len(value) > MAX_SESSION_KEY_LENGTH:
        raise Refused(ReasonCode.SESSION_UNAVAILABLE, "The session identifier is too long.")
    return value
