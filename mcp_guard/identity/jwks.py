"""Signing keys from an issuer's JWKS (RFC 7517), fetched, cached, and refreshed with restraint.

Keys only ever come from the JWKS document at the issuer's configured (or discovered)
``jwks_uri``: never from a token's ``jku``, ``x5u``, ``x5c`` or ``jwk`` header. A token naming
an unknown ``kid`` makes the cache refresh at most once per ``min_refresh_interval``, however many
requests ask at once: one fetch is in flight and the others wait for its result. When the
endpoint is down, keys fetched before keep working; when none of them matches, the token is
refused (fail closed).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from cachetools import LRUCache
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey

from mcp_guard.errors import Refused
from mcp_guard.identity.claims import json_object
from mcp_guard.identity.flight import Flight, run_to_the_end
from mcp_guard.reasons import ReasonCode

__all__ = ["MAX_JWKS_BYTES", "MAX_KEYS", "MIN_RSA_BITS", "JWKSCache", "capped_body", "fetch_json", "tls_context"]

logger = logging.getLogger("mcp_guard")

MAX_JWKS_BYTES = 256 * 1024
"""Largest JWKS document accepted."""

MAX_KEYS = 64
"""Most keys kept from one JWKS document; a larger document is refused."""

Fetch = Callable[[str], Awaitable[Mapping[str, Any]]]

_KEY_TYPES: dict[str, tuple[type[Key], str | None]] = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), (RSAKey, None)),
    "ES256": (ECKey, "P-256"),
    "ES384": (ECKey, "P-384"),
    "ES512": (ECKey, "P-521"),
    "EdDSA": (OKPKey, "Ed25519"),
    "Ed25519": (OKPKey, "Ed25519"),
}
"""Each accepted signing algorithm, and the key type (and curve) it must be used with."""

SIGNING_ALGORITHMS = frozenset(_KEY_TYPES)
"""The asymmetric JWS algorithms a JWKS key may verify. No ``none``, no HMAC."""


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context every outbound client here uses (httpx2's default), built once: building
    it loads the CA store, about 20 ms of CPU on the event loop, which a client per request
    (a JWKS fetch, an introspection for each unknown token) would otherwise pay each time."""
    return httpx2.create_ssl_context()


async def fetch_json(url: str, *, timeout: float = 5.0) -> Mapping[str, Any]:
    """GET a JSON object over HTTP(S): no redirects, bounded size and time, fail loudly.

    ``timeout`` bounds the whole exchange, not each read: a server answering a byte at a time
    cannot hold a caller for longer (`TimeoutError`, an `OSError`).
    """
    with anyio.fail_after(timeout):
        async with (
            httpx2.AsyncClient(timeout=timeout, follow_redirects=False, verify=tls_context()) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise OSError(f"GET {url} answered {response.status_code}")
            body = await capped_body(response, MAX_JWKS_BYTES)
    return json_object(body)


async def capped_body(response: httpx2.Response, limit: int) -> bytes:
    """The body of a streamed response, read no further than ``limit`` bytes (`OSError` past it)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk)
        if len(body) > limit:
            raise OSError(f"{response.request.method} {response.request.url} returned more than {limit} bytes")
    return bytes(body)


MIN_RSA_BITS = 2048
"""Smallest RSA modulus a key may have (RFC 7518 section 3.3): a smaller key can be factored."""

Keys = dict[str, tuple[Key, ...]]
"""A JWKS's signing keys by ``kid``: one ``kid`` may name keys of different types (RFC 7517 4.5)."""


@dataclass
class _KeySetEntry:
    keys: Keys = field(default_factory=dict)
    fetched_at: float = -float("inf")
    attempted_at: float = -float("inf")
    in_flight: Flight | None = None
    generation: int = 0
    identities: frozenset[str] = frozenset()

    def fetching(self) -> bool:
        """Whether a fetch is under way; one whose event loop was closed under it never lands,
        so it is dropped, and counts as no attempt."""
        flight = self.in_flight
        if flight is not None and flight.abandoned:
            self.in_flight, self.attempted_at = None, -math.inf
            return False
        return flight is not None


class JWKSCache:
    """Keys per JWKS URI, bounded (``max_sets`` URIs), refreshed when stale or on an unknown ``kid``.

    ``max_age`` is how long fetched keys count as fresh; ``min_refresh_interval`` how often at
    most the endpoint is asked again. While the endpoint fails, keys fetched before keep
    working, but no longer than ``max_stale`` after they were fetched: a key the issuer has
    withdrawn cannot outlive an outage for good. ``fetch`` is the HTTP GET (replaceable for
    other transports; it must bound its own time, as `fetch_json` does, since a fetch runs to
    its end); ``clock`` a monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        fetch: Fetch = fetch_json,
        max_age: float = 3600.0,
        min_refresh_interval: float = 30.0,
        max_stale: float = 24 * 3600.0,
        max_sets: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_stale < max_age:
            raise ValueError(f"max_stale ({max_stale}) cannot be shorter than max_age ({max_age})")
        self._fetch = fetch
        self.max_age = max_age
        self.max_stale = max_stale
        self.min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._sets: LRUCache[str, _KeySetEntry] = LRUCache(maxsize=max_sets)
        self._generations = itertools.count(1)
        self.fetches = 0
        """How many fetches were attempted (for operators and tests)."""

    def current(self, jwks_uri: str, generation: int) -> bool:
        """Whether a verification made with the keys at ``jwks_uri`` at ``generation`` still
        stands: they are unchanged and fresh (within ``max_age``), so a key the issuer withdrew
        takes its tokens with it at the next fetch. Stale keys still count while fetching them
        again is not yet due (a fetch in flight, or one tried within ``min_refresh_interval``),
        up to ``max_stale``: verifying again then could only give the same answer."""
        entry = self._sets.get(jwks_uri)
        if entry is None or entry.generation != generation:
            return False
        now = self._now()
        age = now - entry.fetched_at
        return age <= self.max_age or (
            age <= self.max_stale and (entry.fetching() or now - entry.attempted_at < self.min_refresh_interval)
        )

    async def key(self, jwks_uri: str, kid: str | None, alg: str) -> tuple[Key, int]:
        """The key to verify a token signed with ``alg`` under ``kid``, and its key set's generation.

        Refuses when there is no such key. Keys past ``max_age`` are refreshed by the caller
        that finds them so; callers arriving during that refresh are served the cached key
        when it matches, so a slow endpoint delays one call, not all of them.
        """
        entry = self._sets.get(jwks_uri)
        if entry is None:
            entry = self._sets.setdefault(jwks_uri, _KeySetEntry())
        key = _pick(entry.keys, kid, alg)
        stale = self._now() - entry.fetched_at > self.max_age
        if key is None or (stale and not entry.fetching()):  # a stale key serves while it is refreshed
            await self._refresh(jwks_uri, entry)
            key = _pick(entry.keys, kid, alg)
        if not entry.keys or self._now() - entry.fetched_at > self.max_stale:
            raise Refused(ReasonCode.KEYS_UNAVAILABLE)
        if key is None:
            raise Refused(ReasonCode.KEY_UNKNOWN)
        return key, entry.generation

    def _now(self) -> float:
        """The monotonic clock's reading; `Refused` (``keys_unavailable``) when it is not a finite
        number, which would pass no freshness comparison, and so never refresh nor expire keys."""
        now = self._clock()
        if not -math.inf < now < math.inf:
            raise Refused(ReasonCode.KEYS_UNAVAILABLE, "The key cache's clock gave no usable time.")
        return now

    def forget(self) -> None:
        """Drop every cached key set (after a key compromise, say): the next call fetches afresh."""
        self._sets.clear()

    async def _refresh(self, jwks_uri: str, entry: _KeySetEntry) -> None:
        """Fetch at most once per ``min_refresh_interval``; callers arriving meanwhile share it.

        The fetch runs to its end however the call that started it is cancelled
        (`run_to_the_end`): cut short, it would use up the interval's attempt and send its
        waiters off with the old keys, so a client dropping its own requests could keep a
        withdrawn key in use.
        """
        while entry.fetching() and (flight := entry.in_flight) is not None:
            await flight.landed()
        if self._now() - entry.attempted_at < self.min_refresh_interval:
            return  # fetched or tried just now, by this call or another
        flight, before = Flight(), entry.attempted_at
        entry.in_flight, entry.attempted_at = flight, self._now()
        self.fetches += 1
        await run_to_the_end(self._fetch_into(jwks_uri, entry, flight, before))

    async def _fetch_into(self, jwks_uri: str, entry: _KeySetEntry, flight: Flight, before: float) -> None:
        """Fetch the key set at ``jwks_uri`` into ``entry`` (keeping its keys when that fails),
        then land ``flight``. Cancelled (only its loop's shutdown reaches it), it was no attempt:
        ``attempted_at`` goes back to ``before``."""
        try:
            keys = _import_keys(await self._fetch(jwks_uri))
            identities = frozenset(
                f"{kid} {key.thumbprint()} {key.get('alg')}" for kid, found in keys.items() for key in found
            )
            fetched_at = self._now()  # before anything changes: the entry takes all of the fetch or none
            if identities != entry.identities:  # a key added, withdrawn, or given another algorithm
                entry.identities = identities
                entry.generation = next(self._generations)  # never one an evicted entry had
            entry.keys, entry.fetched_at = keys, fetched_at
        except (OSError, ValueError, httpx2.HTTPError, JoseError) as error:
            logger.warning(
                "mcp-guard: JWKS %s could not be refreshed (%s); keeping %d cached keys",
                jwks_uri,
                error,
                len(entry.keys),
            )
        except BaseException as error:
            if not isinstance(error, Exception):
                entry.attempted_at = before
            raise
        finally:
            if entry.in_flight is flight:
                entry.in_flight = None
            flight.land()


def _import_keys(document: Mapping[str, Any]) -> Keys:
    """The usable signing keys of a JWKS document by ``kid``.

    Entries that are not signature verification keys (by ``use`` or ``key_ops``), entries
    carrying any private member (a private key published by mistake: the primes alone rebuild
    it), RSA keys shorter than `MIN_RSA_BITS`, and entries that do not parse are skipped, one
    by one. A document with no usable key at all is an error, so it never replaces keys that worked.
    """
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise ValueError("a JWKS document needs a 'keys' array")
    if len(keys) > MAX_KEYS:
        raise ValueError(f"a JWKS document with more than {MAX_KEYS} keys")
    imported: dict[str, list[Key]] = {}
    for index, data in enumerate(keys):
        if not isinstance(data, dict) or not _for_verifying(data):
            continue
        if _PRIVATE_MEMBERS & data.keys():
            logger.warning("mcp-guard: JWKS entry %d skipped: it publishes private key material", index)
            continue
        try:
            key = KeySet.import_key_set({"keys": [data]}).keys[0]
        except (JoseError, ValueError, TypeError, KeyError) as error:
            logger.warning("mcp-guard: JWKS entry %d skipped: %s", index, type(error).__name__)
            continue
        if isinstance(key, RSAKey) and key.raw_value.key_size < MIN_RSA_BITS:
            logger.warning("mcp-guard: JWKS entry %d skipped: an RSA key of %d bits", index, key.raw_value.key_size)
            continue
        kid = data.get("kid")
        imported.setdefault(kid if isinstance(kid, str) else f"#{index}", []).append(key)
    if not imported:
        raise ValueError("the JWKS document holds no usable signing key")
    return {kid: tuple(found) for kid, found in imported.items()}


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
"""JWK members holding private or symmetric key material (RFC 7518 sections 6.2.2, 6.3.2, 6.4)."""


def _for_verifying(data: Mapping[str, Any]) -> bool:
    """Whether a JWK may verify signatures: ``use`` is ``sig`` and ``key_ops`` holds ``verify``,
    each when present (RFC 7517 sections 4.2 and 4.3)."""
    operations = data.get("key_ops", ["verify"])
    return data.get("use", "sig") == "sig" and isinstance(operations, list) and "verify" in operations


def _pick(keys: Keys, kid: str | None, alg: str) -> Key | None:
    """The one key named ``kid`` that suits ``alg``; with no ``kid``, the one key that suits it.

    Two different keys that both would is ambiguous, and neither is used; one key listed twice
    (with and without its ``alg``, say) is one key.
    """
    named = keys.get(kid, ()) if kid is not None else [key for found in keys.values() for key in found]
    suitable = [key for key in named if _suits(key, alg)]
    if len(suitable) > 1 and len({key.thumbprint() for key in suitable}) == 1:
        return suitable[0]
    return suitable[0] if len(suitable) == 1 else None


def _suits(key: Key, alg: str) -> bool:
    key_type, curve = _KEY_TYPES[alg]
    if not isinstance(key, key_type):
        return False
    if curve is not None and key.get("crv") != curve:
        return False
    declared = key.get("alg")
    return declared is None or declared == alg
