"""Opaque tokens by RFC 7662 against a real introspection endpoint: answers of every shape."""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from authority import RESOURCE, Authority
from mcp_guard import (
    EventKind,
    Guard,
    GuardTokenVerifier,
    MemoryAuditSink,
    ReasonCode,
    Refused,
    SessionSettings,
    ToolSpec,
    TrustedIssuer,
)
from mcp_guard.audit.events import AuditEvent
from mcp_guard.audit.file import AuditLogError
from mcp_guard.identity.access_token import token_digest
from mcp_guard.identity.rfc7662 import IntrospectionVerifier
from serving import free_port, guarded_notes, serving
from support import left_behind, subjects_on_two_loops

pytestmark = pytest.mark.anyio


def introspector(authority: Authority, **options: Any) -> IntrospectionVerifier:
    options.setdefault("client_secret", authority.client_secret)
    return IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=RESOURCE),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        **options,
    )


def answer(authority: Authority, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "active": True,
        "iss": authority.issuer,
        "aud": RESOURCE,
        "sub": "agent-7",
        "client_id": "agent-app",
        "scope": "notes:read",
        "exp": now + 300,
        "iat": now,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


async def code_for(verifier: IntrospectionVerifier, token: str) -> str:
    with pytest.raises(Refused) as raised:
        await verifier.verify(token)
    return raised.value.code


async def test_an_active_token_becomes_a_principal_and_is_cached(authority: Authority) -> None:
    authority.answers["opaque-1"] = answer(authority, act={"sub": "planner"}, jti="j-9")
    verifier = introspector(authority)
    before = authority.introspections
    principal = await verifier.verify("opaque-1")
    assert (principal.subject, principal.client_id, principal.scopes) == ("agent-7", "agent-app", {"notes:read"})
    assert principal.actor_chain == ("planner",)
    assert principal.token_id == "j-9"
    await verifier.verify("opaque-1")
    assert authority.introspections - before == 1


async def test_a_clock_without_a_usable_time_accepts_no_answer(authority: Authority) -> None:
    now = [time.time()]
    authority.answers["lapsed"] = answer(authority, exp=int(now[0]) - 3600)
    verifier = introspector(authority, clock=lambda: now[0])
    assert await code_for(verifier, "lapsed") == "token_expired"
    now[0] = math.nan  # every time check would pass
    assert await code_for(verifier, "lapsed") == "guard_error"


async def test_a_wall_clock_stepped_back_does_not_stretch_the_cache_ttl(authority: Authority) -> None:
    now = [time.time() + 3 * 3600]  # a clock running three hours fast
    authority.answers["stepped"] = answer(authority, exp=int(time.time()) + 6 * 3600)
    verifier = introspector(authority, cache_ttl=0.05, clock=lambda: now[0])
    assert await verifier.verify("stepped")
    authority.answers["stepped"] = {"active": False}  # revoked at the server
    now[0] = time.time()  # the clock is corrected: three hours back
    await anyio.sleep(0.1)  # past the ttl, though not on the wall clock
    assert await code_for(verifier, "stepped") == "token_inactive"


async def test_the_cache_never_outlives_the_token_or_its_ttl(authority: Authority) -> None:
    now = [time.time()]
    authority.answers["short"] = answer(authority, exp=int(now[0]) + 5)
    verifier = introspector(authority, cache_ttl=60, clock=lambda: now[0])
    await verifier.verify("short")
    before = authority.introspections
    now[0] += 40  # past exp plus the 30 s leeway, well inside the 60 s ttl
    assert await code_for(verifier, "short") == "token_expired"
    assert authority.introspections - before == 1  # it asked again
    authority.answers["lapsing"] = answer(authority, exp=int(now[0]) + 5)
    await verifier.verify("lapsing")
    authority.answers["lapsing"] = {"active": False}  # the server lets it lapse at its expiry
    now[0] += 10  # past exp, inside the leeway: the cached answer is not served any longer
    assert await code_for(verifier, "lapsing") == "token_inactive"
    authority.answers["long"] = answer(authority, exp=int(now[0]) + 3600)
    await verifier.verify("long")
    now[0] += 61  # past the ttl
    before = authority.introspections
    await verifier.verify("long")
    assert authority.introspections - before == 1


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"active": False}, "token_inactive"),
        ({"active": "true"}, "token_inactive"),
        ({"active": 1}, "token_inactive"),
        ({"active": None}, "token_inactive"),
        ({"active": [True]}, "token_inactive"),
        ({"iss": "https://evil.test"}, "issuer_untrusted"),
        ({"aud": "https://other.test/mcp"}, "audience_mismatch"),
        ({"aud": [RESOURCE + "/"]}, "audience_mismatch"),
        ({"aud": 7}, "claim_invalid"),
        ({"exp": 1}, "token_expired"),
        ({"exp": "soon"}, "claim_invalid"),
        ({"nbf": int(time.time()) + 3600}, "token_not_yet_valid"),
        ({"iat": int(time.time()) - 3 * 24 * 3600, "exp": int(time.time()) + 60}, "token_too_old"),
        ({"sub": None, "client_id": None}, "subject_missing"),
        ({"sub": ""}, "subject_missing"),
        ({"sub": 7}, "subject_missing"),
        ({"client_id": ["x"]}, "claim_invalid"),
        ({"scope": "notes:read\tnotes:write"}, "scope_malformed"),
        ({"scope": ["notes:read"]}, "scope_malformed"),
        ({"scp": ["notes:write"]}, "scope_conflict"),  # beside 'scope', as a JWT's claims would be
        ({"scope": None, "scp": ["notes:write"]}, "scope_malformed"),  # 'scp' only where configured
        ({"act": {"no": "sub"}}, "claim_invalid"),
        ({"token_type": "refresh_token"}, "token_type_invalid"),
        ({"token_type": "DPoP"}, "token_type_invalid"),
        ({"token_type": 7}, "token_type_invalid"),
        ({"cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}}, "token_bound"),
        ({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, "token_type": "Bearer"}, "token_bound"),
    ],
)
async def test_answers_of_every_shape(authority: Authority, overrides: dict[str, Any], code: str) -> None:
    token = f"shape-{code}-{len(authority.answers)}"
    authority.answers[token] = answer(authority, **overrides)
    assert await code_for(introspector(authority), token) == code


async def test_bound_tokens_only_where_something_else_checks_the_binding(authority: Authority) -> None:
    authority.answers["bound"] = answer(authority, cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    checked_in_front = IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, accept_bound_tokens=True),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        client_secret=authority.client_secret,
    )
    assert (await checked_in_front.verify("bound")).subject == "agent-7"


@pytest.mark.parametrize("raw", [b"[true]", b'"active"', b"not json", b"", b'{"active": true', 500, 404, 302])
async def test_broken_endpoints_deny(authority: Authority, raw: bytes | int) -> None:
    token = f"broken-{raw!r}"
    authority.answers[token] = raw
    assert await code_for(introspector(authority), token) == "introspection_failed"


async def test_a_wrong_client_secret_or_a_timeout_denies(authority: Authority) -> None:
    authority.answers["fine"] = answer(authority)
    assert await code_for(introspector(authority, client_secret="wrong"), "fine") == "introspection_failed"
    authority.introspection_delay = 1.0
    try:
        assert await code_for(introspector(authority, timeout=0.2), "fine") == "introspection_failed"
    finally:
        authority.introspection_delay = 0.0


async def concurrently(verifier: IntrospectionVerifier, token: str, calls: int) -> list[str]:
    """Verify ``token`` in ``calls`` concurrent tasks: each one's subject, or its refusal's code."""
    outcomes: list[str] = []

    async def one() -> None:
        try:
            outcomes.append((await verifier.verify(token)).subject)
        except Refused as refusal:
            outcomes.append(refusal.code)

    async with anyio.create_task_group() as tasks:
        for _ in range(calls):
            tasks.start_soon(one)
    return outcomes


@pytest.mark.parametrize(("token", "outcome"), [("shared-active", "agent-7"), ("shared-inactive", "token_inactive")])
async def test_concurrent_calls_with_a_new_token_share_one_question(
    authority: Authority, token: str, outcome: str
) -> None:
    if token == "shared-active":
        authority.answers[token] = answer(authority)
    verifier = introspector(authority)
    authority.introspection_delay = 0.2
    before = authority.introspections
    try:
        outcomes = await concurrently(verifier, token, 50)
    finally:
        authority.introspection_delay = 0.0
    assert outcomes == [outcome] * 50
    assert authority.introspections - before == 1


async def test_a_cancelled_question_leaves_the_others_to_ask_again(authority: Authority) -> None:
    authority.answers["cancelled-first"] = answer(authority)
    verifier = introspector(authority)
    authority.introspection_delay = 0.3
    before = authority.introspections
    try:
        async with anyio.create_task_group() as tasks:
            first = anyio.CancelScope()

            async def asker() -> None:
                with first:
                    await verifier.verify("cancelled-first")

            outcomes: list[str] = []

            async def waiter() -> None:
                outcomes.append((await verifier.verify("cancelled-first")).subject)

            tasks.start_soon(asker)
            await anyio.sleep(0.05)
            tasks.start_soon(waiter)  # waits on the first question
            await anyio.sleep(0.05)
            first.cancel()
    finally:
        authority.introspection_delay = 0.0
    assert outcomes == ["agent-7"]
    assert authority.introspections - before == 2


def test_a_question_shared_by_threads_each_on_its_own_loop_wakes_every_waiter(authority: Authority) -> None:
    """An event belongs to one loop: set from the asking thread, it woke no waiter on another."""
    authority.answers["shared-by-threads"] = answer(authority)
    verifier = introspector(authority)
    authority.introspection_delay = 0.3
    before = authority.introspections
    try:
        subjects = subjects_on_two_loops(lambda: verifier.verify("shared-by-threads"), timeout=10)
    finally:
        authority.introspection_delay = 0.0
    assert subjects == ["agent-7", "agent-7"] and authority.introspections - before == 1


async def test_a_flood_of_unknown_tokens_is_asked_about_only_so_many_at_a_time(authority: Authority) -> None:
    """Made-up tokens cost one question each; past ``max_questions`` under way, a call with yet
    another one is refused at once rather than queued, while a token answered active before is
    still asked about once its cached answer has run out (a flood must not lock it out), and
    forgetting the cached answers forgets no question under way."""
    authority.answers["known"] = answer(authority)
    now = [time.time()]
    verifier = introspector(authority, max_questions=2, clock=lambda: now[0])
    assert (await verifier.verify("known")).subject == "agent-7"
    now[0] += 61  # past the cache ttl: "known" must be asked about again
    authority.introspection_delay = 0.3
    before = authority.introspections
    outcomes: list[str] = []

    async def attempt(token: str) -> None:
        try:
            outcomes.append((await verifier.verify(token)).subject)
        except Refused as refusal:
            outcomes.append(refusal.code)

    try:
        async with anyio.create_task_group() as tasks:
            for index in range(3):
                tasks.start_soon(attempt, f"made-up-{index}")
            await anyio.wait_all_tasks_blocked()
            verifier.forget_tokens()
            for index in range(3, 6):
                tasks.start_soon(attempt, f"made-up-{index}")
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(attempt, "known")
    finally:
        authority.introspection_delay = 0.0
    assert sorted(outcomes) == ["agent-7"] + ["introspection_failed"] * 4 + ["token_inactive"] * 2
    assert authority.introspections - before == 3
    authority.answers["known"] = b"not json"  # a failure to get an answer keeps its places
    now[0] += 61
    assert await code_for(verifier, "known") == "introspection_failed"
    assert token_digest("known") in verifier._active
    authority.answers["known"] = {"active": False}  # revoked since: it loses its places past the limit
    assert await code_for(verifier, "known") == "token_inactive"
    assert token_digest("known") not in verifier._active
    with pytest.raises(ValueError, match="max_questions"):
        introspector(authority, max_questions=0)


def test_a_question_left_behind_by_a_closed_event_loop_is_asked_anew(authority: Authority) -> None:
    """A loop stopped without cancelling its tasks leaves its question pending for good; a call
    with the same token had spun on it for ever, never yielding its own loop."""
    authority.answers["left-behind"] = authority.answers["other"] = answer(authority)

    def abandon(verifier: IntrospectionVerifier) -> None:
        authority.introspection_delay = 1.0
        try:
            left_behind(verifier.verify("left-behind"))
        finally:
            authority.introspection_delay = 0.0

    def subject_of(verifier: IntrospectionVerifier, token: str) -> str:
        async def verify() -> str:
            with anyio.fail_after(10):
                return (await verifier.verify(token)).subject

        return anyio.run(verify)

    verifier = introspector(authority)
    abandon(verifier)
    assert subject_of(verifier, "left-behind") == "agent-7"
    full = introspector(authority, max_questions=1)
    abandon(full)
    assert subject_of(full, "other") == "agent-7"  # the abandoned question holds no place


def test_two_threads_letting_go_of_one_abandoned_question_both_carry_on(authority: Authority) -> None:
    """Both may find it abandoned before either removes it: the second removal was a
    `KeyError` out of `verify`, a guard error instead of an answer."""
    verifier = introspector(authority, max_questions=1)
    loop = asyncio.new_event_loop()
    abandoned = loop.run_until_complete(_made_on_this_loop())
    loop.close()

    class OtherThreadFirst(dict[Any, Any]):
        """Another thread removes the question right after this one found it there."""

        def get(self, key: Any, default: Any = None) -> Any:
            found = dict.get(self, key, default)
            if found is abandoned and not self.get_count:
                self.get_count = 1
                dict.__delitem__(self, key)
            return found

        get_count = 0

    verifier._asking = OtherThreadFirst({(b"another", 0): abandoned})
    with pytest.raises(Refused) as refused:
        anyio.run(verifier.verify, "made-up")
    assert refused.value.code == ReasonCode.TOKEN_INACTIVE


async def _made_on_this_loop() -> Any:
    from mcp_guard.identity.rfc7662 import _Question

    return _Question()


async def test_introspecting_many_tokens_builds_one_tls_context(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a TLS context loads the CA store, about 20 ms of CPU on the event loop: a client
    per unknown token must not build one each."""
    loaded: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded.append(context)
        load(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    verifier = introspector(authority)
    for index in range(5):
        with pytest.raises(Refused):
            await verifier.verify(f"unknown-{index}")
    assert len(loaded) <= 1  # at most once per process (none when an earlier test built it)


async def test_a_token_without_exp_expires_at_its_maximum_age(authority: Authority) -> None:
    """Its expiry bounds how long its sessions are kept: a token that never expired kept each
    session it opened for good, and its subject's share of the store filled up."""
    issued = int(time.time())
    authority.answers["no-exp"] = answer(authority, exp=None, iat=issued)
    authority.answers["no-exp-no-iat"] = answer(authority, exp=None, iat=None)
    verifier = introspector(authority)
    aged = await verifier.verify("no-exp")
    assert aged.expires_at == issued + 24 * 3600.0
    kept = SessionSettings().open("token:x", aged, issued, leeway=30, from_credential=True).retain_until
    assert kept == math.nextafter(issued + 24 * 3600.0 + 30, math.inf)  # just past its last accepted instant
    assert (await verifier.verify("no-exp-no-iat")).expires_at is None  # nothing bounds it


async def test_an_unreachable_endpoint_denies(authority: Authority) -> None:
    unreachable = IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=RESOURCE),
        endpoint="http://127.0.0.1:9/introspect",
        client_id="x",
        client_secret="y",
    )
    assert await code_for(unreachable, "anything") == "introspection_failed"


@pytest.mark.parametrize("method", ["clent_secret_post", "none", "private_key_jwt"])
def test_an_authentication_method_the_verifier_cannot_use_is_refused_when_it_is_built(method: str) -> None:
    """A misspelt method failed every question with a TypeError (a 401 and a traceback per call)."""
    with pytest.raises(ValueError, match="auth_method must be one of client_secret_basic, client_secret_post"):
        IntrospectionVerifier(
            TrustedIssuer(issuer="https://as.example", audience=RESOURCE),
            endpoint="https://as.example/introspect",
            client_id="x",
            client_secret="y",
            auth_method=method,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("token", ["", "x" * 9000, "caf\u00e9"])
async def test_malformed_tokens_never_reach_the_endpoint(authority: Authority, token: str) -> None:
    before = authority.introspections
    assert await code_for(introspector(authority), token) == "token_malformed"
    assert authority.introspections == before


def test_the_endpoint_must_be_https_unless_loopback(authority: Authority) -> None:
    with pytest.raises(ValueError, match="https"):
        introspector(authority).__class__(
            TrustedIssuer(issuer=authority.issuer, audience=RESOURCE),
            endpoint="http://auth.example.test/introspect",
            client_id="x",
            client_secret="y",
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(["active", "iss", "aud", "sub", "client_id", "scope", "exp", "nbf", "iat"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.text(max_size=12), st.lists(st.text(max_size=6), max_size=2)
        ),
    )
)
def test_random_answers_pass_only_when_valid(authority: Authority, overrides: dict[str, Any]) -> None:
    token = f"random-{len(authority.answers)}"
    authority.answers[token] = body = answer(authority, **overrides)

    async def check() -> None:
        try:
            principal = await introspector(authority).verify(token)
        except Refused:
            return
        assert body["active"] is True
        assert body.get("iss", authority.issuer) == authority.issuer
        aud = body["aud"]
        assert aud == RESOURCE or (isinstance(aud, list) and RESOURCE in aud)
        assert principal.subject == body.get("sub", body.get("client_id"))
        assert isinstance(principal.subject, str) and principal.subject
        assert "exp" not in body or body["exp"] + 30 >= time.time()

    anyio.run(check)


async def test_opaque_tokens_through_the_sdk_over_http(authority: Authority, guard: Guard, mode: str) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    verifier = IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=resource),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        client_secret=authority.client_secret,
    )
    authority.answers["opaque-http"] = answer(authority, aud=resource, scope="notes:read mail:send")
    server = guarded_notes(guard, verifier, authority.issuer, resource)
    with serving(server.streamable_http_app(), port):
        http = httpx2.AsyncClient(headers={"Authorization": "Bearer opaque-http"})
        async with Client(streamable_http_client(resource, http_client=http), mode=mode) as client:
            result = await client.call_tool("read_note", {"title": "welcome"})
        assert (result.structured_content or {})["scopes"] == ["notes:read"]
        async with httpx2.AsyncClient() as raw:
            refused = await raw.post(resource, json={}, headers={"Authorization": "Bearer not-active"})
        assert refused.status_code == 401


@pytest.mark.parametrize(
    "raw",
    [b'{"active": false, "active": true, "sub": "a"}', b"[" * 30000 + b"]" * 30000, b'{"active": true, "sub": NaN}'],
)
async def test_answers_are_parsed_strictly(authority: Authority, raw: bytes) -> None:
    token = f"strict-{len(authority.answers)}"
    authority.answers[token] = raw
    assert await code_for(introspector(authority), token) == "introspection_failed"


async def test_absurd_time_claims_in_answers(authority: Authority) -> None:
    authority.answers["absurd"] = answer(authority, exp=10**400)
    assert await code_for(introspector(authority), "absurd") == "claim_invalid"
    authority.answers["infinite"] = b'{"active": true, "sub": "a", "aud": "%s", "exp": 1e999}' % RESOURCE.encode()
    assert await code_for(introspector(authority), "infinite") == "claim_invalid"


async def test_a_minimal_answer_is_usable_end_to_end(authority: Authority, guard: Guard) -> None:
    """No iss, no client_id, a deep act chain allowed by configuration: verified, and accepted by the guard."""
    verifier = IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, max_delegation_depth=6),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        client_secret=authority.client_secret,
    )
    chain: dict[str, Any] = {"sub": "a5"}
    for name in ("a4", "a3", "a2", "a1"):
        chain = {"sub": name, "act": chain}
    minimal = {"active": True, "sub": "agent-7", "aud": RESOURCE, "scope": "notes:read", "act": chain}
    authority.answers["minimal"] = minimal
    access = await GuardTokenVerifier(verifier, guard).verify_token("minimal")
    assert access is not None
    principal = guard.identifier.identify(access)
    assert (principal.issuer, principal.client_id) == (authority.issuer, "")
    assert principal.actor_chain == ("a1", "a2", "a3", "a4", "a5")


async def test_an_answer_must_say_whom_the_token_is_for_unless_configured_otherwise(authority: Authority) -> None:
    """MCP asks a resource server to check a token was issued for it; RFC 7662 makes ``aud``
    optional, so an answer without it is refused unless the issuer's required claims leave it out."""
    authority.answers["no-aud"] = answer(authority, aud=None)
    assert await code_for(introspector(authority), "no-aud") == "claim_missing"
    lenient = IntrospectionVerifier(
        TrustedIssuer(
            issuer=authority.issuer, audience=RESOURCE, required_claims=("iss", "sub", "exp", "client_id", "iat")
        ),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        client_secret=authority.client_secret,
    )
    principal = await lenient.verify("no-aud")
    assert principal.audience == (RESOURCE,)
    authority.answers["elsewhere"] = answer(authority, aud="https://other.test/mcp")
    assert await code_for(lenient, "elsewhere") == "audience_mismatch"  # present, it is still checked


async def test_an_acceptance_the_audit_log_refuses_is_a_refusal_and_recorded_later(authority: Authority) -> None:
    """A failing audit sink never turns token verification into a server error, and the
    token's acceptance is recorded once the log takes it, not skipped as if already seen."""

    class FailingOnce:
        def __init__(self) -> None:
            self.events: list[AuditEvent] = []

        def emit(self, event: AuditEvent) -> None:
            if not self.events and not hasattr(self, "failed"):
                self.failed = True
                raise AuditLogError("the audit log is full")
            self.events.append(event)

    audit = FailingOnce()
    guard = Guard(audit=[audit])
    authority.answers["audited"] = answer(authority)
    verifying = GuardTokenVerifier(introspector(authority), guard)
    assert await verifying.verify_token("audited") is None
    assert await verifying.verify_token("audited") is not None
    assert [(e.kind, e.reasons) for e in audit.events] == [
        (EventKind.TOKEN_REJECTED, (ReasonCode.GUARD_ERROR,)),
        (EventKind.TOKEN_ACCEPTED, ()),
    ]
    rejected = audit.events[0]  # under the policy in force, as a refusal in band is
    assert (rejected.policy_id, rejected.policy_version) == (guard.policy.id, guard.policy.version)


@pytest.mark.parametrize("reading", [math.nan, "raises"])
async def test_a_guard_clock_without_a_usable_time_refuses_the_token_with_a_401(
    authority: Authority, reading: object
) -> None:
    """The verifier's own clock is fine; the guard's, read to record the acceptance, is not: the
    token is refused (no acceptance recorded at no time), and the refusal never raises."""

    def clock() -> float:
        if reading == "raises":
            raise RuntimeError("no time source")
        return math.nan

    audit = MemoryAuditSink()
    authority.answers["timeless"] = answer(authority)
    verifying = GuardTokenVerifier(introspector(authority), Guard(audit=[audit], clock=clock))
    assert await verifying.verify_token("timeless") is None
    assert audit.events == []


async def test_the_cache_never_outlives_the_maximum_token_age(authority: Authority) -> None:
    now = [time.time()]
    authority.answers["aging"] = answer(authority, iat=int(now[0]), exp=int(now[0]) + 30 * 24 * 3600)
    verifier = IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, max_token_age=3600),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        client_secret=authority.client_secret,
        cache_ttl=7200,
        clock=lambda: now[0],
    )
    await verifier.verify("aging")
    now[0] += 3600 + 31  # past the maximum age and its leeway, inside the cache ttl
    assert await code_for(verifier, "aging") == "token_too_old"


async def test_a_token_the_server_narrows_is_served_with_its_new_scopes(authority: Authority) -> None:
    authority.answers["narrowed"] = answer(authority, scope="notes:read notes:admin")
    introspection = introspector(authority)
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit])
    guard.declare(ToolSpec("purge", scopes=frozenset({"notes:admin"})))
    verifier = GuardTokenVerifier(introspection, guard)
    before = await verifier.verify_token("narrowed")
    assert before is not None and (await guard.authorize("purge", {}, before)).allowed
    authority.answers["narrowed"] = answer(authority, scope="notes:read")  # the server takes admin away
    introspection.forget_tokens()  # as its cache time passing would
    after = await verifier.verify_token("narrowed")
    assert after is not None and after.scopes == ["notes:read"]
    refused = await guard.authorize("purge", {}, after)
    assert refused.decision.reason.code == "insufficient_scope"
    fresh = after.model_copy()  # another view of the same token, as a different verifier would hand over
    assert (await guard.authorize("purge", {}, fresh)).decision.reason.code == "insufficient_scope"
    accepted = [e for e in audit.events if e.kind == EventKind.TOKEN_ACCEPTED]
    assert [sorted(e.principal.scopes) for e in accepted if e.principal] == [
        ["notes:admin", "notes:read"],
        ["notes:read"],
    ]


async def test_forgetting_tokens_reaches_a_question_already_under_way(authority: Authority) -> None:
    authority.answers["forgotten"] = answer(authority)
    verifier = introspector(authority, cache_ttl=60)
    outcomes: dict[str, str] = {}

    async def call(label: str) -> None:
        try:
            outcomes[label] = (await verifier.verify("forgotten")).subject
        except Refused as refusal:
            outcomes[label] = refusal.code

    authority.introspection_delay = 0.3
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "asked before")
            await anyio.sleep(0.1)
            authority.answers["forgotten"] = {"active": False}  # revoked at the server...
            verifier.forget_tokens()  # ...and this server told so
            tasks.start_soon(call, "asked after")
    finally:
        authority.introspection_delay = 0.0
    before = authority.introspections
    await call("later")
    assert outcomes == {"asked before": "agent-7", "asked after": "token_inactive", "later": "token_inactive"}
    assert authority.introspections - before == 1  # the answer from before was not kept


async def test_scp_counts_only_for_an_issuer_configured_for_it(authority: Authority) -> None:
    authority.answers["scp-listed"] = answer(authority, scope=None, scp=["notes:read", "notes:write"])
    verifier = IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, accept_scp=True),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        client_secret=authority.client_secret,
    )
    assert (await verifier.verify("scp-listed")).scopes == {"notes:read", "notes:write"}
    assert await code_for(introspector(authority), "scp-listed") == "scope_malformed"


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "access_token"])
async def test_bearer_access_token_types_are_accepted(authority: Authority, token_type: str) -> None:
    authority.answers[f"typed-{token_type}"] = answer(authority, token_type=token_type)
    assert (await introspector(authority).verify(f"typed-{token_type}")).subject == "agent-7"


async def test_no_raw_token_outlives_its_request_in_the_sdk_verifier(authority: Authority, guard: Guard) -> None:
    verifying = GuardTokenVerifier(introspector(authority), guard)
    tokens = [f"opaque-secret-{n}" for n in range(3)]
    for number, token in enumerate(tokens):
        authority.answers[token] = answer(authority, sub=f"agent-{number}")
        for _ in range(2):
            access = await verifying.verify_token(token)
            assert access is not None and access.token == token  # the request still carries it
            assert guard.identifier.identify(access).subject == f"agent-{number}"
    assert not any(token in repr(vars(verifying)) for token in tokens)
    accepted = [event for event in guard.sinks[0].events if event.kind == EventKind.TOKEN_ACCEPTED]  # type: ignore[attr-defined]
    assert len(accepted) == 3  # recorded once per token, not per request


async def test_an_answer_sent_a_byte_at_a_time_is_cut_off_at_the_timeout(authority: Authority) -> None:
    authority.answers["dripping"] = answer(authority)
    authority.drip = 0.05  # no single read times out, but the answer would take seconds
    try:
        assert await code_for(introspector(authority, timeout=0.5), "dripping") == "introspection_failed"
    finally:
        authority.drip = 0.0
