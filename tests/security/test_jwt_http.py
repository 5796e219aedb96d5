"""JWT access tokens through the SDK over streamable HTTP: verified, bound, trimmed, audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authority import RESOURCE, Authority
from mcp_guard import EventKind, Guard, GuardTokenVerifier, JWTVerifier, MemoryAuditSink, TrustedIssuer
from serving import serving_jwt_notes

pytestmark = pytest.mark.anyio


@pytest.fixture
def served(authority: Authority, guard: Guard) -> Iterator[str]:
    with serving_jwt_notes(guard, authority.issuer, authority.jwks_uri) as resource:
        yield resource


def client(url: str, token: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http), mode=mode)


async def test_a_verified_jwt_runs_trimmed_and_its_delegation_is_recorded(
    authority: Authority, served: str, audit: MemoryAuditSink, mode: str
) -> None:
    token = authority.mint(aud=served, scope="notes:read mail:send", act={"sub": "planner-agent"})
    async with client(served, token, mode) as session:
        result = await session.call_tool("read_note", {"title": "welcome"})
    seen = result.structured_content or {}
    assert seen["scopes"] == ["notes:read"]
    assert seen["request_authorization"] is None  # the raw request a tool can reach is trimmed too
    assert seen["request_scopes"] == ["notes:read"]
    assert seen["request_body"] > 0  # the body the SDK read is still there to read
    decided = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED][-1]
    assert decided.actor_chain == ("planner-agent",)
    assert decided.issuer == authority.issuer


async def test_claims_nested_deeper_than_a_recursive_copy_goes_reach_the_tool_over_http(
    authority: Authority, served: str, audit: MemoryAuditSink, mode: str
) -> None:
    profile: Any = "bottom"
    for _ in range(400):  # past a copy two frames a level deep, within what the verifier accepts
        profile = [profile]
    token = authority.mint(aud=served, scope="notes:read", profile=profile)
    async with client(served, token, mode) as session:
        result = await session.call_tool("read_note", {"title": "welcome"})
    assert (result.structured_content or {})["scopes"] == ["notes:read"]
    calls = [e for e in audit.events if e.kind in (EventKind.CALL_DECIDED, EventKind.CALL_COMPLETED)]
    assert [(e.kind, e.outcome) for e in calls] == [
        (EventKind.CALL_DECIDED, "allowed"),
        (EventKind.CALL_COMPLETED, None),
    ]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://someone-else.test/mcp"}, "audience_mismatch"),
        ({"exp": 1}, "token_expired"),
        ({"typ": "JWT"}, "token_type_invalid"),
    ],
)
async def test_a_refused_jwt_gets_401_and_an_audit_record(
    authority: Authority, served: str, audit: MemoryAuditSink, overrides: dict[str, object], reason: str
) -> None:
    typ = str(overrides.pop("typ", "at+jwt"))
    token = authority.mint(typ=typ, **{"aud": served, **overrides})
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            served,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401
    rejected = [e for e in audit.events if e.kind == EventKind.TOKEN_REJECTED]
    assert rejected[-1].reasons == (reason,)
    assert token not in repr(audit.events)


async def test_no_raw_token_reaches_a_log_or_a_record(
    authority: Authority, served: str, audit: MemoryAuditSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    tokens = [
        authority.mint(aud=served),
        authority.mint(aud="https://elsewhere.test"),
        authority.mint(aud=served, exp=1),
        authority.mint(aud=served, typ="JWT"),
        authority.mint(aud=served)[:-5],
        "not.a.jwt",
    ]
    async with httpx2.AsyncClient() as http:
        for token in tokens:
            await http.post(
                served,
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
            )
    everything = caplog.text + repr(audit.events)
    for token in tokens:
        assert token not in everything


async def test_first_acceptance_is_recorded_and_verification_is_timed(
    authority: Authority, served: str, audit: MemoryAuditSink, spans: InMemorySpanExporter, mode: str
) -> None:
    token = authority.mint(aud=served, scope="notes:read")
    async with client(served, token, mode) as session:
        for _ in range(3):
            await session.call_tool("read_note", {"title": "welcome"})
    accepted = [e for e in audit.events if e.kind == EventKind.TOKEN_ACCEPTED]
    assert len(accepted) == 1
    assert accepted[0].subject == "agent-7"
    timed = [s for s in spans.get_finished_spans() if s.name == "mcp-guard verify token"]
    assert timed
    assert all((s.attributes or {}).get("mcp_guard.reason") == "accepted" for s in timed)
    assert token not in repr(timed)
    assert accepted[0].trace_id in {format(s.context.trace_id, "032x") for s in timed}  # its verification's trace


async def test_a_refused_token_is_recorded_in_its_verifications_trace(
    authority: Authority, guard: Guard, audit: MemoryAuditSink, spans: InMemorySpanExporter
) -> None:
    verifier = GuardTokenVerifier(
        JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)]), guard
    )
    assert await verifier.verify_token("not.a.token") is None
    [rejected] = [e for e in audit.events if e.kind == EventKind.TOKEN_REJECTED]
    [timed] = [s for s in spans.get_finished_spans() if s.name == "mcp-guard verify token"]
    assert rejected.trace_id == format(timed.context.trace_id, "032x")
    assert type((timed.attributes or {})["mcp_guard.reason"]) is str  # a plain string, not the enum


async def test_a_verified_token_is_described_once_and_its_bearer_string_not_kept(
    authority: Authority, guard: Guard
) -> None:
    """Each request gets the token it presented, with fields built once per verification; the
    guard's identifier finds the same principal for every request with one token."""
    verifier = GuardTokenVerifier(
        JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)]), guard
    )
    token = authority.mint()
    first, second = await verifier.verify_token(token), await verifier.verify_token(token)
    assert first is not None and second is not None and first.token == second.token == token
    assert guard.identifier.identify(first) is guard.identifier.identify(second)
    first.scopes.append("notes:admin")  # code outside a guarded tool changing its request's token
    assert "notes:admin" not in (await verifier.verify_token(token) or first).scopes
    other = await verifier.verify_token(authority.mint(jti="other"))
    assert other is not None and other.token != first.token
    assert token not in repr(vars(verifier))
