"""Principals from the MCP SDK's `AccessToken`, the result of whatever `TokenVerifier` the server uses.

The verifier has already checked the token's signature or asked the authorization server.
This stage insists on the facts the guard binds sessions to (issuer, subject, client id),
re-reads the scope strictly, and caches the result by a digest of the token so a warm call
costs one hash and one lookup.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol, cast

from cachetools import FIFOCache
from mcp.server.auth.provider import AccessToken

from mcp_guard.errors import Refused
from mcp_guard.identity.claims import audience_of, scope_of
from mcp_guard.identity.delegation import DEPTH_LIMIT, actor_chain
from mcp_guard.identity.jws_form import MAX_TOKEN_BYTES, canonical
from mcp_guard.memo import peek, remember
from mcp_guard.model import Principal
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeError, scope_set

__all__ = ["AccessTokenIdentifier", "Identifier", "refused_token_fingerprint", "token_fingerprint"]


class Identifier(Protocol):
    """Turns the credential presented with a call into a `Principal`, or raises `Refused`."""

    def identify(self, credential: AccessToken | None) -> Principal: ...


def token_fingerprint(token: str, digest: bytes | None = None) -> str:
    """A short SHA-256 fingerprint of a bearer token (128 bits, hex): safe to log and to key on.

    Every spelling of one signed token has the same fingerprint (`jws_form.canonical`). A
    caller that has the token's `token_digest` at hand passes it as ``digest``: most tokens are
    spelled canonically already, and then it is their fingerprint's digest as well.
    """
    spelled = canonical(token)
    return fingerprint_of(digest if spelled is token and digest is not None else token_digest(spelled))


def refused_token_fingerprint(token: str) -> str:
    """The fingerprint a refused token is recorded under: `token_fingerprint`, except that a
    token longer than `MAX_TOKEN_BYTES`, which this package's verifiers refuse unread, is hashed
    as it is rather than parsed (an unauthenticated request must not make the guard decode a
    megabyte). A token another verifier accepted keeps its spelling-proof fingerprint."""
    if len(token) > MAX_TOKEN_BYTES:
        return fingerprint_of(token_digest(token))
    return token_fingerprint(token)


def token_digest(token: str) -> bytes:
    """SHA-256 of a bearer token: what verified tokens are cached under."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def fingerprint_of(digest: bytes) -> str:
    """The fingerprint of the token whose `token_digest` is ``digest``."""
    return digest[:16].hex()


class AccessTokenIdentifier:
    """The default identifier: the SDK's `AccessToken` becomes a `Principal`.

    Refuses a missing token, and a token without issuer (``iss`` claim) or subject; a token
    naming no client binds with an empty client id.
    When the claims carry the raw ``scope`` string it is parsed with the strict RFC 6749 grammar
    and must agree with the verifier's list, so a verifier that split on odd whitespace cannot
    widen the grant.

    Principals are cached by SHA-256 of the token, bounded, oldest evicted first, and used
    only while the verified token still says the same (everything but the bearer string:
    client, subject, expiry, resource, scopes, claims, and the fields its verifier's class
    adds): a verifier that asks the authorization server again may narrow a token. A FIFO
    cache's reads do not reorder it, so they need no lock; writes take one. In front of it, a
    small map from the `AccessToken` object itself (held by weak reference, so no token is
    kept alive) answers the common case of one credential object serving many calls (stdio,
    in-process and long-lived connections) without hashing at all, while the object still says
    what it said (a verifier may narrow the object it handed over in place).
    """

    _SEEN_LIMIT = 1024

    def __init__(self, *, cache_size: int = 10_000) -> None:
        self._cache: FIFOCache[bytes, tuple[Principal, tuple[object, ...]]] = FIFOCache(maxsize=cache_size)
        self._seen: dict[int, tuple[weakref.ref[AccessToken], Principal, tuple[object, ...]]] = {}
        self._lock = threading.Lock()

    def identify(self, credential: AccessToken | None) -> Principal:
        if credential is None:
            raise Refused(ReasonCode.TOKEN_MISSING)
        said = _said(credential)
        seen = self._seen.get(id(credential))
        if seen is not None and seen[0]() is credential and _describes(seen[1], seen[2], said, credential):
            return seen[1]
        token = credential.token
        if not token:
            return principal_from_access_token(credential, None)
        digest = token_digest(token)
        cached = peek(self._cache, digest)
        if cached is None or not _describes(*cached, said, credential):  # unseen, or verified anew differently
            cached = (principal_from_access_token(credential, token_fingerprint(token, digest)), _kept(said))
            with self._lock:
                self._cache[digest] = cached
        with self._lock:
            remember(self._seen, id(credential), (weakref.ref(credential), *cached), self._SEEN_LIMIT)
        return cached[0]


_STANDARD = frozenset(AccessToken.model_fields)


def _said(token: AccessToken) -> tuple[object, ...]:
    """What ``token`` says, as it says it now, but its claims (the principal keeps its own copy
    of those): its bearer string, subject, client, expiry, resource, scopes, and the fields its
    verifier's class adds (None for the SDK's own class). Compared on every call, as a verifier
    may narrow the very object it handed over (fewer scopes, an earlier expiry), or hand over
    another with a different answer."""
    added = None if type(token) is AccessToken else {name: value for name, value in token if name not in _STANDARD}
    return (token.token, token.subject, token.client_id, token.expires_at, token.resource, token.scopes, added)


def _kept(said: tuple[object, ...]) -> tuple[object, ...]:
    """``said`` (`_said`) as kept to compare later, with its own copy of the scope list and of
    the added fields (deep where they can be copied): the verifier may change its in place. A
    field whose copy does not equal it (an object without value equality) is kept itself, so
    it still compares equal to what the credential says, by identity."""
    *facts, scopes, added = said
    if added is not None:
        original = cast(dict[str, Any], added)
        copied = _own_copy(original)
        added = {name: own if own == original[name] else original[name] for name, own in copied.items()}
    return (*facts, list(cast(list[str], scopes)), added)


def _describes(principal: Principal, kept: tuple[object, ...], said: tuple[object, ...], token: AccessToken) -> bool:
    """Whether ``principal``, built from a verification that said ``kept`` (`_kept`), stands for
    ``token``, which says ``said`` (`_said`) now: everything the credential says but its claims
    is the same, and so are its claims (compared with the principal's own copy).

    A verifier that asks the authorization server again (introspection, after its cache time)
    may hand over the same token with fewer scopes, a new expiry or another resource: it must
    not be served the principal built from the earlier answer.
    """
    return kept == said and principal.claims == (token.claims or {})


def principal_from_access_token(token: AccessToken, fingerprint: str | None) -> Principal:
    """Build a `Principal` from a verified `AccessToken`, refusing what the guard cannot bind."""
    claims: Mapping[str, Any] = token.claims or {}
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise Refused(ReasonCode.ISSUER_MISSING)
    subject = token.subject if token.subject is not None else claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Refused(ReasonCode.SUBJECT_MISSING)
    if not isinstance(token.client_id, str):
        raise Refused(ReasonCode.CLAIM_INVALID, "The access token's client id must be a string.")
    token_id = claims.get("jti")
    return Principal(
        issuer=issuer,
        subject=subject,
        client_id=token.client_id,
        scopes=_requested_scopes(token, claims),
        audience=_audience(token, claims),
        expires_at=float(token.expires_at) if token.expires_at is not None else None,
        token_id=token_id if isinstance(token_id, str) and token_id else None,
        token_hash=fingerprint,
        actor_chain=actor_chain(claims.get("act"), DEPTH_LIMIT),
        claims=MappingProxyType(_own_copy(claims)),
    )


def _own_copy(claims: Mapping[str, Any]) -> dict[str, Any]:
    """``claims`` (or other values) copied all the way down, as the verifier may change the
    token's later; only the top level when a value cannot be copied (a verifier's own object)."""
    try:
        return copy.deepcopy(dict(claims))
    except Exception:
        return dict(claims)


def _requested_scopes(token: AccessToken, claims: Mapping[str, Any]) -> frozenset[str]:
    try:
        listed = scope_set(token.scopes)
    except ScopeError as error:
        raise Refused(ReasonCode.SCOPE_MALFORMED, f"The access token's scope is invalid: {error}.") from None
    raw = claims.get("scope")
    if raw is None:
        return listed
    parsed = scope_of(raw)
    if parsed != listed:
        raise Refused(
            ReasonCode.SCOPE_MALFORMED,
            "The access token's 'scope' claim and the verified scope list disagree.",
        )
    return parsed


def _audience(token: AccessToken, claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud", token.resource)
    return audience_of(aud) if aud is not None else ()
