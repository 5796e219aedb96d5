"""One signed token, one fingerprint: respelled tokens are refused or fingerprinted as the original.

Whoever holds a token can respell it without the signer's key (stray base64url bits, the
other ECDSA ``s``). Each spelling must not look like a new token to sessions and revocation.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.server.auth.provider import AccessToken

from authority import RESOURCE, Authority
from mcp_guard import AccessTokenIdentifier, Guard, GuardTokenVerifier, Refused, ToolSpec, token_fingerprint
from mcp_guard.identity.access_token import fingerprint_of, refused_token_fingerprint, token_digest
from mcp_guard.identity.jws_form import (
    _CURVE_ORDERS,
    MAX_TOKEN_BYTES,
    _algorithms,
    canonical,
    high_s,
    low_s,
    segment_bytes,
    spelled_canonically,
)
from mcp_guard.identity.rfc9068 import JWTVerifier, TrustedIssuer
from mcp_guard.reasons import ReasonCode

pytestmark = pytest.mark.anyio

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64_json(value: object, raw: bytes | None = None) -> str:
    data = raw if raw is not None else json.dumps(value).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verifier_for(authority: Authority) -> JWTVerifier:
    return JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)])


def respellings(token: str) -> list[str]:
    """Every token that differs from ``token`` only in unused bits of a segment's last character."""
    parts = token.split(".")
    found = []
    for index, segment in enumerate(parts):
        for char in ALPHABET:
            other = segment[:-1] + char
            if other != segment and segment_bytes(other) == segment_bytes(segment):
                found.append(".".join([*parts[:index], other, *parts[index + 1 :]]))
    return found


def flipped(alg: str, signature: bytes) -> bytes:
    """The other ECDSA signature of the same message: ``(r, n - s)``."""
    size, order = _CURVE_ORDERS[alg]
    return signature[:size] + (order - int.from_bytes(signature[size:], "big")).to_bytes(size, "big")


def with_signature(token: str, signature: bytes) -> str:
    header, claims, _ = token.split(".")
    return f"{header}.{claims}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


async def test_a_respelled_segment_is_refused(authority: Authority) -> None:
    verifier = verifier_for(authority)
    for alg, kid in [("RS256", "rsa-1"), ("ES256", "ec-1"), ("Ed25519", "ed-1")]:
        token = authority.mint(alg=alg, kid=kid)
        await verifier.verify(token)
        variants = respellings(token)
        assert variants  # a 2048-bit RSA, a P-256 and an Ed25519 signature all leave unused bits
        for variant in variants:
            with pytest.raises(Refused) as refused:
                await verifier.verify(variant)
            assert refused.value.code == ReasonCode.TOKEN_MALFORMED
            assert "base64url" in refused.value.message


@pytest.mark.parametrize(
    ("alg", "curve", "digest"),
    [
        ("ES256", ec.SECP256R1(), hashes.SHA256()),
        ("ES384", ec.SECP384R1(), hashes.SHA384()),
        ("ES512", ec.SECP521R1(), hashes.SHA512()),
    ],
)
def test_both_ecdsa_forms_verify_and_map_to_the_low_one(alg: str, curve: ec.EllipticCurve, digest: Any) -> None:
    key = ec.generate_private_key(curve)
    size = _CURVE_ORDERS[alg][0]
    seen = set()
    for index in range(16):
        message = f"message {index}".encode()
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(digest)))
        raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        other = flipped(alg, raw)
        r2, s2 = int.from_bytes(other[:size], "big"), int.from_bytes(other[size:], "big")
        key.public_key().verify(encode_dss_signature(r2, s2), message, ec.ECDSA(digest))  # the curve order is right
        assert high_s(alg, raw) != high_s(alg, other)
        assert low_s(alg, raw) == low_s(alg, other) and not high_s(alg, low_s(alg, raw))
        seen.add(high_s(alg, raw))
    assert seen == {True, False}  # signers produce both forms


def test_other_signatures_and_other_tokens_are_left_as_they_are() -> None:
    assert low_s("RS256", b"x" * 64) == b"x" * 64
    assert low_s("ES256", b"\xff" * 63) == b"\xff" * 63  # not an ES256 signature's size
    for token in ["opaque-token", "a.b", "a.b.c.d", "a.b!.c", "é.b.c", "x.y.z"]:
        assert canonical(token) == token
    assert spelled_canonically("AA") and not spelled_canonically("AB")
    assert spelled_canonically("AAA") and not spelled_canonically("AAB")
    assert spelled_canonically("AAAB")


async def test_both_ecdsa_forms_of_a_token_are_one_token(authority: Authority) -> None:
    verifier = verifier_for(authority)
    token = authority.mint(alg="ES256", kid="ec-1")
    other = with_signature(token, flipped("ES256", segment_bytes(token.split(".")[2])))
    first, second = await verifier.verify(token), await verifier.verify(other)
    assert first.token_hash == second.token_hash == token_fingerprint(token) == token_fingerprint(other)
    assert canonical(token) == canonical(other)
    spelled = canonical(token)
    assert canonical(spelled) is spelled  # a token spelled so already is handed back, not rebuilt


async def test_any_spelling_of_a_token_has_its_fingerprint(authority: Authority) -> None:
    """A verifier less strict than mcp-guard's may accept respellings: the identifier sees one token."""
    token = authority.mint(alg="ES256", kid="ec-1")
    spellings = [token, with_signature(token, flipped("ES256", segment_bytes(token.split(".")[2])))]
    spellings += [variant for spelling in list(spellings) for variant in respellings(spelling)]
    identifier = AccessTokenIdentifier()
    claims = {"iss": authority.issuer, "sub": "agent-7"}
    hashes_seen = {
        identifier.identify(
            AccessToken(token=spelling, client_id="agent-app", scopes=["notes:read"], claims=claims)
        ).token_hash
        for spelling in spellings
    }
    assert len(spellings) > 10 and hashes_seen == {token_fingerprint(token)}


async def test_revoking_one_spelling_revokes_the_other(authority: Authority) -> None:
    """MCP 2026-07-28 without ``sid``: the session and the revocation follow the token, not its spelling."""
    guard = Guard()
    guard.declare(ToolSpec(name="read_note", scopes=frozenset({"notes:read"})))
    tokens = GuardTokenVerifier(verifier_for(authority), guard)
    token = authority.mint(alg="ES256", kid="ec-1")
    other = with_signature(token, flipped("ES256", segment_bytes(token.split(".")[2])))
    first = await guard.authorize("read_note", {}, await tokens.verify_token(token), protocol_version="2026-07-28")
    second = await guard.authorize("read_note", {}, await tokens.verify_token(other), protocol_version="2026-07-28")
    assert first.decision.allowed and second.decision.allowed
    assert first.request is not None and second.request is not None
    assert first.request.session.id == second.request.session.id
    await guard.revoke(token_id=token_fingerprint(token))
    denied = await guard.authorize("read_note", {}, await tokens.verify_token(other), protocol_version="2026-07-28")
    assert not denied.decision.allowed and denied.decision.reason.code == ReasonCode.TOKEN_REVOKED


async def test_a_pss_signature_without_its_leading_zero_byte_is_refused(authority: Authority) -> None:
    """OpenSSL verifies a PSS signature shorter than the modulus: that would be a second spelling."""
    verifier = verifier_for(authority)
    token = next(
        t for t in (authority.mint(alg="PS256") for _ in range(5000)) if segment_bytes(t.split(".")[2])[0] == 0
    )
    await verifier.verify(token)
    shortened = with_signature(token, segment_bytes(token.split(".")[2])[1:])
    with pytest.raises(Refused) as refused:
        await verifier.verify(shortened)
    assert refused.value.code == ReasonCode.SIGNATURE_INVALID


BAD_ES256 = b64_json({"alg": "ES256", "typ": "at+jwt"}) + ".e30." + "_" * 86  # s is past the curve order
NESTED = b64_json(None, raw=b"[" * 3000) + ".e30.c2ln"


@pytest.mark.parametrize("token", [BAD_ES256, NESTED, "a" * 9000, ".", "..", "a.b.c"])
async def test_fingerprinting_a_refused_token_never_fails(authority: Authority, token: str) -> None:
    assert len(token_fingerprint(token)) == 32 and canonical(token)
    assert await GuardTokenVerifier(verifier_for(authority), Guard()).verify_token(token) is None


@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_-]{0,90}\.[A-Za-z0-9_-]{0,90}\.[A-Za-z0-9_-]{0,180}"))
@settings(max_examples=300, deadline=None)
def test_canonical_is_total(token: str) -> None:
    assert isinstance(canonical(token), str)
    assert canonical(canonical(token)) == canonical(token)


async def test_a_token_too_long_to_accept_is_recorded_without_parsing_it(authority: Authority) -> None:
    """Refused before any parsing, it is not parsed for its refusal's record either: respelling
    a megabyte token (decoding, parsing its header) took 50 ms of an unauthenticated request.
    One another verifier accepted keeps one fingerprint for every spelling, as revocation by
    fingerprint and token-keyed sessions need."""
    token = authority.mint(alg="ES256", kid="ec-1", padding="x" * MAX_TOKEN_BYTES)
    respelled = with_signature(token, flipped("ES256", segment_bytes(token.split(".")[2])))
    assert token_fingerprint(respelled) == token_fingerprint(token)
    assert refused_token_fingerprint(respelled) == fingerprint_of(token_digest(respelled))
    ordinary = authority.mint()
    assert refused_token_fingerprint(ordinary) == token_fingerprint(ordinary)


def test_fingerprinting_refused_tokens_keeps_no_large_header_in_memory() -> None:
    """Refused bearer strings are fingerprinted for the audit record: a huge header is not kept."""
    huge = b64_json({"alg": "ES256", "pad": "x" * 100_000})
    for index in range(3):
        token_fingerprint(f"{huge}.{b64_json({'n': index})}.c2ln")
    assert all(len(header) <= 1024 for header in _algorithms)
