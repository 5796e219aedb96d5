"""JWT access tokens by RFC 9068, verified strictly, on joserfc.

Order matters: everything that can be refused without cryptography is refused first (size,
shape, strict base64url, strict JSON without duplicate keys, the header's ``alg``, ``typ``,
``crit`` and key-carrying members, an exact issuer match). Only then is the issuer's key looked
up in its JWKS and the signature checked, and only the verified payload is trusted.
Each refusal carries its own reason code.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from cachetools import FIFOCache
from joserfc.errors import JoseError
from joserfc.jwk import Key, RSAKey
from joserfc.jws import JWSRegistry
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcp_guard.clock import read_clock
from mcp_guard.errors import Refused
from mcp_guard.identity.access_token import fingerprint_of, token_digest
from mcp_guard.identity.claims import (
    audience_of,
    check_times,
    check_unbound,
    json_object,
    scopes_claimed,
    string_claim,
    valid_until,
)
from mcp_guard.identity.delegation import DEPTH_LIMIT, MAX_DELEGATION_DEPTH, actor_chain
from mcp_guard.identity.flight import Flight
from mcp_guard.identity.jwks import SIGNING_ALGORITHMS, JWKSCache
from mcp_guard.identity.jws_form import MAX_TOKEN_BYTES, high_s, segment_bytes, spelled_canonically, with_low_s
from mcp_guard.identity.rfc8414 import check_fetchable, metadata_endpoint
from mcp_guard.memo import peek, remember
from mcp_guard.model import Principal
from mcp_guard.reasons import ReasonCode

__all__ = ["MAX_TOKEN_BYTES", "JWTVerifier", "TrustedIssuer"]

logger = logging.getLogger("mcp_guard")

_new = tuple.__new__  # builds the cached record without the NamedTuple's Python-level __new__

DISCOVERY_RETRY = 30.0
"""Seconds after a failed metadata lookup before an issuer's metadata is asked for again."""

_KEY_CARRYING = frozenset({"jku", "jwk", "x5u", "x5c"})
_DEFAULT_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")


class TrustedIssuer(BaseModel):
    """One authorization server whose access tokens this resource server accepts.

    ``audience`` is this server's canonical resource URI (RFC 8707): a token's ``aud`` must
    contain it. ``jwks_uri`` is where the keys are; without it, it is discovered from the
    issuer's OAuth or OpenID metadata. ``token_types`` are the accepted ``typ`` values (RFC 9068
    asks for ``at+jwt``; list ``jwt`` only for a provider that cannot do better).
    ``required_claims`` can be narrowed for providers that omit some. ``accept_scp`` allows the
    non-standard ``scp`` claim; a token carrying both ``scope`` and ``scp`` is refused anyway.
    A token bound to a key or certificate (a ``cnf`` claim: DPoP, RFC 9449; mutual TLS, RFC
    8705) is refused, since this server cannot check the binding and a stolen one would pass as
    a bearer token; ``accept_bound_tokens`` accepts it where something in front of the server
    checks the binding (a proxy verifying the client certificate against ``cnf``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "Ed25519")
    token_types: tuple[str, ...] = ("at+jwt",)
    required_claims: tuple[str, ...] = _DEFAULT_CLAIMS
    accept_scp: bool = False
    accept_bound_tokens: bool = False
    leeway: float = Field(default=30.0, ge=0, le=300)
    max_token_age: float | None = Field(default=24 * 3600.0, gt=0)
    max_delegation_depth: int = Field(default=MAX_DELEGATION_DEPTH, ge=0, le=DEPTH_LIMIT)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [alg for alg in algorithms if alg not in SIGNING_ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"algorithms must be among {sorted(SIGNING_ALGORITHMS)}, not {unknown or '[]'}")
        return algorithms

    @field_validator("token_types")
    @classmethod
    def _normalised_types(cls, token_types: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_media_type(value) for value in token_types)

    @field_validator("required_claims")
    @classmethod
    def _issuer_and_subject_always(cls, claims: tuple[str, ...]) -> tuple[str, ...]:
        missing = {"iss", "sub", "exp"} - set(claims)
        if missing:
            raise ValueError(f"required_claims must include {sorted(missing)}: sessions bind to them")
        return claims

    @field_validator("jwks_uri")
    @classmethod
    def _https_unless_loopback(cls, uri: str | None) -> str | None:
        if uri is not None:
            check_fetchable(uri)
        return uri


class JWTVerifier:
    """Verifies JWT access tokens from a set of trusted issuers into `Principal` values.

    Verified principals are cached by SHA-256 of the token until they expire, so a token seen
    before costs one hash and one lookup (its expiry is still checked on every call). A cached
    verification counts only while the issuer's keys are fresh: past ``max_age`` they are
    fetched again, and a key the issuer withdrew takes its tokens with it.
    """

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        jwks: JWKSCache | None = None,
        clock: Callable[[], float] = time.time,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        cache_size: int = 10_000,
    ) -> None:
        self.issuers: Mapping[str, TrustedIssuer] = MappingProxyType({i.issuer: i for i in issuers})
        if not self.issuers:
            raise ValueError("trust at least one issuer")
        self.jwks = jwks if jwks is not None else JWKSCache()
        self.clock = clock
        self.max_token_bytes = max_token_bytes
        self._verified: FIFOCache[bytes, _Verified] = FIFOCache(maxsize=cache_size)
        self._jwks_uris: dict[str, str] = {i.issuer: i.jwks_uri for i in self.issuers.values() if i.jwks_uri}
        self._discovery = _Discovery()
        self._lock = threading.Lock()
        self._headers: dict[str, _Header] = {}
        self._forgotten = 0

    async def verify(self, token: str) -> Principal:
        """The principal a valid access token stands for; raises `Refused` with the reason otherwise.

        A token verified before is answered from the cache while it is within its time limits
        and its issuer's keys are unchanged and fresh; otherwise it is verified afresh.
        """
        if not isinstance(token, str) or len(token) > self.max_token_bytes:
            raise Refused(ReasonCode.TOKEN_TOO_LARGE if isinstance(token, str) else ReasonCode.TOKEN_MALFORMED)
        digest = token_digest(token)
        now = read_clock(self.clock)
        cached = peek(self._verified, digest)
        if cached is not None and now <= cached.until and self.jwks.current(cached.jwks_uri, cached.generation):
            return cached.principal
        forgotten = self._forgotten
        verified = await self._verify(token, digest, now)
        with self._lock:
            if self._forgotten == forgotten:  # not a verification begun before `forget_tokens`
                self._verified[digest] = verified
        return verified.principal

    def forget_tokens(self) -> None:
        """Drop every cached verification and key (after a key compromise, say): each token
        is verified afresh, against keys fetched afresh."""
        with self._lock:
            self._verified.clear()
            self._forgotten += 1
        self.jwks.forget()

    async def _verify(self, token: str, digest: bytes, now: float) -> _Verified:
        header, claims, signing_input, signature = _parts(token, self._headers)
        if header.refusal is not None:
            raise Refused(*header.refusal)  # a fresh exception: a remembered one would grow its traceback
        issuer = claims.get("iss")
        trusted = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if trusted is None:
            raise Refused(ReasonCode.ISSUER_UNTRUSTED)
        alg = header.alg
        if alg not in trusted.algorithms:
            raise Refused(ReasonCode.ALGORITHM_FORBIDDEN)
        if header.typ not in trusted.token_types:
            raise Refused(ReasonCode.TOKEN_TYPE_INVALID)
        jwks_uri = await self._jwks_uri(trusted)
        key, generation = await self.jwks.key(jwks_uri, header.kid, alg)
        model = JWSRegistry.algorithms[alg]
        try:
            model.check_key(key)
            valid = _full_length(key, signature) and model.verify(signing_input, signature, key)
        except (JoseError, ValueError):
            valid = False
        if not valid:
            raise Refused(ReasonCode.SIGNATURE_INVALID)
        if high_s(alg, signature):  # fingerprinted as its low-s spelling, as `token_fingerprint` has it
            digest = token_digest(with_low_s(signing_input, alg, signature))  # the cache keeps the raw digest
        fingerprint = fingerprint_of(digest)
        principal = _principal(trusted, claims, now, fingerprint)  # the signature covers exactly these bytes
        until = valid_until(claims, trusted.leeway, trusted.max_token_age)
        return _new(_Verified, (principal, until, jwks_uri, generation))

    async def _jwks_uri(self, trusted: TrustedIssuer) -> str:
        """The issuer's JWKS URI: configured, or discovered from its metadata (RFC 8414).

        Discovery runs once at a time per issuer, and after a failure not again for
        `DISCOVERY_RETRY` seconds, so tokens naming a trusted issuer cannot drive fetches.
        """
        uri = self._jwks_uris.get(trusted.issuer)
        if uri is None:
            uri = await self._discovery.run(
                trusted.issuer, lambda: metadata_endpoint(trusted.issuer, "jwks_uri", ReasonCode.KEYS_UNAVAILABLE)
            )
            self._jwks_uris[trusted.issuer] = uri
        return uri


class _Header(NamedTuple):
    """What verification needs of a JWS header, and why the header alone refuses the token."""

    alg: str
    kid: str | None
    typ: str | None
    """The ``typ`` member compared the RFC 7515 way (lowercase, ``application/`` dropped)."""
    refusal: tuple[str, str | None] | None
    """The reason code and message of the first rule the header breaks."""


def _header(members: Mapping[str, Any]) -> _Header:
    """Read a parsed header: its algorithm, key id and type, or the first rule it breaks."""
    alg, kid, typ = members.get("alg"), members.get("kid"), members.get("typ")
    refusal: tuple[str, str | None] | None = None
    if not isinstance(alg, str) or alg not in SIGNING_ALGORITHMS:
        refusal = (ReasonCode.ALGORITHM_FORBIDDEN, None)
    elif _KEY_CARRYING & members.keys():
        refusal = (ReasonCode.HEADER_FORBIDDEN, None)
    elif "crit" in members:
        refusal = (ReasonCode.CRIT_UNSUPPORTED, None)
    elif kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
        refusal = (ReasonCode.TOKEN_MALFORMED, "The token header's 'kid' must be a short string.")
    return _Header(
        alg if isinstance(alg, str) else "",
        kid if isinstance(kid, str) else None,
        _media_type(typ) if isinstance(typ, str) else None,
        refusal,
    )


class _Verified(NamedTuple):
    """A verification, cached: good until ``until``, and while the JWKS is fresh and at ``generation``."""

    principal: Principal
    until: float
    jwks_uri: str
    generation: int


class _Discovery:
    """One metadata lookup in flight per issuer, its outcome shared, and a pause after a failure."""

    def __init__(self) -> None:
        self._in_flight: dict[str, _Lookup] = {}
        self._failed_at: dict[str, float] = {}

    async def run(self, issuer: str, lookup: Callable[[], Awaitable[str]]) -> str:
        while (waiting := self._in_flight.get(issuer)) is not None:
            if waiting.abandoned:  # its event loop is gone: it will never land
                if self._in_flight.get(issuer) is waiting:
                    del self._in_flight[issuer]
                continue
            await waiting.landed()
            if waiting.uri is not None:
                return waiting.uri  # otherwise it failed (paused below) or was cancelled (ask again)
        if time.monotonic() - self._failed_at.get(issuer, -math.inf) < DISCOVERY_RETRY:
            raise Refused(ReasonCode.KEYS_UNAVAILABLE)
        asked = self._in_flight[issuer] = _Lookup()
        try:
            asked.uri = await lookup()
            return asked.uri
        except Exception as error:
            self._failed_at[issuer] = time.monotonic()
            if isinstance(error, Refused):
                raise
            logger.warning("mcp-guard: the metadata of issuer %s could not be read: %s", issuer, error)
            raise Refused(ReasonCode.KEYS_UNAVAILABLE) from None
        finally:
            if self._in_flight.get(issuer) is asked:
                del self._in_flight[issuer]
            asked.land()


class _Lookup(Flight):
    """A metadata lookup in flight: the JWKS URI it found, once it landed."""

    __slots__ = ("uri",)

    def __init__(self) -> None:
        super().__init__()
        self.uri: str | None = None


def _full_length(key: Key, signature: bytes) -> bool:
    """Whether an RSA signature is as long as the key's modulus, as RFC 8017 defines it.

    OpenSSL also verifies a PSS signature with its leading zero bytes left off: a second
    spelling of the same token, which would have a fingerprint of its own.
    """
    if not isinstance(key, RSAKey):
        return True
    return len(signature) == (key.raw_value.key_size + 7) // 8


def _principal(trusted: TrustedIssuer, claims: Mapping[str, Any], now: float, fingerprint: str) -> Principal:
    check_unbound(claims, trusted.accept_bound_tokens)
    for name in trusted.required_claims:
        if claims.get(name) is None:
            raise Refused(ReasonCode.CLAIM_MISSING, f"The token lacks the '{name}' claim this server requires.")
    exp = check_times(claims, now, trusted.leeway, trusted.max_token_age)
    audience = audience_of(claims.get("aud"))
    if trusted.audience not in audience:
        raise Refused(ReasonCode.AUDIENCE_MISMATCH)
    subject = string_claim(claims, "sub")
    required = "client_id" in trusted.required_claims  # then it must name a client, not be empty
    client_id = string_claim(claims, "client_id", default=None if required else "")
    token_id = string_claim(claims, "jti") if claims.get("jti") is not None else None
    return Principal(
        issuer=trusted.issuer,
        subject=subject,
        client_id=client_id,
        scopes=scopes_claimed(claims, accept_scp=trusted.accept_scp),
        audience=audience,
        expires_at=exp,
        token_id=token_id,
        token_hash=fingerprint,
        actor_chain=actor_chain(claims.get("act"), trusted.max_delegation_depth),
        claims=MappingProxyType(claims),  # parsed for this token alone: nothing else holds it
    )


def _parts(token: str, headers: dict[str, _Header]) -> tuple[_Header, dict[str, Any], bytes, bytes]:
    """Header, claims, signing input and signature of a compact JWS, parsed strictly, once.

    Nothing here is trusted until the signature over the signing input verifies. An issuer
    signs every token with one of a few headers, so each header read is remembered in
    ``headers`` (bounded) under its encoded form.
    """
    if not token.isascii():
        raise Refused(ReasonCode.TOKEN_MALFORMED)
    parts = token.split(".")
    if len(parts) != 3:
        raise Refused(ReasonCode.TOKEN_MALFORMED)
    header = headers.get(parts[0])
    try:
        if header is None:
            header = remember(headers, parts[0], _header(json_object(_b64url(parts[0]))), _HEADERS_LIMIT)
        claims = json_object(_b64url(parts[1]))
    except ValueError:
        raise Refused(ReasonCode.TOKEN_MALFORMED) from None
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64url(parts[2])


_HEADERS_LIMIT = 256


def _b64url(segment: str) -> bytes:
    """Strict unpadded base64url, in its one canonical spelling (see `jws_form`)."""
    try:
        data = segment_bytes(segment)
    except ValueError:
        raise Refused(ReasonCode.TOKEN_MALFORMED) from None
    if not spelled_canonically(segment):
        raise Refused(ReasonCode.TOKEN_MALFORMED, "A token segment sets unused base64url bits: encode it canonically.")
    return data


def _media_type(value: str) -> str:
    """``typ`` compared the RFC 7515 way: case-insensitively, with ``application/`` implied."""
    lowered = value.lower()
    return lowered.removeprefix("application/")
