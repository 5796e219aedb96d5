"""RFC 9068 access tokens against a real issuer on loopback: every attack gets its own refusal."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import time
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from pydantic import ValidationError

from authority import RESOURCE, Authority, serve_authority
from mcp_guard import Refused
from mcp_guard.identity import flight
from mcp_guard.identity.claims import json_object
from mcp_guard.identity.jwks import JWKSCache, fetch_json
from mcp_guard.identity.rfc9068 import JWTVerifier, TrustedIssuer
from support import subjects_on_two_loops

pytestmark = pytest.mark.anyio


def verifier_for(authority: Authority, **options: Any) -> JWTVerifier:
    issuer = TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri, **options)
    return JWTVerifier([issuer])


@pytest.fixture
def verifier(authority: Authority) -> JWTVerifier:
    authority.jwks_down = False
    return verifier_for(authority)


async def refused(verifier: JWTVerifier, token: str) -> str:
    with pytest.raises(Refused) as raised:
        await verifier.verify(token)
    if token:
        assert token not in raised.value.message  # never echo the token
    return raised.value.code


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: str, payload: str, signature: str = "c2ln") -> str:
    return f"{b64(header)}.{b64(payload)}.{signature}"


NOT_UTF8 = b64(json.dumps({"alg": "RS256", "typ": "at+jwt"})) + "." + b64(b"\xff\xfe not utf-8") + ".c2ln"


@pytest.mark.parametrize(
    ("alg", "kid"), [("RS256", "rsa-1"), ("PS256", "rsa-1"), ("ES256", "ec-1"), ("Ed25519", "ed-1")]
)
async def test_valid_tokens_become_principals(authority: Authority, verifier: JWTVerifier, alg: str, kid: str) -> None:
    act = {"sub": "agent-b", "act": {"sub": "agent-a"}}
    principal = await verifier.verify(authority.mint(alg=alg, kid=kid, act=act, jti="j-1"))
    assert (principal.issuer, principal.subject, principal.client_id) == (authority.issuer, "agent-7", "agent-app")
    assert principal.scopes == {"notes:read", "notes:write"}
    assert principal.audience == (RESOURCE,)
    assert principal.token_id == "j-1"
    assert principal.actor_chain == ("agent-b", "agent-a")
    assert principal.token_hash is not None and len(principal.token_hash) == 32


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
async def test_the_access_token_type_in_its_spellings(authority: Authority, verifier: JWTVerifier, typ: str) -> None:
    assert (await verifier.verify(authority.mint(typ=typ))).subject == "agent-7"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_any_casing(authority: Authority, verifier: JWTVerifier, alg: str) -> None:
    header = json.dumps({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"})
    token = forged(header, json.dumps(authority.claims()), "")
    assert await refused(verifier, token + "") in ("algorithm_forbidden", "token_malformed")
    assert await refused(verifier, forged(header, json.dumps(authority.claims()))) == "algorithm_forbidden"


async def test_hs256_signed_with_the_rsa_public_key(authority: Authority, verifier: JWTVerifier) -> None:
    rsa = authority.keys["rsa-1"]
    assert isinstance(rsa, RSAKey)
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa-1', 'typ': 'at+jwt'}))}.{b64(json.dumps(authority.claims()))}"
    )
    mac = hmac.new(rsa.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    assert await refused(verifier, f"{signing_input}.{b64(mac)}") == "algorithm_forbidden"


async def test_algorithms_outside_the_issuers_allowlist(authority: Authority) -> None:
    strict = verifier_for(authority, algorithms=("ES256",))
    assert await refused(strict, authority.mint(alg="RS256")) == "algorithm_forbidden"
    assert await refused(strict, authority.mint(alg="RS512")) == "algorithm_forbidden"
    assert (await strict.verify(authority.mint(alg="ES256", kid="ec-1"))).subject == "agent-7"


async def test_a_key_of_the_wrong_type_for_the_algorithm(authority: Authority, verifier: JWTVerifier) -> None:
    header = json.dumps({"alg": "ES256", "kid": "rsa-1", "typ": "at+jwt"})  # an RSA key named for ES256
    assert await refused(verifier, forged(header, json.dumps(authority.claims()))) == "key_unknown"


@pytest.mark.parametrize("kid", ["no-such-key", "../../etc/passwd", "rsa-1\u0000", "x" * 256])
async def test_unknown_and_hostile_kids(authority: Authority, verifier: JWTVerifier, kid: str) -> None:
    assert await refused(verifier, authority.mint(kid=kid, key=authority.keys["rsa-1"])) == "key_unknown"


@pytest.mark.parametrize("kid", ["x" * 257, 7, ["rsa-1"], ""])
async def test_malformed_kids(authority: Authority, verifier: JWTVerifier, kid: Any) -> None:
    header = json.dumps({"alg": "RS256", "kid": kid, "typ": "at+jwt"})
    assert await refused(verifier, forged(header, json.dumps(authority.claims()))) == "token_malformed"


@pytest.mark.parametrize(
    "member",
    [
        {"jku": "https://evil.test/jwks"},
        {"x5u": "https://evil.test/cert"},
        {"x5c": ["MIIB"]},
        {"jwk": {"kty": "oct", "k": "c2VjcmV0"}},
    ],
)
async def test_key_carrying_headers(authority: Authority, verifier: JWTVerifier, member: dict[str, Any]) -> None:
    header = json.dumps({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt", **member})
    assert await refused(verifier, forged(header, json.dumps(authority.claims()))) == "header_forbidden"


async def test_unknown_critical_extensions(authority: Authority, verifier: JWTVerifier) -> None:
    header = json.dumps({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt", "crit": ["exp"], "exp": 1})
    assert await refused(verifier, forged(header, json.dumps(authority.claims()))) == "crit_unsupported"


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt ", "application/jwt", "id+jwt", 5])
async def test_wrong_or_missing_type(authority: Authority, verifier: JWTVerifier, typ: Any) -> None:
    header = {"alg": "RS256", "kid": "rsa-1", **({"typ": typ} if typ is not None else {})}
    token = forged(json.dumps(header), json.dumps(authority.claims()))
    assert await refused(verifier, token) == "token_type_invalid"


async def test_plain_jwt_type_only_by_explicit_configuration(authority: Authority) -> None:
    lenient = verifier_for(authority, token_types=("at+jwt", "JWT"))
    assert (await lenient.verify(authority.mint(typ="JWT"))).subject == "agent-7"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d.e",
        "a..c",
        "!!!.???.***",
        "eyJhbGciOiJSUzI1NiJ9.e30",
        forged("[1, 2]", "{}"),
        forged('{"alg": "RS256"', "{}"),
        forged('"just a string"', "{}"),
        NOT_UTF8,
        forged('{"alg": NaN}', "{}"),
        forged('{"alg": "RS256", "typ": "at+jwt"}', '{"exp": Infinity}'),
        "\u00e9" * 20,
    ],
)
async def test_malformed_and_truncated_tokens(verifier: JWTVerifier, token: str) -> None:
    assert await refused(verifier, token) == "token_malformed"


async def test_a_truncated_valid_token(authority: Authority, verifier: JWTVerifier) -> None:
    token = authority.mint()
    assert await refused(verifier, token[:-10]) == "signature_invalid"
    assert await refused(verifier, token.rsplit(".", 1)[0]) == "token_malformed"


async def test_oversized_tokens_are_refused_before_any_work(authority: Authority, verifier: JWTVerifier) -> None:
    before = authority.jwks_fetches
    assert await refused(verifier, "a" * 8193) == "token_too_large"
    assert await refused(verifier, authority.mint(padding="x" * 9000)) == "token_too_large"
    assert authority.jwks_fetches == before


async def test_duplicate_members_in_header_or_claims(authority: Authority, verifier: JWTVerifier) -> None:
    claims = json.dumps(authority.claims())
    header = '{"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt", "alg": "none"}'
    assert await refused(verifier, forged(header, claims)) == "token_malformed"
    duplicated = claims[:-1] + ', "sub": "admin"}'
    good_header = json.dumps({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"})
    signed = jws.serialize_compact(json.loads(good_header), duplicated, authority.keys["rsa-1"], algorithms=["RS256"])
    assert await refused(verifier, signed) == "token_malformed"


async def test_a_remembered_header_refuses_every_token_that_carries_it(
    authority: Authority, verifier: JWTVerifier
) -> None:
    header = json.dumps({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt", "jku": "https://evil.test/jwks"})
    refusals = []
    for _ in range(3):
        with pytest.raises(Refused) as raised:
            await verifier.verify(forged(header, json.dumps(authority.claims())))
        refusals.append(raised.value)
    assert [refusal.code for refusal in refusals] == ["header_forbidden"] * 3
    assert len({id(refusal) for refusal in refusals}) == 3  # fresh each time: no traceback keeps growing
    untrusted = forged(header, json.dumps(authority.claims(iss="https://evil.test")))
    assert await refused(verifier, untrusted) == "header_forbidden"  # the header's own rules still come first


async def test_a_header_with_a_bad_type_still_loses_to_an_untrusted_issuer_first(
    authority: Authority, verifier: JWTVerifier
) -> None:
    header = json.dumps({"alg": "RS256", "kid": "rsa-1", "typ": "id+jwt"})
    assert await refused(verifier, forged(header, json.dumps(authority.claims()))) == "token_type_invalid"
    stranger = forged(header, json.dumps(authority.claims(iss="https://evil.test")))
    assert await refused(verifier, stranger) == "issuer_untrusted"


async def test_many_distinct_headers_keep_verifying(authority: Authority, verifier: JWTVerifier) -> None:
    for index in range(600):  # beyond what is remembered: older headers are forgotten, never wrong
        header = json.dumps({"alg": "RS256", "kid": f"k{index}", "typ": "at+jwt"})
        assert await refused(verifier, forged(header, json.dumps(authority.claims()))) == "key_unknown"
    assert (await verifier.verify(authority.mint())).subject == "agent-7"


async def test_tampered_payloads_fail_the_signature(authority: Authority, verifier: JWTVerifier) -> None:
    header, _, signature = authority.mint().split(".")
    payload = b64(json.dumps(authority.claims(sub="admin")))
    assert await refused(verifier, f"{header}.{payload}.{signature}") == "signature_invalid"


@pytest.mark.parametrize(
    "issuer_suffix",
    ["/", "/x", ":443", "\u0430"],
)
async def test_issuer_look_alikes(authority: Authority, verifier: JWTVerifier, issuer_suffix: str) -> None:
    token = authority.mint(iss=authority.issuer + issuer_suffix)
    assert await refused(verifier, token) == "issuer_untrusted"
    assert await refused(verifier, authority.mint(iss=authority.issuer.upper())) == "issuer_untrusted"
    assert await refused(verifier, authority.mint(iss=None)) == "issuer_untrusted"


@pytest.mark.parametrize(
    "aud",
    [RESOURCE + "/", RESOURCE.upper(), "https://mcp.example.test", RESOURCE + "x", "https://mcp.examp1e.test/mcp", []],
)
async def test_audience_look_alikes(authority: Authority, verifier: JWTVerifier, aud: Any) -> None:
    assert await refused(verifier, authority.mint(aud=aud)) in ("audience_mismatch", "claim_invalid")


async def test_audience_lists(authority: Authority, verifier: JWTVerifier) -> None:
    assert await verifier.verify(authority.mint(aud=["https://other.test", RESOURCE]))
    assert await refused(verifier, authority.mint(aud=["https://other.test"])) == "audience_mismatch"


async def test_time_claims_on_both_sides_of_the_leeway(authority: Authority) -> None:
    now = time.time()
    clocked = JWTVerifier(
        [TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri, leeway=10)],
        clock=lambda: now,
    )
    assert await clocked.verify(authority.mint(exp=now - 10, iat=now - 100))
    assert await refused(clocked, authority.mint(exp=now - 11, iat=now - 100)) == "token_expired"
    assert await clocked.verify(authority.mint(nbf=now + 10))
    assert await refused(clocked, authority.mint(nbf=now + 11)) == "token_not_yet_valid"
    assert await refused(clocked, authority.mint(iat=now + 11)) == "token_not_yet_valid"
    assert await refused(clocked, authority.mint(iat=now - 24 * 3600 - 11, exp=now + 60)) == "token_too_old"


@pytest.mark.parametrize("claim", ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"])
async def test_missing_required_claims(authority: Authority, verifier: JWTVerifier, claim: str) -> None:
    code = await refused(verifier, authority.mint(**{claim: None}))
    assert code == ("issuer_untrusted" if claim == "iss" else "claim_missing")


async def test_required_claims_can_be_narrowed_per_issuer(authority: Authority) -> None:
    lenient = verifier_for(authority, required_claims=("iss", "sub", "exp", "aud"))
    principal = await lenient.verify(authority.mint(jti=None, client_id=None, iat=None))
    assert principal.client_id == ""
    with pytest.raises(ValueError, match="must include"):
        TrustedIssuer(issuer="https://i.test", audience=RESOURCE, required_claims=("aud",))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "1900000000"},
        {"exp": True},
        {"iat": [1]},
        {"nbf": {"at": 1}},
        {"sub": 7},
        {"sub": ""},
        {"client_id": ["a"]},
        {"client_id": ""},
        {"jti": ""},
        {"aud": 5},
        {"aud": [RESOURCE, 5]},
        {"jti": ["a"]},
        {"act": "agent-b"},
        {"act": {"client_id": "no-sub"}},
    ],
)
async def test_claims_of_the_wrong_type(authority: Authority, verifier: JWTVerifier, claims: dict[str, Any]) -> None:
    assert await refused(verifier, authority.mint(**claims)) == "claim_invalid"


@pytest.mark.parametrize(
    "scope", ["notes:read  notes:write", " notes:read", "notes:read\tx", "notes:read\u00a0x", 'a"b', 5]
)
async def test_scope_strings_with_odd_whitespace_or_characters(
    authority: Authority, verifier: JWTVerifier, scope: Any
) -> None:
    assert await refused(verifier, authority.mint(scope=scope)) == "scope_malformed"


async def test_scp_only_where_configured_and_never_with_scope(authority: Authority, verifier: JWTVerifier) -> None:
    assert await refused(verifier, authority.mint(scope=None, scp=["notes:read"])) == "scope_malformed"
    lenient = verifier_for(authority, accept_scp=True)
    assert (await lenient.verify(authority.mint(scope=None, scp=["notes:read"]))).scopes == {"notes:read"}
    assert (await lenient.verify(authority.mint(scope=None, scp="notes:read a"))).scopes == {"notes:read", "a"}
    assert await refused(lenient, authority.mint(scope=None, scp=["a b"])) == "scope_malformed"
    assert await refused(lenient, authority.mint(scp=["notes:read"])) == "scope_conflict"


async def test_a_token_bound_to_a_key_is_no_bearer_token(authority: Authority, verifier: JWTVerifier) -> None:
    """DPoP (RFC 9449) and mutual-TLS (RFC 8705) tokens carry ``cnf``: a stolen one sent as a
    bearer token must not pass where nothing checks the binding."""
    for cnf in ({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9"}):
        assert await refused(verifier, authority.mint(cnf=cnf)) == "token_bound"
        assert await verifier_for(authority, accept_bound_tokens=True).verify(authority.mint(cnf=cnf))


async def test_delegation_depth_is_capped(authority: Authority) -> None:
    shallow = verifier_for(authority, max_delegation_depth=2)
    act: dict[str, Any] = {"sub": "a1", "act": {"sub": "a2"}}
    assert (await shallow.verify(authority.mint(act=act))).actor_chain == ("a1", "a2")
    assert await refused(shallow, authority.mint(act={"sub": "a0", "act": act})) == "delegation_too_deep"


async def test_a_cached_token_still_expires(authority: Authority) -> None:
    now = [time.time()]
    clocked = JWTVerifier(
        [TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri, leeway=0)],
        clock=lambda: now[0],
    )
    token = authority.mint(exp=now[0] + 60)
    assert await clocked.verify(token)
    before = authority.jwks_fetches
    assert await clocked.verify(token)  # a cache hit: no fetch, no signature check
    assert authority.jwks_fetches == before
    now[0] += 61
    assert await refused(clocked, token) == "token_expired"


@pytest.mark.parametrize("reading", [math.nan, math.inf])
async def test_a_clock_without_a_usable_time_accepts_no_token(authority: Authority, reading: float) -> None:
    now = [time.time()]
    clocked = JWTVerifier(
        [TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)],
        clock=lambda: now[0],
    )
    seen, expired = authority.mint(exp=now[0] + 60), authority.mint(exp=now[0] - 3600, iat=now[0] - 7200)
    assert await clocked.verify(seen)
    now[0] = reading  # NaN passes every time check: an expired token would verify
    assert await refused(clocked, seen) == "guard_error"
    assert await refused(clocked, expired) == "guard_error"


@pytest.mark.parametrize("reading", [math.nan, math.inf, -math.inf])
async def test_a_key_cache_clock_without_a_usable_time_serves_no_key(authority: Authority, reading: float) -> None:
    """NaN passes no freshness comparison: keys would never be refreshed nor expire, and a key
    the issuer withdrew would verify tokens for good."""
    monotonic = [0.0]
    issuer = TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)
    verifier = JWTVerifier([issuer], jwks=JWKSCache(clock=lambda: monotonic[0]))
    seen = authority.mint()
    assert await verifier.verify(seen)
    monotonic[0] = reading
    assert await refused(verifier, seen) == "keys_unavailable"  # not even from the cache
    assert await refused(verifier, authority.mint(jti="another")) == "keys_unavailable"


async def test_a_fetch_the_clock_fails_during_changes_nothing_so_a_withdrawn_key_goes_with_the_next() -> None:
    """The withdrawal must not be half taken (the new key set's generation with the old keys),
    or the next fetch sees nothing new, and verifications made with the withdrawn key stand."""
    issuer, uri = "https://as.example.test", "https://as.example.test/jwks"
    withdrawn, kept = (RSAKey.generate_key(2048, parameters={"kid": kid}) for kid in ("k1", "k2"))
    published, readings = [withdrawn, kept], [0.0]
    fail_after_next_fetch = [False]

    async def fetch(uri: str) -> dict[str, Any]:
        if fail_after_next_fetch[0]:
            fail_after_next_fetch[0] = False
            readings.insert(0, math.nan)  # the next reading, and only that one
        return KeySet(list(published)).as_dict(private=False)

    def clock() -> float:
        return readings.pop(0) if len(readings) > 1 else readings[0]

    verifier = JWTVerifier(
        [TrustedIssuer(issuer=issuer, audience=RESOURCE, jwks_uri=uri)], jwks=JWKSCache(fetch=fetch, clock=clock)
    )

    def mint(key: RSAKey) -> str:
        now = int(time.time())
        claims = {"iss": issuer, "sub": "agent", "client_id": "app", "aud": RESOURCE, "iat": now, "exp": now + 7200}
        header = {"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}
        return jwt.encode(header, {**claims, "jti": key.kid}, key, algorithms=["RS256"])

    assert await verifier.verify(mint(withdrawn))
    published.remove(withdrawn)
    readings[0], fail_after_next_fetch[0] = 3601.0, True  # stale: the next call fetches, and the clock fails then
    assert await refused(verifier, mint(kept)) == "keys_unavailable"
    assert await verifier.verify(mint(withdrawn))  # the keys it had, while a fetch was tried just now
    for at in (3700.0, 3701.0, 7401.0):  # the next fetch is due, and then the one after
        readings[0] = at
        assert await refused(verifier, mint(withdrawn)) == "key_unknown"


async def test_one_fetch_for_a_thousand_concurrent_unknown_kids(authority: Authority) -> None:
    monotonic = [0.0]
    issuer = TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)
    verifier = JWTVerifier([issuer], jwks=JWKSCache(clock=lambda: monotonic[0]))
    assert await verifier.verify(authority.mint())  # keys cached
    monotonic[0] += 31  # past the refresh interval: one refresh is due
    fresh = RSAKey.generate_key(2048, parameters={"kid": "rotated"})
    tokens = [authority.mint(kid="rotated", key=fresh, jti=f"j{i}") for i in range(1000)]
    before = authority.jwks_fetches
    codes: list[str] = []

    async def attempt(token: str) -> None:
        try:
            await verifier.verify(token)
        except Refused as refusal:
            codes.append(refusal.code)

    async with anyio.create_task_group() as tasks:
        for token in tokens:
            tasks.start_soon(attempt, token)
    assert authority.jwks_fetches - before == 1
    assert codes == ["key_unknown"] * 1000


@pytest.mark.parametrize("cancelled_by", ["anyio", "asyncio"])
async def test_a_key_fetch_cut_short_leaves_no_caller_with_the_old_keys(
    authority: Authority, cancelled_by: str
) -> None:
    """Cancelled midway, the first caller's fetch used up the refresh interval and sent its
    waiters off with the old keys; a client dropping its own requests kept a key from changing."""
    monotonic, gate = [0.0], [anyio.Event()]

    async def fetch_when_let(uri: str) -> Any:
        await gate[0].wait()
        return await fetch_json(uri)

    cache = JWKSCache(fetch=fetch_when_let, clock=lambda: monotonic[0])
    verifier = JWTVerifier(
        [TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)], jwks=cache
    )
    gate[0].set()
    assert await verifier.verify(authority.mint())  # keys cached
    monotonic[0] += 31  # a refresh is due
    gate[0] = anyio.Event()
    authority.keys["rotated-in"] = RSAKey.generate_key(2048, parameters={"kid": "rotated-in"})
    try:
        rotated = authority.mint(kid="rotated-in")
        subjects: list[str] = []

        async def waiting() -> None:
            subjects.append((await verifier.verify(rotated)).subject)

        async with anyio.create_task_group() as tasks:
            first = anyio.CancelScope()

            async def fetching() -> None:
                with first:
                    await verifier.verify(rotated)

            fetcher = asyncio.get_running_loop().create_task(fetching())
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(waiting)
            tasks.start_soon(waiting)
            await anyio.wait_all_tasks_blocked()
            first.cancel() if cancelled_by == "anyio" else fetcher.cancel()
            await anyio.wait_all_tasks_blocked()
            gate[0].set()
        with contextlib.suppress(asyncio.CancelledError):
            await fetcher
        assert subjects == ["agent-7", "agent-7"]
        assert (await verifier.verify(rotated)).subject == "agent-7"
        assert cache.fetches == 2  # the cancelled call's fetch ran on: no second one was needed
        monotonic[0] += 31  # a refresh is due again; callers with an unknown kid drop out at once
        unknown = authority.mint(kid="nobody-knows", key=authority.keys["rsa-1"])
        for _ in range(10):
            dropping = asyncio.get_running_loop().create_task(verifier.verify(unknown))
            await anyio.sleep(0)
            dropping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Refused):
                await dropping
        gate[0].set()
        assert cache.fetches == 3  # one per interval, however many callers gave up
    finally:
        del authority.keys["rotated-in"]


async def test_a_fetch_failing_after_its_caller_left_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A caller that waits hears the failure itself; one that left cannot, so the log does."""
    monotonic, gate = [0.0], [anyio.Event()]

    async def failing(uri: str) -> Any:
        await gate[0].wait()
        raise RuntimeError("the issuer's endpoint exploded")

    cache = JWKSCache(fetch=failing, clock=lambda: monotonic[0])
    gate[0].set()
    with pytest.raises(RuntimeError):
        await cache.key("https://issuer.example.test/jwks", "k", "RS256")
    await anyio.sleep(0.05)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    monotonic[0] += 31
    gate[0] = anyio.Event()
    leaving = asyncio.get_running_loop().create_task(cache.key("https://issuer.example.test/jwks", "k", "RS256"))
    await anyio.wait_all_tasks_blocked()
    leaving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    gate[0].set()
    await anyio.sleep(0.05)  # the fetch fails, and its done callbacks run
    assert caplog.text.count("a fetch whose caller had left failed: RuntimeError") == 1


async def test_a_failure_that_lands_just_before_its_caller_leaves_is_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work has failed, but the caller is cancelled before it heard: nobody else will."""
    started: list[asyncio.Future[None]] = []
    spawn = asyncio.ensure_future

    def remembered(work: Any) -> Any:
        started.append(spawn(work))
        return started[-1]

    monkeypatch.setattr(flight.asyncio, "ensure_future", remembered)
    gate = asyncio.Event()

    async def failing() -> None:
        await gate.wait()
        raise OSError("endpoint down")

    caller = asyncio.get_running_loop().create_task(flight.run_to_the_end(failing()))
    await asyncio.sleep(0)
    gate.set()
    while not started[0].done():
        await asyncio.sleep(0)
    caller.cancel()  # before the shield tells it
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.05)
    assert caplog.text.count("a fetch whose caller had left failed: OSError") == 1


def test_a_fetch_left_behind_by_a_closed_event_loop_holds_no_keys_back(authority: Authority) -> None:
    """A loop stopped without cancelling its tasks (a thread's own, say) leaves its fetch
    pending for good; it had kept every later call waiting, or serving stale keys."""
    fetched: list[str] = []

    async def first_never_ends(uri: str) -> Any:
        fetched.append(uri)
        if len(fetched) == 1:
            await asyncio.sleep(3600)
        return await fetch_json(uri)

    cache = JWKSCache(fetch=first_never_ends)

    async def drop_out() -> None:
        asking = asyncio.ensure_future(cache.key(authority.jwks_uri, "rsa-1", "RS256"))
        await asyncio.sleep(0.05)  # its fetch is under way
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking

    loop = asyncio.new_event_loop()
    loop.run_until_complete(drop_out())
    loop.close()  # the fetch is left pending, never to land

    async def ask_again() -> object:
        with anyio.fail_after(10):
            return (await cache.key(authority.jwks_uri, "rsa-1", "RS256"))[0]

    assert anyio.run(ask_again) is not None
    assert len(fetched) == 2


@pytest.mark.parametrize("discovered", [False, True])
def test_a_verifier_shared_by_threads_each_on_its_own_loop_wakes_every_waiter(
    authority: Authority, discovered: bool
) -> None:
    """An event belongs to one loop: set from the fetching thread, it woke no waiter on another."""
    jwks_uri = None if discovered else authority.jwks_uri
    verifier = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=jwks_uri)])
    token = authority.mint()
    authority.drip = 0.0005  # the metadata and the keys come slowly, a byte at a time
    try:
        subjects = subjects_on_two_loops(lambda: verifier.verify(token), timeout=20)
    finally:
        authority.drip = 0.0
    assert subjects == ["agent-7", "agent-7"]


async def test_a_rotated_key_is_picked_up_on_first_sight(authority: Authority) -> None:
    verifier = verifier_for(authority)
    assert await verifier.verify(authority.mint())
    authority.keys["rotated-2"] = RSAKey.generate_key(2048, parameters={"kid": "rotated-2"})
    verifier.jwks.min_refresh_interval = 0
    assert await verifier.verify(authority.mint(kid="rotated-2"))


async def test_a_slow_key_endpoint_is_cut_off_and_stale_keys_serve_meanwhile(authority: Authority) -> None:
    """An endpoint answering a byte at a time never times out a single read: the whole fetch is bounded."""
    trusted = TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)
    verifier = JWTVerifier([trusted], jwks=JWKSCache(fetch=functools.partial(fetch_json, timeout=0.5)))
    assert await verifier.verify(authority.mint())
    authority.drip = 0.05  # the key set would take over a minute
    try:
        with pytest.raises(TimeoutError):
            await fetch_json(authority.jwks_uri, timeout=0.5)
        verifier.jwks.max_age = 0  # every call wants a refresh now
        verifier.jwks.min_refresh_interval = 0
        before, subjects = verifier.jwks.fetches, []

        async def call(index: int) -> None:
            subjects.append((await verifier.verify(authority.mint(sub=f"agent-{index}"))).subject)

        async with anyio.create_task_group() as group:
            for index in range(20):
                group.start_soon(call, index)
        assert len(subjects) == 20 and verifier.jwks.fetches - before == 1  # one waited for the fetch, no one else
    finally:
        authority.drip = 0.0


async def test_cached_keys_outlive_an_outage_only_until_max_stale(authority: Authority) -> None:
    now = [1000.0]
    cache = JWKSCache(max_age=60, max_stale=600, min_refresh_interval=0, clock=lambda: now[0])
    trusted = TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)
    verifier = JWTVerifier([trusted], jwks=cache)
    seen_before = authority.mint()
    assert await verifier.verify(seen_before)
    authority.jwks_down = True
    try:
        now[0] += 599
        assert await verifier.verify(authority.mint())  # stale, the endpoint down: the cached key serves
        assert await verifier.verify(seen_before)
        now[0] += 2
        assert await refused(verifier, authority.mint()) == "keys_unavailable"
        assert await refused(verifier, seen_before) == "keys_unavailable"  # its verification ended with its keys
    finally:
        authority.jwks_down = False
    assert await verifier.verify(authority.mint())  # back up: fetched afresh
    with pytest.raises(ValueError, match="max_stale"):
        JWKSCache(max_age=60, max_stale=30)


async def test_a_cached_verification_ends_when_its_keys_are_no_longer_fresh(authority: Authority) -> None:
    """A key the issuer withdraws takes its tokens with it at the next refresh, cached ones too."""
    now = [1000.0]
    cache = JWKSCache(max_age=60, min_refresh_interval=0, clock=lambda: now[0])
    verifier = JWTVerifier(
        [TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)], jwks=cache
    )
    authority.keys["withdrawn"] = RSAKey.generate_key(2048, parameters={"kid": "withdrawn"})
    token = authority.mint(kid="withdrawn")
    try:
        assert await verifier.verify(token)
    finally:
        del authority.keys["withdrawn"]
    now[0] += 59
    assert await verifier.verify(token)  # the keys are fresh: the verification stands
    fetches = cache.fetches
    now[0] += 2
    assert await refused(verifier, token) == "key_unknown"
    assert cache.fetches == fetches + 1


class CountingKeys(JWKSCache):
    """The real key cache, counting the verifications that ask it for a key."""

    asked = 0

    async def key(self, jwks_uri: str, kid: str | None, alg: str) -> tuple[Any, int]:
        self.asked += 1
        return await super().key(jwks_uri, kid, alg)


async def test_while_the_keys_cannot_be_fetched_again_a_cached_verification_stands(authority: Authority) -> None:
    """Past ``max_age`` with the endpoint down, verifying a cached token again could only give the
    same answer until the next fetch is due: it is not redone on every call."""
    now = [1000.0]
    cache = CountingKeys(max_age=60, max_stale=600, min_refresh_interval=30, clock=lambda: now[0])
    verifier = JWTVerifier(
        [TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)], jwks=cache
    )
    token = authority.mint()
    assert await verifier.verify(token)
    authority.jwks_down = True
    try:
        now[0] += 61
        for _ in range(50):
            assert await verifier.verify(token)
        assert (cache.asked, cache.fetches) == (2, 2)  # verified once more, with the one failed fetch
        now[0] += 30
        assert await verifier.verify(token)
        assert (cache.asked, cache.fetches) == (3, 3)  # the next fetch was due: tried, and verified again
    finally:
        authority.jwks_down = False


async def test_one_key_listed_twice_is_one_key(authority: Authority) -> None:
    published = authority.public_jwks()["keys"]
    rsa = next(key for key in published if key["kid"] == "rsa-1")
    for twice in ([rsa, rsa], [rsa, {**rsa, "alg": "RS256"}], [{**rsa, "use": "sig"}, rsa]):
        authority.jwks_body = json.dumps({"keys": twice}).encode()
        try:
            assert await verifier_for(authority).verify(authority.mint())
            assert await verifier_for(authority).verify(authority.mint(kid=None))
        finally:
            authority.jwks_body = None


async def test_forgetting_tokens_forgets_keys_too(authority: Authority) -> None:
    verifier = verifier_for(authority)
    key = authority.keys["withdrawn"] = RSAKey.generate_key(2048, parameters={"kid": "withdrawn"})
    try:
        assert await verifier.verify(authority.mint(kid="withdrawn"))
    finally:
        del authority.keys["withdrawn"]  # the issuer withdraws a compromised key
    assert await verifier.verify(authority.mint(kid="withdrawn", key=key))  # still cached, still fresh
    verifier.forget_tokens()
    assert await refused(verifier, authority.mint(kid="withdrawn", key=key)) == "key_unknown"
    assert await verifier.verify(authority.mint())


async def test_a_cancelled_discovery_leaves_the_waiting_calls_to_ask_again(authority: Authority) -> None:
    discovering = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE)])
    subjects: list[str] = []
    first = anyio.CancelScope()

    async def cancelled() -> None:
        with first:
            await discovering.verify(authority.mint())

    async def waiting() -> None:
        subjects.append((await discovering.verify(authority.mint())).subject)

    authority.drip = 0.01  # the metadata takes about a second
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(cancelled)
            await anyio.sleep(0.1)
            group.start_soon(waiting)
            group.start_soon(waiting)
            await anyio.sleep(0.1)
            authority.drip = 0.0
            first.cancel()
    finally:
        authority.drip = 0.0
    assert subjects == ["agent-7", "agent-7"]


async def test_a_discovery_error_is_a_refusal_and_pauses_lookups(
    authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    outside = "http://issuer.example.test"  # metadata over plain http off loopback: not fetched at all
    discovering = JWTVerifier([TrustedIssuer(issuer=outside, audience=RESOURCE)])
    for _ in range(3):
        assert await refused(discovering, authority.mint(iss=outside)) == "keys_unavailable"
    assert caplog.text.count("could not be read") == 1  # the later calls are refused by the pause


async def test_the_endpoint_down_keeps_cached_keys_and_fails_closed_without_them(authority: Authority) -> None:
    verifier = verifier_for(authority)
    assert await verifier.verify(authority.mint())
    authority.jwks_down = True
    verifier.jwks.max_age = 0  # every call wants a refresh now
    verifier.jwks.min_refresh_interval = 0
    assert await verifier.verify(authority.mint(jti="after-outage"))  # cached key still matches
    cold = verifier_for(authority)
    assert await refused(cold, authority.mint()) == "keys_unavailable"
    authority.jwks_down = False


async def test_keys_are_discovered_from_issuer_metadata(authority: Authority) -> None:
    discovering = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE)])
    assert (await discovering.verify(authority.mint())).subject == "agent-7"


@pytest.mark.parametrize("tenant", ["tenant-1", "tenant-2"])
async def test_an_issuer_with_a_path_is_discovered_where_mcp_clients_look(authority: Authority, tenant: str) -> None:
    """RFC 8414 puts the well-known part between host and path; OpenID discovery appends it."""
    issuer = f"{authority.issuer}/{tenant}"
    discovering = JWTVerifier([TrustedIssuer(issuer=issuer, audience=RESOURCE)])
    assert (await discovering.verify(authority.mint(iss=issuer))).issuer == issuer


async def test_calls_arriving_during_discovery_share_its_outcome(authority: Authority) -> None:
    discovering = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE)])
    before = authority.metadata_requests
    subjects: list[str] = []

    async def call(index: int) -> None:
        subjects.append((await discovering.verify(authority.mint(sub=f"agent-{index}"))).subject)

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(call, index)
    assert sorted(subjects) == sorted(f"agent-{index}" for index in range(50))  # none refused while waiting
    assert authority.metadata_requests - before == 1


def test_issuer_configuration_is_validated() -> None:
    for bad in (
        {"algorithms": ("HS256",)},
        {"algorithms": ("none",)},
        {"algorithms": ()},
        {"jwks_uri": "http://evil.test/jwks"},
        {"leeway": 3600},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            TrustedIssuer(issuer="https://i.test", audience=RESOURCE, **bad)
    with pytest.raises(ValueError, match="at least one"):
        JWTVerifier([])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_random_bytes_are_never_accepted(verifier: JWTVerifier, blob: bytes) -> None:
    token = blob.decode("latin-1")

    async def check() -> None:
        with pytest.raises(Refused):
            await verifier.verify(token)

    anyio.run(check)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "client_id", "jti", "scope", "act"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(max_size=20),
            st.booleans(),
            st.lists(st.text(max_size=10), max_size=3),
        ),
    )
)
def test_random_claims_signed_with_a_real_key_pass_only_when_valid(
    authority: Authority, verifier: JWTVerifier, overrides: dict[str, Any]
) -> None:
    token = authority.mint(**overrides)
    claims = authority.claims(**overrides)

    async def check() -> None:
        try:
            principal = await verifier.verify(token)
        except Refused:
            return
        now = time.time()
        assert claims["iss"] == authority.issuer
        assert claims["aud"] == RESOURCE or RESOURCE in claims["aud"]
        assert isinstance(claims["sub"], str) and claims["sub"]
        assert type(claims["exp"]) in (int, float) and claims["exp"] + 30 >= now
        assert principal.subject == claims["sub"]

    anyio.run(check)


async def test_a_cached_token_still_ages_out(authority: Authority) -> None:
    now = [time.time()]
    issuer = TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri, max_token_age=3600)
    clocked = JWTVerifier([issuer], clock=lambda: now[0])
    token = authority.mint(iat=now[0], exp=now[0] + 30 * 24 * 3600)
    assert await clocked.verify(token)
    now[0] += 2 * 3600
    assert await refused(clocked, token) == "token_too_old"


async def test_a_cached_token_dies_with_its_rotated_out_key(authority: Authority) -> None:
    verifier = verifier_for(authority)
    old_key = authority.keys["rsa-1"]
    token = authority.mint()
    assert await verifier.verify(token)
    authority.keys["rsa-1"] = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # rotated in place
    verifier.jwks.min_refresh_interval = 0
    verifier.jwks.max_age = 0
    try:
        assert await verifier.verify(authority.mint(jti="new"))  # a cache miss refreshes the keys
        assert await refused(verifier, token) == "signature_invalid"  # the cached verification is stale
    finally:
        authority.keys["rsa-1"] = old_key


@pytest.mark.parametrize("claims", [{"exp": 10**400}, {"iat": -(10**30)}, {"nbf": 10**12}])
async def test_absurd_time_claims(authority: Authority, verifier: JWTVerifier, claims: dict[str, Any]) -> None:
    assert await refused(verifier, authority.mint(**claims)) == "claim_invalid"


async def test_one_bad_jwks_entry_does_not_spoil_the_rest(authority: Authority) -> None:
    good = authority.public_jwks()
    authority.jwks_body = json.dumps(
        {"keys": [{"kty": ["RSA"]}, {"kty": "AKP", "alg": "ML-DSA-44"}, *good["keys"]]}
    ).encode()
    try:
        assert await verifier_for(authority).verify(authority.mint())
    finally:
        authority.jwks_body = None


@pytest.mark.filterwarnings("ignore:Key size should be")  # joserfc's own warning, on creating and on reading it
async def test_rsa_keys_shorter_than_2048_bits_are_never_used(authority: Authority) -> None:
    authority.keys["short"] = RSAKey.generate_key(1024, parameters={"kid": "short"})
    try:
        verifier = verifier_for(authority)
        assert await refused(verifier, authority.mint(kid="short")) == "key_unknown"
        assert await verifier.verify(authority.mint())
    finally:
        del authority.keys["short"]


async def test_one_kid_may_name_keys_of_different_types(authority: Authority) -> None:
    rsa = RSAKey.generate_key(2048, parameters={"kid": "shared"})
    ec = ECKey.generate_key("P-256", parameters={"kid": "shared"})
    twin = RSAKey.generate_key(2048, parameters={"kid": "shared"})
    try:
        authority.jwks_body = json.dumps(KeySet([rsa, ec]).as_dict(private=False)).encode()
        verifier = verifier_for(authority)
        assert await verifier.verify(authority.mint(kid="shared", key=rsa))
        assert await verifier.verify(authority.mint(alg="ES256", kid="shared", key=ec))
        authority.jwks_body = json.dumps(KeySet([rsa, twin]).as_dict(private=False)).encode()
        ambiguous = verifier_for(authority)  # two keys one RS256 token could name: neither is used
        assert await refused(ambiguous, authority.mint(kid="shared", key=rsa)) == "key_unknown"
    finally:
        authority.jwks_body = None


async def test_a_key_given_another_algorithm_is_a_change_of_keys(authority: Authority) -> None:
    verifier = verifier_for(authority, algorithms=("RS256", "PS256"))
    before = authority.mint(alg="PS256")
    assert await verifier.verify(before)
    published = authority.public_jwks()["keys"]  # the same keys, the RSA one now pinned to RS256
    pinned = [{**key, "alg": "RS256"} if key["kid"] == "rsa-1" else key for key in published]
    authority.jwks_body = json.dumps({"keys": pinned}).encode()
    verifier.jwks.max_age = 0
    verifier.jwks.min_refresh_interval = 0
    try:
        assert await verifier.verify(authority.mint(jti="after"))  # refreshed: the same key, now RS256 only
        assert await refused(verifier, authority.mint(alg="PS256", jti="ps")) == "key_unknown"
        assert await refused(verifier, before) == "key_unknown"  # its cached verification went with the change
    finally:
        authority.jwks_body = None


@pytest.mark.parametrize(
    "body",
    [
        b'{"keys": []}',
        b'{"keys": ["junk", 1, null]}',
        b'{"keys": [{"kty": "RSA", "use": "enc"}]}',
        b"[" * 30000 + b"]" * 30000,
        b'{"keys": [], "keys": []}',
    ],
)
async def test_a_useless_jwks_never_replaces_working_keys(authority: Authority, body: bytes) -> None:
    verifier = verifier_for(authority)
    assert await verifier.verify(authority.mint())
    authority.jwks_body = body
    verifier.jwks.min_refresh_interval = 0
    verifier.jwks.max_age = 0
    try:
        assert await verifier.verify(authority.mint(jti="after"))  # kept the good keys
        assert await refused(verifier_for(authority), authority.mint()) == "keys_unavailable"
    finally:
        authority.jwks_body = None


async def test_failed_discovery_is_not_retried_for_every_token(authority: Authority) -> None:
    authority.metadata_issuer = authority.issuer + "/someone-else"
    try:
        discovering = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE)])
        before = authority.metadata_requests
        codes = {await refused(discovering, authority.mint(jti=f"d{i}")) for i in range(50)}
        assert codes == {"keys_unavailable"}
        assert authority.metadata_requests - before == 1
    finally:
        authority.metadata_issuer = None


def test_fetchable_urls_need_a_host() -> None:
    from mcp_guard.identity.rfc8414 import check_fetchable

    for url in ("https:evil", "https:///x", "ftp://h/x", "http://example.test/jwks"):
        with pytest.raises(ValueError, match="https"):
            check_fetchable(url)


async def test_issuers_given_as_any_iterable_keep_their_jwks_uri(authority: Authority) -> None:
    """A generator of issuers is read once; the configured ``jwks_uri`` must still be used, never
    a metadata lookup in its place (which here would fail)."""
    authority.metadata_issuer = authority.issuer + "/someone-else"
    try:
        issuers = (TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri) for _ in [1])
        before = authority.metadata_requests
        assert (await JWTVerifier(issuers).verify(authority.mint())).subject == "agent-7"
        assert authority.metadata_requests == before
    finally:
        authority.metadata_issuer = None


@pytest.mark.parametrize(
    ("name", "code"), [("exp", "claim_missing"), ("jti", "claim_missing"), ("nbf", "claim_invalid")]
)
async def test_a_null_claim_is_not_an_absent_limit(
    verifier: JWTVerifier, authority: Authority, name: str, code: str
) -> None:
    """``"exp": null`` must not make a token that never expires, nor a null ``jti`` a required claim."""
    claims = {**authority.claims(), name: None}
    token = jwt.encode(
        {"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}, claims, authority.keys["rsa-1"], algorithms=["RS256"]
    )
    assert await refused(verifier, token) == code


@pytest.mark.parametrize(
    ("text", "value"),
    [(b'{"a":1}', {"a": 1}), (b' \r\n\t{"a":[1,{"b":2}]}\n ', {"a": [1, {"b": 2}]}), (b"{}", {})],
)
def test_json_objects_with_whitespace_around_them(text: bytes, value: dict[str, Any]) -> None:
    assert json_object(text) == value


@pytest.mark.parametrize(
    "text",
    [b"", b"  ", b"[1]", b'"a"', b'{"a":1}x', b'{"a":1} {}', b'{"a":1,"a":2}', b'{"a":NaN}', b"\x0c{}", b'{"a":'],
)
def test_anything_but_one_strict_json_object_is_refused(text: bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|object|duplicate|Expecting|after"):
        json_object(text)


async def test_a_key_set_pushed_out_of_the_cache_never_revives_verifications_under_old_keys(
    authority: Authority,
) -> None:
    with serve_authority() as other:
        jwks = JWKSCache(max_sets=1, min_refresh_interval=0)
        issuers = [TrustedIssuer(issuer=i.issuer, audience=RESOURCE, jwks_uri=i.jwks_uri) for i in (authority, other)]
        verifier = JWTVerifier(issuers, jwks=jwks)
        old = authority.mint()  # signed by rsa-1
        await verifier.verify(old)
        keys = authority.keys
        authority.keys = {"rsa-2": RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})}  # rsa-1 withdrawn
        try:
            await verifier.verify(other.mint())  # pushes the first issuer's keys out of the cache
            await verifier.verify(authority.mint(kid="rsa-2"))  # its keys fetched again: rsa-2 only
            assert await refused(verifier, old) == "key_unknown"
        finally:
            authority.keys = keys


@pytest.mark.parametrize("members", [("d",), ("p", "q"), ("p",), ("dp", "dq"), ("qi",)])
async def test_a_key_published_with_any_private_member_is_never_used(
    authority: Authority, members: tuple[str, ...]
) -> None:
    leaked = RSAKey.generate_key(2048, parameters={"kid": "leaked"})
    private = leaked.as_dict(private=True)
    published = {**leaked.as_dict(private=False), **{member: private[member] for member in members}}
    authority.jwks_body = json.dumps({"keys": [*authority.public_jwks()["keys"], published]}).encode()
    try:
        verifier = verifier_for(authority)
        assert await refused(verifier, authority.mint(kid="leaked", key=leaked)) == "key_unknown"
        assert await verifier.verify(authority.mint())  # the rest of the key set still works
    finally:
        authority.jwks_body = None


@pytest.mark.parametrize(
    ("marks", "usable"),
    [
        ({"key_ops": ["verify"]}, True),
        ({"key_ops": ["encrypt", "wrapKey"]}, False),
        ({"key_ops": "verify"}, False),
        ({"use": "enc"}, False),
    ],
)
async def test_a_key_whose_operations_exclude_verifying_is_skipped(
    authority: Authority, marks: dict[str, Any], usable: bool
) -> None:
    rsa = authority.keys["rsa-1"].as_dict(private=False)
    other = {**RSAKey.generate_key(2048, parameters={"kid": "other"}).as_dict(private=False), **marks}
    authority.jwks_body = json.dumps({"keys": [rsa, other]}).encode()
    try:  # a token without kid names the one key for verifying: with another such key it is ambiguous
        token = authority.mint(kid=None)
        if usable:
            assert await refused(verifier_for(authority), token) == "key_unknown"
        else:
            assert await verifier_for(authority).verify(token)
    finally:
        authority.jwks_body = None
