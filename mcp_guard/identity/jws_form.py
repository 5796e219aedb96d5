"""One spelling per signed token, so whoever holds a token cannot vary its fingerprint.

A compact JWS can be respelled without the signer's key: the last base64url character of a
segment can carry low bits that decoders ignore, and an ECDSA signature ``(r, s)`` verifies as
``(r, n - s)`` as well. Each spelling hashes differently, so anything keyed on a token's hash
(sessions without ``sid``, revocation by fingerprint, per-session limits) would take it for a
new token. `canonical` maps every spelling to one: each segment re-encoded, and an ECDSA
signature given its low ``s``.
"""

from __future__ import annotations

import base64
import binascii
import string

from mcp_guard.identity.claims import json_object
from mcp_guard.memo import remember

__all__ = ["MAX_TOKEN_BYTES", "canonical", "high_s", "low_s", "segment_bytes", "spelled_canonically", "with_low_s"]

_CURVE_ORDERS: dict[str, tuple[int, int]] = {
    "ES256": (32, 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    "ES384": (
        48,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ),
    "ES512": (
        66,
        0x01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409,
    ),
}
"""Each ECDSA JWS algorithm: the byte size of ``r`` and ``s``, and the order ``n`` of its curve."""

MAX_TOKEN_BYTES = 8192
"""Longest token accepted; anything longer is refused before any parsing or cryptography."""

_ALGORITHMS_LIMIT = 256
_REMEMBERED_HEADER_CHARS = 1024
_algorithms: dict[str, str] = {}
"""The ``alg`` of each encoded header seen, remembered: an issuer uses a handful of headers."""


def high_s(alg: str, signature: bytes) -> bool:
    """Whether ``signature`` is an ``alg`` ECDSA signature whose ``s`` is the upper of its two
    forms (an ``s`` of ``n`` or more is no signature at all, and is left alone)."""
    curve = _CURVE_ORDERS.get(alg)
    if curve is None or len(signature) != 2 * curve[0]:
        return False
    return curve[1] // 2 < int.from_bytes(signature[curve[0] :], "big") < curve[1]


def low_s(alg: str, signature: bytes) -> bytes:
    """``signature`` with ``s`` replaced by ``n - s`` when it is a high-``s`` ECDSA signature."""
    if not high_s(alg, signature):
        return signature
    size, order = _CURVE_ORDERS[alg]
    return signature[:size] + (order - int.from_bytes(signature[size:], "big")).to_bytes(size, "big")


def segment_bytes(segment: str) -> bytes:
    """The bytes of a strict, unpadded base64url segment; `ValueError` for anything else.

    Only the base64url alphabet, never empty, no padding. A last character with stray low
    bits decodes too: `spelled_canonically` tells such a segment apart.
    """
    if not segment or len(segment) % 4 == 1 or "=" in segment or "+" in segment or "/" in segment:
        raise ValueError("not unpadded base64url")
    try:  # strict mode refuses any character outside the (translated) alphabet
        standard = segment.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(segment) % 4)
        return binascii.a2b_base64(standard, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not unpadded base64url") from None


def spelled_canonically(segment: str) -> bool:
    """Whether a base64url segment leaves the unused low bits of its last character clear."""
    return segment[-1:] in _CANONICAL_LAST[len(segment) % 4]


_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_CANONICAL_LAST = {0: _ALPHABET, 1: frozenset(), 2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
"""The characters a segment may end with, by its length modulo 4: 4 or 2 unused bits must be zero."""


def with_low_s(signing_input: bytes, alg: str, signature: bytes) -> str:
    """The canonical token for canonically spelled segments: ``signing_input`` and the signature
    given its low ``s`` (the quick form of `canonical`, for a verifier that has both at hand)."""
    return f"{signing_input.decode('ascii')}.{_encoded(low_s(alg, signature))}"


def canonical(token: str) -> str:
    """The one spelling of a compact JWS; any other token (opaque, malformed), and one already
    spelled so, is returned as it is (the same object).

    Total: it never raises, whatever the string (refused tokens are fingerprinted too).
    RSA signatures are left as they are: a PSS signature with a leading zero byte also
    verifies without it, which only a verifier that knows the key's size can refuse
    (`JWTVerifier` does).
    """
    parts = token.split(".")
    if len(parts) != 3:
        return token
    try:
        alg = _algorithms.get(parts[0])
        if alg is None:
            alg = _algorithm(segment_bytes(parts[0]))
            if len(parts[0]) <= _REMEMBERED_HEADER_CHARS:  # a refused token's header may be of any size
                remember(_algorithms, parts[0], alg, _ALGORITHMS_LIMIT)
        signature = segment_bytes(parts[2])
        if not high_s(alg, signature) and all(spelled_canonically(part) for part in parts):
            return token
        header, claims = segment_bytes(parts[0]), segment_bytes(parts[1])
    except ValueError:
        return token
    return ".".join(_encoded(segment) for segment in (header, claims, low_s(alg, signature)))


def _algorithm(header: bytes) -> str:
    try:
        alg = json_object(header).get("alg")
    except ValueError:  # not a strict JSON object (nested too deeply included): no algorithm
        return ""
    return alg if isinstance(alg, str) else ""


def _encoded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
