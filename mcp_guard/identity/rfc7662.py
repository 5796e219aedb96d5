"""Opaque access tokens by RFC 7662 token introspection, asked of the authorization server.

The call is authenticated as this resource server by authlib's OAuth 2.0 client authentication
(``client_secret_basic`` or ``client_secret_post``), streamed so that the answer is read no
further than 64 KiB, and bounded in time as a whole. Only a literal JSON ``true`` for
``active`` counts: ``"true"``, ``1`` or a missing member do not.
``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` are still checked when the answer carries them,
and the scope is parsed strictly. A ``token_type``, when given, must say a bearer access token
(a refresh token is refused), and a token bound to a key or certificate (``cnf``) is refused
as a JWT is (see `TrustedIssuer`). A subject is required, as sessions bind to it: ``sub``, or for
a client-credentials token without one, the ``client_id`` (as RFC 9068 section 2.2 has it).

An answer is cached by a digest of the token no longer than ``min(cache_ttl, exp)`` (the
leeway lets a token pass the time checks, not keep the server's answer longer); an inactive
answer is not cached at all. Concurrent calls with a token not in the cache share one
question to the server, and its answer or refusal; at most ``max_questions`` (64) are under
way at a time. A timeout, an HTTP error or a malformed
answer (parsed as strictly as a JWT: no duplicate members) denies the call.

RFC 7662 leaves ``aud`` optional, but MCP asks a resource server to check that a token was
issued for it: an answer without ``aud`` is refused while the issuer's ``required_claims``
hold ``aud`` (the default). Leave ``aud`` out of them only for an authorization server that
answers for this resource alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlencode

import anyio
import httpx2
from authlib.integrations.httpx_client import OAuth2ClientAuth
from cachetools import FIFOCache

from mcp_guard.clock import read_clock
from mcp_guard.errors import Refused
from mcp_guard.identity.access_token import token_digest, token_fingerprint
from mcp_guard.identity.claims import (
    audience_of,
    check_times,
    check_unbound,
    json_object,
    scopes_claimed,
    string_claim,
    valid_until,
)
from mcp_guard.identity.delegation import actor_chain
from mcp_guard.identity.flight import Flight
from mcp_guard.identity.jwks import capped_body, tls_context
from mcp_guard.identity.rfc8414 import check_fetchable, metadata_endpoint
from mcp_guard.identity.rfc9068 import MAX_TOKEN_BYTES, TrustedIssuer
from mcp_guard.memo import peek
from mcp_guard.model import Principal
from mcp_guard.reasons import ReasonCode

__all__ = ["IntrospectionVerifier"]

logger = logging.getLogger("mcp_guard")

MAX_ANSWER_BYTES = 64 * 1024

_ACCESS_TOKEN_TYPES = frozenset({"bearer", "access_token"})
"""``token_type`` values that mean a bearer access token: the RFC 6749 type, or the token type
hint some servers answer with. A refresh token, or a proof-of-possession token this server
cannot check the binding of, is refused."""


_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
"""How the resource server authenticates to the introspection endpoint (RFC 7662 asks that it
does: ``none`` is not offered)."""


class IntrospectionVerifier:
    """Verifies opaque tokens by asking ``endpoint`` (RFC 7662) of the ``trusted`` issuer.

    The resource server authenticates with ``client_id`` and ``client_secret``
    (``client_secret_basic`` unless ``auth_method`` says otherwise). At most ``max_questions``
    tokens are asked about at a time; a call with yet another unknown token is refused
    (``introspection_failed``) rather than queued, so a flood of made-up tokens holds neither
    the event loop nor an unbounded number of connections to the server. Tokens answered
    before keep being served from the cache; a token last answered active is asked about again,
    once its answer runs out, in ``max_questions`` more places that made-up tokens cannot take.
    A token never seen may be refused while a flood lasts.
    """

    def __init__(
        self,
        trusted: TrustedIssuer,
        *,
        endpoint: str,
        client_id: str,
        client_secret: str,
        auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic",
        timeout: float = 5.0,
        cache_ttl: float = 60.0,
        cache_size: int = 10_000,
        max_questions: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_fetchable(endpoint)
        if auth_method not in _AUTH_METHODS:  # authlib would take any text, and fail at every question
            raise ValueError(f"auth_method must be one of {', '.join(_AUTH_METHODS)}, not {auth_method!r}")
        if max_questions < 1:
            raise ValueError(f"max_questions must be at least 1, not {max_questions!r}")
        self.trusted = trusted
        self.issuers: Mapping[str, TrustedIssuer] = MappingProxyType({trusted.issuer: trusted})
        self.endpoint = endpoint
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_method = auth_method
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.max_questions = max_questions
        self.clock = clock
        self._answers: FIFOCache[bytes, tuple[Principal, float, float]] = FIFOCache(maxsize=cache_size)
        """Answers by token digest: the principal, and until when it is served, on the wall clock
        (``exp``, the maximum age, ``cache_ttl``) and on a monotonic one (``cache_ttl``, however
        the wall clock is stepped meanwhile)."""
        self._lock = threading.Lock()
        self._asking: dict[tuple[bytes, int], _Question] = {}
        self._active: FIFOCache[bytes, None] = FIFOCache(maxsize=cache_size)
        """Digests of tokens the server last answered active: asked about again (their answer
        ran out of the cache), they have ``max_questions`` more places, which made-up tokens
        cannot fill."""
        self._forgotten = 0
        """How often `forget_tokens` ran: an answer asked for before the latest one is not kept."""

    @classmethod
    async def discover(
        cls, trusted: TrustedIssuer, *, client_id: str, client_secret: str, **options: Any
    ) -> IntrospectionVerifier:
        """A verifier for the introspection endpoint named in the issuer's metadata (RFC 8414)."""
        endpoint = await metadata_endpoint(trusted.issuer, "introspection_endpoint", ReasonCode.INTROSPECTION_FAILED)
        return cls(trusted, endpoint=endpoint, client_id=client_id, client_secret=client_secret, **options)

    async def verify(self, token: str) -> Principal:
        """The principal an active token stands for; raises `Refused` with the reason otherwise."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise Refused(ReasonCode.TOKEN_MALFORMED)
        digest = token_digest(token)
        now = read_clock(self.clock)
        cached = peek(self._answers, digest)
        if cached is not None and now < cached[1] and time.monotonic() < cached[2]:
            return cached[0]
        key = (digest, self._forgotten)  # a question asked before `forget_tokens` is not joined
        while (asked := self._asking.get(key)) is not None:  # another call is asking: share its outcome
            if asked.abandoned:  # its event loop is gone: it will never land, and frees its place
                self._let_go(key, asked)
                continue
            await asked.landed()
            if asked.principal is not None:
                return asked.principal
            if asked.refusal is not None:
                raise Refused(*asked.refusal)
        limit = self.max_questions * 2 if digest in self._active else self.max_questions
        if len(self._asking) >= limit:
            for left, question in list(self._asking.items()):  # questions whose loop is gone hold no place
                if question.abandoned:
                    self._let_go(left, question)
            if len(self._asking) >= limit:
                raise Refused(
                    ReasonCode.INTROSPECTION_FAILED, "Too many tokens are being checked at once: retry in a moment."
                )
        asked = self._asking[key] = _Question()  # one that ended without an outcome (cancelled) is asked anew
        try:
            asked.principal = await self._verify(token, digest, now, key[1])
            return asked.principal
        except Refused as refusal:
            asked.refusal = (refusal.code, refusal.message)
            if refusal.code != ReasonCode.INTROSPECTION_FAILED:  # an answer, not a failure to get one
                with self._lock:
                    self._active.pop(digest, None)  # no longer active: no longer past the limit
            raise
        finally:
            self._let_go(key, asked)
            asked.land()

    def _let_go(self, key: tuple[bytes, int], asked: _Question) -> None:
        """Remove ``asked`` from the questions under way, unless another has taken its key (in
        one step: threads may let go of the same question at once)."""
        with self._lock:
            if self._asking.get(key) is asked:
                self._asking.pop(key, None)

    def forget_tokens(self) -> None:
        """Drop every cached answer, so the next call of each token asks the server again; a
        question already under way is neither joined nor kept (it still counts against
        ``max_questions`` until it ends)."""
        with self._lock:
            self._answers.clear()
            self._forgotten += 1

    async def _verify(self, token: str, digest: bytes, now: float, forgotten: int) -> Principal:
        answer = await self._introspect(token)
        principal = _principal(self.trusted, answer, now, token_fingerprint(token, digest))
        until = min(now + self.cache_ttl, valid_until(answer, 0.0, self.trusted.max_token_age))  # ask again at exp
        ask_again_at = time.monotonic() + self.cache_ttl  # a wall clock stepped back must not stretch the ttl
        with self._lock:
            self._active[digest] = None
            if self._forgotten == forgotten:
                self._answers[digest] = (principal, until, ask_again_at)
        return principal

    async def _introspect(self, token: str) -> Mapping[str, Any]:
        """Ask the endpoint about ``token``: the whole exchange bounded by ``timeout``, the answer
        read no further than `MAX_ANSWER_BYTES`."""
        form = urlencode({"token": token, "token_type_hint": "access_token"}).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        try:
            with anyio.fail_after(self.timeout):
                auth = OAuth2ClientAuth(self._client_id, self._client_secret, self._auth_method)
                async with (
                    httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False, verify=tls_context()) as client,
                    client.stream("POST", self.endpoint, content=form, headers=headers, auth=auth) as response,
                ):
                    status = response.status_code
                    body = await capped_body(response, MAX_ANSWER_BYTES) if status == 200 else b""
        except (httpx2.HTTPError, OSError) as error:
            logger.warning("mcp-guard: introspection at %s failed: %s", self.endpoint, type(error).__name__)
            raise Refused(ReasonCode.INTROSPECTION_FAILED) from None
        if status != 200:
            logger.warning("mcp-guard: introspection at %s answered %s", self.endpoint, status)
            raise Refused(ReasonCode.INTROSPECTION_FAILED)
        try:
            return json_object(body)
        except ValueError:
            raise Refused(ReasonCode.INTROSPECTION_FAILED) from None


class _Question(Flight):
    """One introspection in flight, and its outcome for the calls that waited on it."""

    __slots__ = ("principal", "refusal")

    def __init__(self) -> None:
        super().__init__()
        self.principal: Principal | None = None
        self.refusal: tuple[str, str] | None = None


def _principal(trusted: TrustedIssuer, answer: Mapping[str, Any], now: float, fingerprint: str) -> Principal:
    if answer.get("active") is not True:
        raise Refused(ReasonCode.TOKEN_INACTIVE)
    token_type = answer.get("token_type")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() not in _ACCESS_TOKEN_TYPES):
        raise Refused(ReasonCode.TOKEN_TYPE_INVALID, "The authorization server says this is not a bearer access token.")
    check_unbound(answer, trusted.accept_bound_tokens)
    issuer = answer.get("iss", trusted.issuer)
    if issuer != trusted.issuer:
        raise Refused(ReasonCode.ISSUER_UNTRUSTED)
    if "aud" not in answer and "aud" in trusted.required_claims:
        raise Refused(ReasonCode.CLAIM_MISSING, "The introspection answer does not say whom the token is for (aud).")
    audience = audience_of(answer.get("aud", trusted.audience))
    if trusted.audience not in audience:
        raise Refused(ReasonCode.AUDIENCE_MISMATCH)
    exp = check_times(answer, now, trusted.leeway, trusted.max_token_age)
    client_id = string_claim(answer, "client_id", default="")
    # With no resource owner (client credentials), the client is the subject (RFC 9068, 2.2).
    subject = answer.get("sub", client_id or None)
    if not isinstance(subject, str) or not subject:
        raise Refused(ReasonCode.SUBJECT_MISSING)
    scopes = scopes_claimed(answer, accept_scp=trusted.accept_scp)
    token_id = answer.get("jti")
    return Principal(
        issuer=trusted.issuer,
        subject=subject,
        client_id=client_id,
        scopes=scopes,
        audience=audience,
        expires_at=exp,
        token_id=token_id if isinstance(token_id, str) and token_id else None,
        token_hash=fingerprint,
        actor_chain=actor_chain(answer.get("act"), trusted.max_delegation_depth),
        claims=MappingProxyType(dict(answer)),
    )
