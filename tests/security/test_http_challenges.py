"""RFC 9728 metadata and real 403 step-up challenges over HTTP, against a real issuer."""

from __future__ import annotations

import base64
import json
import re
import time
from collections import deque
from collections.abc import Iterator
from typing import Annotated, Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.settings import AuthSettings
from pydantic import Field
from starlette.types import ASGIApp

from authority import Authority
from mcp_guard import (
    AllOf,
    AnyOf,
    Decision,
    EventKind,
    Guard,
    GuardTokenVerifier,
    JWTVerifier,
    MemoryAuditSink,
    RiskSettings,
    RulePolicy,
    ScopePolicy,
    ToolSpec,
    TrustedIssuer,
)
from mcp_guard.integrations.http import MAX_CHALLENGED_BODY, GuardHTTP, resource_metadata_url
from mcp_guard.policy import PrincipalRule, as_policy
from serving import free_port, guarded_notes, serving, serving_jwt_notes
from support import notes_server

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"


@pytest.fixture
def resource(authority: Authority, guard: Guard) -> Iterator[str]:
    def challenging(app: ASGIApp, verifier: JWTVerifier, resource: str) -> ASGIApp:
        return GuardHTTP(app, guard, verifier, resource=resource)

    with serving_jwt_notes(guard, authority.issuer, authority.jwks_uri, challenging) as resource:
        yield resource


def tools_call(name: str, body_name: str | None = None) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": body_name or name,
            "arguments": {"title": "welcome", "text": "x"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }


async def post(resource: str, token: str | None, name: str, body_name: str | None = None) -> httpx2.Response:
    headers: dict[str, str | bytes] = {
        "Accept": "application/json, text/event-stream",
        "Mcp-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name.encode("utf-8"),  # raw bytes: what a hostile client can send
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        return await http.post(resource, json=tools_call(name, body_name), headers=headers)


def challenge(response: httpx2.Response) -> dict[str, str]:
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


async def test_protected_resource_metadata_lists_what_the_tools_need(authority: Authority, resource: str) -> None:
    async with httpx2.AsyncClient() as http:
        response = await http.get(resource_metadata_url(resource))
    assert response.status_code == 200
    assert response.json() == {
        "resource": resource,
        "authorization_servers": [authority.issuer],
        "scopes_supported": ["notes:read", "notes:write"],  # the concealed tool's scope stays unadvertised
        "bearer_methods_supported": ["header"],
    }


async def test_a_missing_scope_gets_a_real_403_naming_every_scope_needed(
    authority: Authority, resource: str, audit: MemoryAuditSink
) -> None:
    response = await post(resource, authority.mint(aud=resource, scope="notes:read"), "write_note")
    assert response.status_code == 403
    recorded = audit.events[-1]
    assert (recorded.tool, recorded.reasons, recorded.missing_scopes) == (
        "write_note",
        ("insufficient_scope",),
        {"notes:write"},
    )
    assert challenge(response) == {
        "error": "insufficient_scope",
        "scope": "notes:write",
        "resource_metadata": resource_metadata_url(resource),
        "error_description": "The access token lacks scopes this tool requires",
    }


async def test_step_up_challenges_count_on_the_session_and_toward_its_risk_threshold(authority: Authority) -> None:
    """A 403 is a refusal like any other: a caller probing tools it may not call is revoked."""
    audit = MemoryAuditSink()
    guard = Guard(
        scope_hierarchy={"notes:write": "notes:read"}, audit=[audit], risk=RiskSettings(threshold=30, denial=10)
    )

    def challenging(app: ASGIApp, verifier: JWTVerifier, resource: str) -> ASGIApp:
        return GuardHTTP(app, guard, verifier, resource=resource)

    with serving_jwt_notes(guard, authority.issuer, authority.jwks_uri, challenging) as resource:
        token = authority.mint(aud=resource, scope="notes:read")
        statuses = [(await post(resource, token, "write_note")).status_code for _ in range(3)]
        after = await post(resource, token, "read_note")
    assert statuses == [403, 403, 403]
    assert after.status_code == 200 and "token_revoked" in after.text  # the third refusal reached the threshold
    kinds = [event.kind for event in audit.events]
    assert kinds.count(EventKind.SESSION_OPENED) == 1 and EventKind.SESSION_REVOKED in kinds
    assert {event.session_id for event in step_up_events(audit)} == {audit.events[0].session_id}
    assert {(event.policy_id, event.policy_version) for event in step_up_events(audit)} == {("mcp-guard/scopes", "1")}


async def test_param_headers_that_disagree_with_the_body_get_the_sdks_400(
    authority: Authority, guard: Guard, audit: MemoryAuditSink
) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    verifier = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=resource, jwks_uri=authority.jwks_uri)])
    server = guarded_notes(guard, verifier, authority.issuer, resource)

    @server.tool()
    @guard.tool(scopes="notes:write")
    def file_note(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        return region

    @server.tool()  # declared to the guard without its schema: the headers are the SDK's to check
    def file_plain(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        return region

    guard.declare(ToolSpec("file_plain", scopes=frozenset({"notes:write"})))
    token = authority.mint(aud=resource, scope="notes:read")
    statuses = []
    with serving(GuardHTTP(server.streamable_http_app(), guard, verifier, resource=resource), port):
        async with httpx2.AsyncClient() as http:
            for tool, region in (("file_note", "eu"), ("file_note", "us"), ("file_plain", "us")):
                call = tools_call(tool)
                call["params"]["arguments"] = {"region": "us"}  # the first header disagrees: the SDK refuses it
                headers = {**dict(BASE_HEADERS), "Mcp-Method": "tools/call", "Mcp-Name": tool}
                headers["Mcp-Param-Region"] = region
                response = await http.post(resource, json=call, headers={**headers, "Authorization": f"Bearer {token}"})
                statuses.append(response.status_code)
    assert statuses == [400, 403, 403]
    assert len(step_up_events(audit)) == 2  # no refusal recorded for the call the SDK would not serve


async def test_enough_scope_passes_through_to_the_server(authority: Authority, resource: str) -> None:
    token = authority.mint(aud=resource, scope="notes:write")  # notes:write implies notes:read
    for name in ("read_note", "write_note"):
        response = await post(resource, token, name)
        assert response.status_code == 200, response.text
        assert "isError" not in response.text or '"isError":false' in response.text.replace(" ", "")


@pytest.mark.parametrize("name", ["purge_notes", "no_such_tool", 're"d_note', "read_note\u0430"])
async def test_unknown_or_concealed_tools_get_no_challenge(authority: Authority, resource: str, name: str) -> None:
    response = await post(resource, authority.mint(aud=resource, scope="notes:read"), name)
    assert response.status_code != 403
    assert name not in response.headers.get("www-authenticate", "")


async def test_a_name_header_that_disagrees_with_the_body_is_refused(authority: Authority, resource: str) -> None:
    token = authority.mint(aud=resource, scope="notes:write")
    response = await post(resource, token, "read_note", body_name="write_note")
    assert response.status_code == 400
    assert "mcp-name" in response.text.lower()


BASE_HEADERS = [
    ("Accept", "application/json, text/event-stream"),
    ("Mcp-Protocol-Version", MODERN),
    ("Content-Type", "application/json"),
]


async def post_raw(
    resource: str, headers: list[tuple[str, str]], content: bytes, base: list[tuple[str, str]] = BASE_HEADERS
) -> httpx2.Response:
    """A POST with headers exactly as listed (repeats kept) and ``content`` as the body."""
    async with httpx2.AsyncClient() as http:
        return await http.post(resource, content=content, headers=[*base, *headers])


def step_up_events(audit: MemoryAuditSink) -> list[Any]:
    return [event for event in audit.events if event.detail == "HTTP 403 step-up challenge"]


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(tools_call("read_note")).encode(),  # the header names write_note
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "write_note"',  # not JSON
        json.dumps({**tools_call("write_note"), "method": "tools/list"}).encode(),
    ],
)
async def test_a_body_that_does_not_call_the_named_tool_gets_no_challenge(
    authority: Authority, resource: str, audit: MemoryAuditSink, body: bytes
) -> None:
    token = authority.mint(aud=resource, scope="notes:read")
    headers = [("Authorization", f"Bearer {token}"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "write_note")]
    response = await post_raw(resource, headers, body)
    assert response.status_code == 400, response.text  # the SDK's answer to a request it cannot take
    assert "mcp-name" in response.text.lower() or "error" in response.json()  # it read the body handed on
    assert step_up_events(audit) == []  # no call to write_note was made, so none is recorded


def envelope(**changes: Any) -> bytes:
    """A tools/call to write_note with top-level members changed (None removes one)."""
    call = {**tools_call("write_note"), **changes}
    return json.dumps({key: value for key, value in call.items() if value is not None}).encode()


def without_meta() -> bytes:
    call = tools_call("write_note")
    del call["params"]["_meta"]
    return json.dumps(call).encode()


@pytest.mark.parametrize(
    ("base", "extra", "body", "status"),
    [
        ([("Accept", "text/html"), *BASE_HEADERS[1:]], [], envelope(), 406),
        ([*BASE_HEADERS[:2], ("Content-Type", "text/plain")], [], envelope(), 400),
        (BASE_HEADERS, [], envelope(id=None), 202),  # a notification: no call is made
        (BASE_HEADERS, [], envelope(jsonrpc="1.0"), 400),
        (BASE_HEADERS, [], envelope(id={"an": "object"}), 400),
        (BASE_HEADERS, [], without_meta(), 400),
        (BASE_HEADERS, [("Mcp-Protocol-Version", MODERN)], envelope(), 400),  # the version header twice
        (BASE_HEADERS[:1] + BASE_HEADERS[2:] + [("Mcp-Protocol-Version", "2099-01-01")], [], envelope(), 400),
        (BASE_HEADERS, [], b"[]", 400),
        (BASE_HEADERS, [], b"1", 400),
        (BASE_HEADERS, [], b"null", 400),
        (BASE_HEADERS, [], b"[" * 100_000, 400),
    ],
)
async def test_a_request_the_sdk_refuses_gets_its_answer_not_a_challenge(
    authority: Authority,
    resource: str,
    audit: MemoryAuditSink,
    base: list[tuple[str, str]],
    extra: list[tuple[str, str]],
    body: bytes,
    status: int,
) -> None:
    token = authority.mint(aud=resource, scope="notes:read")
    headers = [("Authorization", f"Bearer {token}"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "write_note")]
    response = await post_raw(resource, [*headers, *extra], body, base)
    assert response.status_code == status, response.text
    assert step_up_events(audit) == []


async def test_a_token_inside_the_leeway_gets_the_sdks_401_not_a_challenge(authority: Authority, resource: str) -> None:
    now = int(time.time())
    token = authority.mint(aud=resource, scope="notes:read", iat=now - 60, exp=now - 10)  # the guard allows 30 s
    headers = [("Authorization", f"Bearer {token}"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "write_note")]
    assert (await post_raw(resource, headers, envelope())).status_code == 401


async def test_a_tool_name_sent_encoded_is_decoded_as_the_sdk_does(authority: Authority, resource: str) -> None:
    token = authority.mint(aud=resource, scope="notes:read")
    encoded = "=?base64?" + base64.b64encode(b"write_note").decode() + "?="
    headers = [("Authorization", f"Bearer {token}"), ("Mcp-Method", "tools/call"), ("Mcp-Name", encoded)]
    response = await post_raw(resource, headers, envelope())
    assert response.status_code == 403 and challenge(response)["scope"] == "notes:write"


async def test_the_token_is_read_as_the_sdk_reads_it(
    authority: Authority, resource: str, audit: MemoryAuditSink
) -> None:
    token = authority.mint(aud=resource, scope="notes:read")
    body = json.dumps(tools_call("write_note")).encode()
    named = [("Mcp-Method", "tools/call"), ("Mcp-Name", "write_note")]
    for authorization in (
        [("Authorization", f"Bearer  {token}")],
        [("Authorization", "junk"), ("Authorization", f"Bearer {token}")],
    ):
        response = await post_raw(resource, [*authorization, *named], body)
        assert response.status_code == 401  # as the SDK answers: two spaces, or a first header that is junk
    twice = [("Authorization", f"Bearer {token}"), *named, ("Mcp-Name", "read_note")]
    assert (await post_raw(resource, twice, body)).status_code != 403
    assert step_up_events(audit) == []
    lowercase = [("Authorization", f"bearer {token}"), *named]
    assert (await post_raw(resource, lowercase, body)).status_code == 403  # the scheme is case-insensitive


async def test_a_body_too_long_to_read_is_handed_on_whole_and_refused_in_band(
    authority: Authority, resource: str, audit: MemoryAuditSink
) -> None:
    token = authority.mint(aud=resource, scope="notes:read")
    call = tools_call("write_note")
    call["params"]["arguments"]["text"] = "x" * (MAX_CHALLENGED_BODY + 1000)
    headers = [("Authorization", f"Bearer {token}"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "write_note")]
    response = await post_raw(resource, headers, json.dumps(call).encode())
    assert response.status_code == 200 and "insufficient_scope" in response.text  # the guard's in-band refusal
    assert step_up_events(audit) == [] and audit.events[-1].tool == "write_note"


async def test_missing_or_invalid_tokens_get_401_with_the_metadata_url(authority: Authority, resource: str) -> None:
    for token in (None, "garbage", authority.mint(aud="https://other.test/mcp")):
        response = await post(resource, token, "write_note")
        assert response.status_code == 401
        assert challenge(response)["resource_metadata"] == resource_metadata_url(resource)


async def test_the_sdk_client_sees_the_step_up_refusal(authority: Authority, resource: str) -> None:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {authority.mint(aud=resource, scope='notes:read')}"})
    async with Client(streamable_http_client(resource, http_client=http)) as client:
        assert not (await client.call_tool("read_note", {"title": "welcome"})).is_error
        with pytest.raises((MCPError, httpx2.HTTPStatusError)):
            await client.call_tool("write_note", {"title": "t", "text": "x"})


def test_a_resource_that_cannot_be_quoted_safely_is_refused(guard: Guard, authority: Authority) -> None:
    verifier = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience="https://x.test/mcp")])
    with pytest.raises(ValueError, match="quoted"):
        GuardHTTP(lambda *_: None, guard, verifier, resource='https://x.test/mcp"evil')  # type: ignore[arg-type]


async def test_absurd_tokens_get_401_never_500(authority: Authority, resource: str) -> None:
    for token in (authority.mint(aud=resource, exp=10**400), authority.mint(aud=resource, iat=-(10**30))):
        response = await post(resource, token, "write_note")
        assert response.status_code == 401


@pytest.mark.parametrize("combined", [False, True], ids=["alone", "combined"])
async def test_challenges_and_metadata_follow_the_policy_file(
    authority: Authority, resource: str, guard: Guard, combined: bool
) -> None:
    rules = RulePolicy(
        tools=[ToolSpec("write_note", scopes=frozenset({"notes:write", "notes:audit"}))],
        hierarchy={"notes:write": "notes:read"},
        unlisted="allow",
    )
    guard.policy = AllOf(ScopePolicy(rules.hierarchy), rules) if combined else rules
    async with httpx2.AsyncClient() as http:
        metadata = (await http.get(resource_metadata_url(resource))).json()
    assert metadata["scopes_supported"] == ["notes:audit", "notes:read", "notes:write"]
    writer = authority.mint(aud=resource, scope="notes:write")
    refused = await post(resource, writer, "write_note")
    assert refused.status_code == 403
    assert challenge(refused)["scope"] == "notes:audit notes:write"  # every scope the call needs
    assert (await post(resource, writer, "read_note")).status_code == 200  # the policy's hierarchy applies


async def test_a_policy_that_could_allow_the_call_decides_it_in_band(
    authority: Authority, resource: str, guard: Guard
) -> None:
    """No 403 pre-empts a policy that does not insist on the declared scopes."""
    reader = authority.mint(aud=resource, scope="notes:read")
    assert (await post(resource, reader, "write_note")).status_code == 403  # the scope policy insists

    def lenient(request: Any) -> Decision:
        return Decision(allowed=True, requested_scopes=request.principal.scopes)

    guard.policy = as_policy(lenient)
    assert (await post(resource, reader, "write_note")).status_code == 200
    strict = RulePolicy(hierarchy={"notes:write": "notes:read"})
    guard.policy = AnyOf(strict, RulePolicy([PrincipalRule("agent", subjects=frozenset({"agent-7"}))]))
    assert (await post(resource, reader, "write_note")).status_code == 403  # no member would allow it
    guard.policy = AnyOf(strict, lenient)
    assert (await post(resource, reader, "write_note")).status_code == 200


async def test_a_revoked_subject_gets_no_challenge_but_the_guards_refusal(
    authority: Authority, guard: Guard, resource: str
) -> None:
    token = authority.mint(aud=resource, scope="notes:read")
    await guard.revoke(subject="agent-7")
    try:
        response = await post(resource, token, "write_note")
    finally:
        await guard.restore(subject="agent-7")
    assert response.status_code != 403
    assert "subject_revoked" in response.text


@pytest.mark.parametrize("name", ["purge_notes", "no_such_tool"])
async def test_the_work_done_for_a_bad_token_never_tells_which_tools_exist(
    authority: Authority, guard: Guard, name: str
) -> None:
    asked: list[str] = []

    def counting(app: ASGIApp, verifier: JWTVerifier, resource: str) -> ASGIApp:
        original = verifier.verify

        async def verify(token: str) -> Any:
            asked.append(token)
            return await original(token)

        verifier.verify = verify  # type: ignore[method-assign]
        return GuardHTTP(app, guard, verifier, resource=resource)

    with serving_jwt_notes(guard, authority.issuer, authority.jwks_uri, counting) as resource:
        response = await post(resource, "garbage", name)
    assert response.status_code == 401
    assert len(asked) == 2  # once for the step-up check and once by the SDK, concealed tool or none


async def test_a_failing_audit_log_refuses_tokens_with_401_never_500(authority: Authority) -> None:
    class Failing:
        def emit(self, event: object) -> None:
            raise OSError("disk full")

    guard = Guard(audit=[Failing()])

    def challenging(app: ASGIApp, verifier: JWTVerifier, resource: str) -> ASGIApp:
        return GuardHTTP(app, guard, verifier, resource=resource)

    with serving_jwt_notes(guard, authority.issuer, authority.jwks_uri, challenging) as resource:
        for token in ("garbage", authority.mint(aud=resource, scope="notes:read")):
            for name in ("read_note", "write_note"):
                assert (await post(resource, token, name)).status_code == 401


def notes_app(
    guard: Guard, authority: Authority, port: int, path: str = "/mcp", **app_options: Any
) -> tuple[ASGIApp, JWTVerifier, str]:
    """The notes server's HTTP app, requiring the ``mcp:access`` scope of every request; its
    resource URI ends in ``path`` (the app serves ``/mcp`` whatever it is)."""
    resource = f"http://127.0.0.1:{port}{path}"
    verifier = JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=resource, jwks_uri=authority.jwks_uri)])
    auth = AuthSettings(
        issuer_url=authority.issuer,
        resource_server_url=resource,
        validate_token_resource=True,
        required_scopes=["mcp:access"],
    )
    server = notes_server(guard, token_verifier=GuardTokenVerifier(verifier, guard), auth=auth)
    return server.streamable_http_app(**app_options), verifier, resource


async def test_the_scopes_every_request_needs_are_advertised_and_challenged_for(authority: Authority) -> None:
    audit = MemoryAuditSink()
    guard = Guard(scope_hierarchy={"notes:write": "notes:read"}, audit=[audit])
    port = free_port()
    app, verifier, resource = notes_app(guard, authority, port)
    with serving(GuardHTTP(app, guard, verifier, resource=resource, required_scopes=["mcp:access"]), port):
        async with httpx2.AsyncClient() as http:
            metadata = (await http.get(resource_metadata_url(resource))).json()
        assert metadata["scopes_supported"] == ["mcp:access", "notes:read", "notes:write"]
        lacking_both = await post(resource, authority.mint(aud=resource, scope="notes:read"), "write_note")
        assert lacking_both.status_code == 403  # the SDK's own answer, before any tool is looked at
        assert challenge(lacking_both)["error_description"] == "Required scope: mcp:access"
        assert step_up_events(audit) == []
        lacking_the_tools = await post(
            resource, authority.mint(aud=resource, scope="mcp:access notes:read"), "write_note"
        )
        assert challenge(lacking_the_tools)["scope"] == "mcp:access notes:write"  # a step-up the SDK will serve
        assert len(step_up_events(audit)) == 1
        stepped_up = await post(resource, authority.mint(aud=resource, scope="mcp:access notes:write"), "write_note")
        assert stepped_up.status_code == 200


@pytest.mark.parametrize("json_response", [False, True])
async def test_a_json_only_client_is_challenged_where_the_app_answers_in_json(
    authority: Authority, json_response: bool
) -> None:
    guard = Guard(audit=[MemoryAuditSink()])
    port = free_port()
    app, verifier, resource = notes_app(guard, authority, port, json_response=json_response)
    wrapped = GuardHTTP(
        app, guard, verifier, resource=resource, required_scopes=["mcp:access"], json_response=json_response
    )
    token = authority.mint(aud=resource, scope="mcp:access notes:read")
    headers = [("Mcp-Method", "tools/call"), ("Mcp-Name", "write_note"), ("Authorization", f"Bearer {token}")]
    json_only = [("Accept", "application/json"), *BASE_HEADERS[1:]]
    with serving(wrapped, port):
        response = await post_raw(resource, headers, json.dumps(tools_call("write_note")).encode(), json_only)
    assert response.status_code == (403 if json_response else 406)  # the SDK's 406 when it streams events


@pytest.mark.parametrize("obstacle", ["unlisted", "principal"])
async def test_no_challenge_asks_for_scopes_that_would_not_let_the_call_through(
    authority: Authority, resource: str, guard: Guard, audit: MemoryAuditSink, obstacle: str
) -> None:
    """A tool the policy does not list, or a caller a rule refuses, is refused whatever the
    token's scopes: a 403 asking for them would send the client to step up for nothing, and the
    refusal would be recorded as ``insufficient_scope``. The guard's own reason answers in band."""
    listed = [ToolSpec("read_note", scopes=frozenset({"notes:read"}))]
    hierarchy = {"notes:write": "notes:read"}
    if obstacle == "unlisted":
        guard.policy = RulePolicy(tools=listed, hierarchy=hierarchy, unlisted="deny")
    else:
        guard.policy = RulePolicy([PrincipalRule("operators", subjects=frozenset({"operator"}))], hierarchy=hierarchy)
    token = authority.mint(aud=resource, scope="notes:read")
    response = await post(resource, token, "write_note")
    assert response.status_code == 200 and '"code":-32003' in response.text  # refused in band
    assert step_up_events(audit) == []


async def test_a_resource_with_a_trailing_slash_has_one_metadata_document_and_challenges_where_the_app_serves(
    authority: Authority,
) -> None:
    """The SDK's 401 keeps the slash in the metadata URL: the guard's document is served there,
    names that very resource, and the step-up challenges of ``/mcp`` (where the app answers; it
    redirects ``/mcp/``) point at it too."""
    audit = MemoryAuditSink()
    guard = Guard(scope_hierarchy={"notes:write": "notes:read"}, audit=[audit])
    port = free_port()
    app, verifier, resource = notes_app(guard, authority, port, path="/mcp/")
    with serving(GuardHTTP(app, guard, verifier, resource=resource, required_scopes=["mcp:access"]), port):
        served = resource.rstrip("/")
        async with httpx2.AsyncClient() as http:
            unauthenticated = await http.post(served, json=tools_call("read_note"))
            metadata = await http.get(challenge(unauthenticated)["resource_metadata"])
        assert challenge(unauthenticated)["resource_metadata"] == resource_metadata_url(resource)
        assert metadata.json()["resource"] == resource
        assert metadata.json()["scopes_supported"] == ["mcp:access", "notes:read", "notes:write"]
        stepping_up = await post(served, authority.mint(aud=resource, scope="mcp:access notes:read"), "write_note")
        assert stepping_up.status_code == 403
        assert challenge(stepping_up)["resource_metadata"] == resource_metadata_url(resource)
        assert len(step_up_events(audit)) == 1


async def test_browser_clients_may_read_the_metadata_across_origins(authority: Authority, resource: str) -> None:
    """The guard answers the metadata with the headers the SDK's own answer carries."""
    async with httpx2.AsyncClient() as http:
        response = await http.get(resource_metadata_url(resource), headers={"Origin": "https://inspector.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert response.json()["scopes_supported"] == ["notes:read", "notes:write"]


def dripped(body: bytes, *after: dict[str, Any]) -> Any:
    """A ``receive`` that sends ``body`` a byte at a time, then the messages ``after``."""
    messages = [{"type": "http.request", "body": body[i : i + 1], "more_body": True} for i in range(len(body))]
    messages[-1]["more_body"] = bool(after)
    pending = deque([*messages, *after])

    async def receive() -> dict[str, Any]:
        return pending.popleft()

    return receive


async def test_a_body_sent_a_byte_at_a_time_is_kept_and_handed_on_as_one_message() -> None:
    """Each message was kept as read, so a body dripped a byte at a time was held at hundreds of
    times its size; what the application receives is the same body either way."""
    from mcp_guard.integrations.http import _read_body

    sent = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}' * 40
    body, receive = await _read_body(dripped(sent))
    assert body == sent
    assert await receive() == {"type": "http.request", "body": sent, "more_body": False}
    disconnect = {"type": "http.disconnect"}
    body, receive = await _read_body(dripped(sent[:10], disconnect))
    assert body is None
    assert [await receive(), await receive()] == [
        {"type": "http.request", "body": sent[:10], "more_body": True},
        disconnect,
    ]
    rest = {"type": "http.request", "body": b"tail", "more_body": False}
    body, receive = await _read_body(dripped(b"x" * MAX_CHALLENGED_BODY, {**rest, "more_body": True}, rest))
    assert body is None  # past the limit: handed on whole, read no further
    handed = await receive()
    assert handed == {"type": "http.request", "body": b"x" * MAX_CHALLENGED_BODY + b"tail", "more_body": True}
    assert await receive() == rest
