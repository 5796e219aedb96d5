"""The guard on the MCP SDK, end to end through `Client(server)` in both protocol generations."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.client.caching import CacheConfig, InMemoryResponseCacheStore
from mcp.server import CacheHint, Server, ServerRequestContext
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from mcp_guard import (
    GUARD_DENIED,
    AccessTokenIdentifier,
    EventKind,
    Guard,
    GuardMiddleware,
    MemoryAuditSink,
    Principal,
    ReasonCode,
    Risk,
    RiskSettings,
    SessionSettings,
    ToolSpec,
    current_call,
)
from mcp_guard.testing import access_token, acting_as
from support import Clock, ExplodingPolicy, call_raw, notes_server

pytestmark = pytest.mark.anyio


async def denial(client: Client, name: str, arguments: dict[str, Any] | None = None) -> types.ErrorData:
    with pytest.raises(MCPError) as raised:
        await client.call_tool(name, arguments or {})
    assert raised.value.error.code == GUARD_DENIED
    return raised.value.error


def last_decision(audit: MemoryAuditSink) -> Any:
    return [e for e in audit.events if e.kind in (EventKind.CALL_DECIDED, EventKind.TOKEN_REJECTED)][-1]


async def test_allowed_call_runs_with_the_trimmed_token(server: MCPServer, mode: str) -> None:
    with acting_as(access_token("alice", "notes:read notes:admin mail:send")):
        async with Client(server, mode=mode) as client:
            result = await client.call_tool("read_note", {"title": "welcome"})
    assert not result.is_error
    seen = result.structured_content or {}
    assert seen["text"] == "hello"
    assert seen["scopes"] == ["notes:read"]  # requested three, approved one
    assert seen["bearer"] == ""  # the raw token is withheld from tools
    assert seen["session"] and seen["has_context"]


async def test_sync_tools_still_run_on_worker_threads(server: MCPServer, mode: str) -> None:
    with acting_as(access_token("alice", "notes:write extra")):
        async with Client(server, mode=mode) as client:
            result = await client.call_tool("write_note", {"title": "t", "text": "x"})
    seen = result.structured_content or {}
    assert seen["scopes"] == ["notes:write"]
    assert "worker" in seen["thread"].lower()


@pytest.mark.parametrize(
    ("scopes", "visible"),
    [
        ("notes:read", ["read_note"]),
        ("notes:write", ["read_note", "write_note"]),
        ("notes:admin", ["purge_notes"]),
        ("unrelated", []),
    ],
)
async def test_tools_list_shows_only_what_the_caller_may_call(
    server: MCPServer, mode: str, scopes: str, visible: list[str]
) -> None:
    with acting_as(access_token("alice", scopes)):
        async with Client(server, mode=mode) as client:
            listed = await client.list_tools()
    assert sorted(tool.name for tool in listed.tools) == visible


async def test_a_shared_response_cache_never_serves_one_callers_list_to_another() -> None:
    """A server-wide hint may call tools/list public; the guard's list is the caller's own."""
    guard = Guard()
    server = MCPServer(
        "cached",
        middleware=[GuardMiddleware(guard)],
        cache_hints={"tools/list": CacheHint(ttl_ms=600_000, scope="public")},
    )

    @server.tool()
    @guard.tool(scopes="admin", conceal=True)
    def wipe_everything() -> str:
        return "wiped"

    @server.tool()
    @guard.tool(scopes="read")
    def look() -> str:
        return "looked"

    store = InMemoryResponseCacheStore()
    seen = {}
    for subject, scopes in (("alice", "admin read"), ("bob", "read")):
        cache = CacheConfig(store=store, partition=subject, share_public=True, target_id="server")
        with acting_as(access_token(subject, scopes)):
            async with Client(server, cache=cache) as client:
                seen[subject] = sorted(tool.name for tool in (await client.list_tools()).tools)
    assert seen == {"alice": ["look", "wipe_everything"], "bob": ["look"]}


async def test_a_tools_call_notification_is_no_call(mode: str) -> None:
    """A ``tools/call`` without an id runs nothing, so the trail must not say a call was made."""
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit])
    server = MCPServer("notified", middleware=[GuardMiddleware(guard)])
    ran: list[str] = []

    @server.tool()
    @guard.tool(scopes="notes:read")
    def read_note() -> str:
        ran.append("read_note")
        return "hello"

    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            await client.session._dispatcher.notify("tools/call", {"name": "read_note", "arguments": {}}, {})
            assert (await client.call_tool("read_note", {})).content  # after the notification was handled
    assert ran == ["read_note"]
    assert [event.kind for event in audit.events].count(EventKind.CALL_DECIDED) == 1


async def test_tools_list_is_empty_without_a_valid_identity(server: MCPServer, mode: str) -> None:
    for credential in (None, access_token(None, "notes:read"), access_token("a", "notes:read", expires_in=-3600)):
        with acting_as(credential):
            async with Client(server, mode=mode) as client:
                assert (await client.list_tools()).tools == []


async def test_missing_scopes_reach_the_client_named(server: MCPServer, mode: str, audit: MemoryAuditSink) -> None:
    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            error = await denial(client, "write_note", {"title": "t", "text": "x"})
    assert error.data == {
        "reason": "insufficient_scope",
        "missing_scopes": ["notes:write"],
        "required_scopes": ["notes:write"],
    }
    assert "notes:write" in error.message
    event = last_decision(audit)
    assert (event.outcome, event.missing_scopes) == ("denied", {"notes:write"})


@pytest.mark.parametrize(
    "name",
    [
        "undeclared",
        "no_such_tool",
        "Read_note",
        "read_note ",
        "re\u0430d_note",
        "\uff52\uff45\uff41\uff44_note",
        "read\u200b_note",
        "purge_notes",
    ],
)
async def test_unknown_undeclared_concealed_and_look_alike_names(
    server: MCPServer, mode: str, audit: MemoryAuditSink, name: str
) -> None:
    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            error = await denial(client, name)
    assert error.data == {"reason": "tool_not_found"}
    assert error.message == f"Unknown tool '{ascii(name)[1:-1]}'."  # escaped, and nothing about other tools
    assert last_decision(audit).reasons == ("tool_not_found",)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"name": "read_note", "arguments": [1, 2]}, "arguments_invalid"),
        ({"name": "read_note", "arguments": "title=x"}, "arguments_invalid"),
        ({"name": 42}, "request_malformed"),
        ({"name": None}, "request_malformed"),
    ],
)
async def test_malformed_calls_are_refused(
    server: MCPServer, mode: str, audit: MemoryAuditSink, params: dict[str, Any], code: str
) -> None:
    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            with pytest.raises(MCPError) as raised:
                await call_raw(client, params)
    assert (raised.value.error.code, raised.value.error.data) == (GUARD_DENIED, {"reason": code})
    assert last_decision(audit).reasons == (code,)


@pytest.mark.parametrize(
    ("credential", "code"),
    [
        (None, "token_missing"),
        (access_token(None, "notes:read"), "subject_missing"),
        (access_token("alice", "notes:read", issuer=None), "issuer_missing"),
        (access_token("alice", ["notes:read\tnotes:write"]), "scope_malformed"),
        (access_token("alice", ["notes:read"], scope="notes:read\u2003notes:write"), "scope_malformed"),
        (access_token("alice", "notes:read", expires_in=-3600), "token_expired"),
    ],
)
async def test_bad_credentials_are_refused_and_recorded(
    server: MCPServer, mode: str, audit: MemoryAuditSink, credential: AccessToken | None, code: str
) -> None:
    with acting_as(credential):
        async with Client(server, mode=mode) as client:
            error = await denial(client, "read_note", {"title": "welcome"})
    assert error.data == {"reason": code}
    event = last_decision(audit)
    assert (event.kind, event.reasons) == (EventKind.TOKEN_REJECTED, (code,))


class SwitchableIdentifier:
    """Presents whichever token the test sets: a stolen session id in a different hand."""

    def __init__(self) -> None:
        self.token: AccessToken | None = None
        self._inner = AccessTokenIdentifier()

    def identify(self, credential: AccessToken | None) -> Principal:
        return self._inner.identify(self.token)


async def test_legacy_session_presented_by_another_principal_is_refused(audit: MemoryAuditSink) -> None:
    identity = SwitchableIdentifier()
    guard = Guard(identifier=identity, audit=[audit])
    server = notes_server(guard)
    async with Client(server, mode="legacy") as client:
        identity.token = access_token("alice", "notes:read")
        assert not (await client.call_tool("read_note", {"title": "welcome"})).is_error
        identity.token = access_token("mallory", "notes:read")
        error = await denial(client, "read_note", {"title": "welcome"})
        assert error.data == {"reason": "session_binding_mismatch"}
        identity.token = access_token("alice", "notes:read", client_id="another-client")
        assert (await denial(client, "read_note")).data == {"reason": "session_binding_mismatch"}
    opened, refused = audit.events[0], last_decision(audit)
    assert opened.kind == EventKind.SESSION_OPENED and opened.session_id.startswith("mcp:conn-")
    assert refused.session_id == opened.session_id and refused.client_id == "another-client"


async def test_modern_session_claim_presented_by_another_principal_is_refused(server: MCPServer) -> None:
    with acting_as(access_token("alice", "notes:read", sid="login-42")):
        async with Client(server) as client:
            assert not (await client.call_tool("read_note", {"title": "welcome"})).is_error
    with acting_as(access_token("mallory", "notes:read", sid="login-42")):
        async with Client(server) as client:
            assert (await denial(client, "read_note")).data == {"reason": "session_binding_mismatch"}


async def test_each_legacy_connection_is_its_own_session(server: MCPServer, audit: MemoryAuditSink) -> None:
    token = access_token("alice", "notes:read")
    with acting_as(token):
        for _ in range(2):
            async with Client(server, mode="legacy") as client:
                await client.call_tool("read_note", {"title": "welcome"})
                await client.call_tool("read_note", {"title": "welcome"})
        async with Client(server) as client:  # 2026-07-28: the token is the session
            await client.call_tool("read_note", {"title": "welcome"})
            await client.call_tool("read_note", {"title": "welcome"})
    opened = [e.session_id for e in audit.events if e.kind == EventKind.SESSION_OPENED]
    assert len(opened) == 3 and len(set(opened)) == 3
    assert opened[2].startswith("token:")


async def test_revocation_stops_the_next_call_but_not_one_already_running(mode: str, audit: MemoryAuditSink) -> None:
    guard = Guard(audit=[audit])
    server = MCPServer("slow", middleware=[GuardMiddleware(guard)])
    started, release = anyio.Event(), anyio.Event()

    @server.tool()
    @guard.tool(scopes="jobs:run")
    async def long_job() -> str:
        started.set()
        await release.wait()
        return "finished"

    results: list[str] = []
    with acting_as(access_token("alice", "jobs:run")):
        async with Client(server, mode=mode) as client:

            async def run() -> None:
                result = await client.call_tool("long_job", {})
                results.append(result.content[0].text)  # type: ignore[union-attr]

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run)
                await started.wait()
                session_id = next(e.session_id for e in audit.events if e.kind == EventKind.SESSION_OPENED)
                await guard.revoke(session_id=session_id, reason="operator request")
                release.set()
            assert results == ["finished"]
            assert (await denial(client, "long_job")).data == {"reason": "session_revoked"}


@pytest.mark.parametrize(
    ("revoke", "code"),
    [
        ({"subject": "alice"}, "subject_revoked"),
        ({"client_id": "test-client"}, "client_revoked"),
        ({"token_id": "jti-9"}, "token_revoked"),
    ],
)
async def test_revocation_by_identity_through_the_server(
    guard: Guard, server: MCPServer, mode: str, revoke: dict[str, str], code: str
) -> None:
    with acting_as(access_token("alice", "notes:read", jti="jti-9")):
        async with Client(server, mode=mode) as client:
            assert not (await client.call_tool("read_note", {"title": "welcome"})).is_error
            await guard.revoke(**revoke)
            assert (await denial(client, "read_note")).data == {"reason": code}


async def test_guarded_tools_refuse_to_run_without_the_middleware(mode: str) -> None:
    guard = Guard()
    server = MCPServer("forgot-the-middleware")
    ran: list[bool] = []

    @server.tool()
    @guard.tool(scopes="notes:read")
    def read_note() -> str:
        ran.append(True)
        return "secret"

    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            result = await client.call_tool("read_note", {})
    assert result.is_error and ran == []


async def test_the_decorator_leaves_schema_docstring_and_context_alone() -> None:
    plain, guarded = MCPServer("plain"), MCPServer("guarded", middleware=[GuardMiddleware(Guard())])
    guard = Guard()

    async def summarize(path: str, limit: int = 10) -> str:
        """Summarize a file."""
        return path

    plain.tool()(summarize)
    guarded.tool()(guard.tool(scopes="files:read")(summarize))
    [a], [b] = await plain.list_tools(), await guarded.list_tools()
    assert a.model_dump() == b.model_dump()
    assert guard.tool(name="other")(summarize).__doc__ == "Summarize a file."


class Lookup:
    """A tool that is an object with an asynchronous ``__call__``, which the SDK awaits."""

    __name__ = "lookup"  # the SDK names a tool's arguments model after it

    async def __call__(self, key: str) -> str:
        return f"looked up {key}"


def files_object(guard: Guard) -> Any:
    """An object whose tool is a method, declared in its class body and registered bound."""

    class Files:
        @guard.tool(scopes="files:read")
        async def read(self, path: str, limit: int = 10) -> str:
            return f"{path} ({limit})"

    return Files()


async def test_a_callable_object_and_a_bound_method_are_tools_as_without_the_guard(mode: str) -> None:
    guard = Guard()
    plain, guarded = MCPServer("plain"), MCPServer("guarded", middleware=[GuardMiddleware(guard)])
    plain.add_tool(Lookup(), name="lookup")
    guarded.add_tool(guard.tool("lookup", scopes="files:read")(Lookup()), name="lookup")
    guarded.add_tool(files_object(guard).read, name="read")
    schemas = {tool.name: tool.input_schema for tool in await guarded.list_tools()}
    assert guard.tools["read"].input_schema == schemas["read"]  # no `self`: the schema the policy judges
    with acting_as(access_token("alice", "files:read")):
        looked_up = {}
        for server in (plain, guarded):
            async with Client(server, mode=mode) as client:
                result = await client.call_tool("lookup", {"key": "x"})
                looked_up[server.name] = (result.is_error, result.structured_content)
        assert looked_up["guarded"] == looked_up["plain"] == (False, {"result": "looked up x"})
        async with Client(guarded, mode=mode) as client:
            read = await client.call_tool("read", {"path": "a.txt"})
    assert (read.is_error, read.structured_content) == (False, {"result": "a.txt (10)"})


async def test_a_failing_policy_denies_without_leaking(mode: str, audit: MemoryAuditSink) -> None:
    guard = Guard(policy=ExplodingPolicy(), audit=[audit])
    server = notes_server(guard)
    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            error = await denial(client, "read_note", {"title": "welcome"})
    assert error.data == {"reason": "policy_error"}
    assert "boom" not in error.message
    decided = last_decision(audit)
    assert decided.reasons == ("policy_error",)
    assert decided.detail == "RuntimeError: policy secret: boom"  # the operator's record names the error


def lowlevel_server(guard: Guard) -> Server[Any]:
    tools = [
        types.Tool(name="echo", input_schema={"type": "object"}),
        types.Tool(name="wipe", input_schema={"type": "object"}),
    ]

    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        token = get_access_token()
        call = current_call()
        text = f"{params.name}:{token.scopes if token else None}:{call.tool.name if call else None}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Server[Any] = Server("lowlevel", on_list_tools=list_tools, on_call_tool=call_tool)
    guard.declare(ToolSpec("echo", scopes=frozenset({"echo"})))
    guard.declare(ToolSpec("wipe", scopes=frozenset({"wipe"})))
    server.middleware.append(GuardMiddleware(guard))
    return server


async def test_low_level_server(mode: str, audit: MemoryAuditSink) -> None:
    server = lowlevel_server(Guard(audit=[audit]))
    with acting_as(access_token("alice", "echo other")):
        async with Client(server, mode=mode) as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
            result = await client.call_tool("echo", {})
            assert result.content[0].text == "echo:['echo']:echo"  # type: ignore[union-attr]
            assert (await denial(client, "wipe")).data == {
                "reason": "insufficient_scope",
                "missing_scopes": ["wipe"],
                "required_scopes": ["wipe"],
            }
            assert (await denial(client, "nothing")).data == {"reason": "tool_not_found"}


def whoami_server(view: Callable[[AccessToken], dict[str, Any]]) -> MCPServer:
    """A guarded server whose one tool, ``whoami`` (needing ``notes:read``), returns ``view``
    of the caller's token as the tool sees it."""
    guard = Guard()
    server = MCPServer("whoami", middleware=[GuardMiddleware(guard)])

    @server.tool()
    @guard.tool(scopes="notes:read")
    async def whoami() -> dict[str, Any]:
        token = get_access_token()
        assert token is not None
        return view(token)

    return server


@pytest.mark.parametrize(
    "credential",
    [
        access_token("alice", "notes:read billing:write"),
        access_token("alice", ["notes:read", "billing:write"], scp=["notes:read", "billing:write"]),
    ],
)
async def test_the_tool_sees_no_scope_beyond_the_approved_set(mode: str, credential: AccessToken) -> None:
    server = whoami_server(lambda token: {"scopes": token.scopes, "claims": token.claims, "bearer": token.token})
    with acting_as(credential):
        async with Client(server, mode=mode) as client:
            seen = (await client.call_tool("whoami", {})).structured_content or {}
    assert seen["scopes"] == ["notes:read"]
    assert seen["bearer"] == ""
    claims = seen["claims"]
    assert claims.get("scope", "notes:read") == "notes:read"
    assert claims.get("scp", ["notes:read"]) == ["notes:read"]
    assert "billing:write" not in repr(claims)


async def test_no_tool_changes_by_mistake_what_the_next_call_sees(mode: str) -> None:
    """The trimmed caller is shared by a token's calls, so it refuses every change."""
    guard = Guard()
    server = MCPServer("tamper", middleware=[GuardMiddleware(guard)])
    refusals: list[str] = []

    @server.tool()
    @guard.tool(scopes="notes:read")
    async def tamper() -> list[str]:
        token = get_access_token()
        assert token is not None and token.claims is not None
        changes = (
            lambda: token.scopes.append("admin"),
            lambda: token.scopes.__setitem__(0, "admin"),
            lambda: token.claims.__setitem__("scope", "admin"),  # type: ignore[union-attr]
            lambda: token.claims["act"].update(sub="mallory"),  # type: ignore[index]
            lambda: setattr(token, "scopes", ["admin"]),
        )
        for change in changes:
            try:
                change()
            except (TypeError, AttributeError, ValueError) as error:
                refusals.append(type(error).__name__)
        return list(token.scopes)

    credential = access_token("alice", "notes:read admin", act={"sub": "agent"})
    with acting_as(credential):
        async with Client(server, mode=mode) as client:
            first = (await client.call_tool("tamper", {})).structured_content
            second = (await client.call_tool("tamper", {})).structured_content
    assert first == second == {"result": ["notes:read"]}
    assert len(refusals) == 10  # every change, on both calls


async def test_a_token_verified_anew_with_another_answer_is_trimmed_afresh(mode: str) -> None:
    """An introspected token asked about again may come back with new claims: the tool sees those."""
    server = whoami_server(lambda token: {"tenant": (token.claims or {})["tenant"], "expires_at": token.expires_at})
    seen = []
    for tenant, lifetime in (("acme", 600), ("globex", 7200)):
        credential = access_token("alice", "notes:read", token="one-bearer", tenant=tenant, expires_in=lifetime)
        with acting_as(credential):
            async with Client(server, mode=mode) as client:
                seen.append((await client.call_tool("whoami", {})).structured_content)
        assert seen[-1] == {"tenant": tenant, "expires_at": credential.expires_at}


class TenantToken(AccessToken):
    tenant: str = ""
    groups: set[str] = Field(default_factory=set)


async def test_a_token_verified_anew_with_another_resource_or_added_field_is_seen_afresh(mode: str) -> None:
    """Everything the credential says but its bearer string counts: its resource (the audience,
    when the token names none) and the fields its verifier's class adds, changed in place too."""

    def view(token: AccessToken) -> dict[str, Any]:
        call = current_call()
        assert isinstance(token, TenantToken) and call is not None
        return {"tenant": token.tenant, "groups": sorted(token.groups), "audience": list(call.principal.audience)}

    server = whoami_server(view)
    base = dict(access_token("alice", "notes:read", token="one-bearer"))
    for tenant, resource in (("acme", "https://a.example/mcp"), ("globex", "https://b.example/mcp")):
        credential = TenantToken(**{**base, "resource": resource}, tenant=tenant, groups={"readers"})
        with acting_as(credential):
            async with Client(server, mode=mode) as client:
                seen = (await client.call_tool("whoami", {})).structured_content
        assert seen == {"tenant": tenant, "groups": ["readers"], "audience": [resource]}
    credential.groups.clear()  # the verifier narrows the object it handed over
    with acting_as(credential):
        async with Client(server, mode=mode) as client:
            seen = (await client.call_tool("whoami", {})).structured_content
    assert seen == {"tenant": "globex", "groups": [], "audience": ["https://b.example/mcp"]}


def nested(depth: int) -> Any:
    """``"bottom"`` inside ``depth`` lists, each the only item of the one around it."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> tuple[int, Any]:
    """How many lists deep `nested` went, and the innermost list."""
    levels = 1
    while isinstance(value[0], list):
        value, levels = value[0], levels + 1
    return levels, value


async def test_claims_nested_deeper_than_a_recursive_copy_goes_reach_the_tool_read_only(mode: str) -> None:
    """600 levels: past a copy two frames a level deep (the recursion limit is 1,000), within what
    the guard's own identification takes."""

    def view(token: AccessToken) -> dict[str, Any]:
        levels, innermost = depth_of((token.claims or {})["profile"])
        with pytest.raises(TypeError, match="read-only"):
            innermost.append("top")
        return {"levels": levels, "bottom": innermost[0]}

    with acting_as(access_token("alice", "notes:read", profile=nested(600))):
        async with Client(whoami_server(view), mode=mode) as client:
            seen = (await client.call_tool("whoami", {})).structured_content
    assert seen == {"levels": 600, "bottom": "bottom"}


class HandleToken(AccessToken):
    handle: Any = None


async def test_a_token_the_tool_cannot_be_given_read_only_refuses_the_call_before_it_runs(
    mode: str, audit: MemoryAuditSink
) -> None:
    """A value no copy can be made of (a lock) cannot go to the tool without being the verifier's
    own: the call, allowed and recorded, is refused as the guard error it became."""
    guard = Guard(audit=[audit])
    server = MCPServer("handles", middleware=[GuardMiddleware(guard)])
    ran: list[str] = []

    @server.tool()
    @guard.tool(scopes="notes:read")
    async def whoami() -> str:
        ran.append("whoami")
        return "ran"

    credential = HandleToken(**dict(access_token("alice", "notes:read")), handle=threading.Lock())
    with acting_as(credential):
        async with Client(server, mode=mode) as client:
            error = await denial(client, "whoami")
    assert error.data == {"reason": "guard_error"}
    assert error.message == "The call was refused because the authorization check failed internally."
    assert ran == []
    calls = [e for e in audit.events if e.kind in (EventKind.CALL_DECIDED, EventKind.CALL_COMPLETED)]
    assert [(e.kind, e.outcome) for e in calls] == [
        (EventKind.CALL_DECIDED, "allowed"),
        (EventKind.CALL_DECIDED, "denied"),
    ]
    assert calls[1].reasons == ("guard_error",)
    assert (
        calls[1].detail
        == "refused after it was allowed and recorded: the caller's token could not be trimmed for the tool"
    )
    assert (calls[1].tool, calls[1].session_id) == (calls[0].tool, calls[0].session_id)


class Tenant(BaseModel):
    name: str
    admin: bool = False


class GroupToken(AccessToken):
    groups: set[str] = Field(default_factory=set)
    tenant: Tenant | None = None
    raw: Any = None  # a bytearray


async def test_fields_the_verifiers_class_adds_are_read_only_and_never_the_verifiers_own(mode: str) -> None:
    guard = Guard()
    server = MCPServer("groups", middleware=[GuardMiddleware(guard)])
    refusals: list[str] = []

    @server.tool()
    @guard.tool(scopes="notes:read")
    async def tamper() -> dict[str, Any]:
        token = get_access_token()
        assert isinstance(token, GroupToken) and token.tenant is not None
        tenant = token.tenant
        changes = (
            lambda: token.groups.add("admins"),
            lambda: setattr(tenant, "admin", True),
            lambda: token.raw.extend(b"!"),
        )
        for change in changes:
            try:
                change()
            except (TypeError, AttributeError, ValueError) as error:
                refusals.append(type(error).__name__)
        return {"groups": sorted(token.groups), "admin": tenant.admin, "raw": token.raw.decode()}

    credential = GroupToken(
        **dict(access_token("alice", "notes:read")),
        groups={"readers"},
        tenant=Tenant(name="acme"),
        raw=bytearray(b"id"),
    )
    with acting_as(credential):
        async with Client(server, mode=mode) as client:
            first = (await client.call_tool("tamper", {})).structured_content
            second = (await client.call_tool("tamper", {})).structured_content
    assert first == second == {"groups": ["readers"], "admin": False, "raw": "id"}
    assert len(refusals) == 6  # every change, on both calls
    assert (credential.groups, credential.tenant, credential.raw) == ({"readers"}, Tenant(name="acme"), b"id")


def test_read_only_walks_any_depth_and_shares_nothing_changeable() -> None:
    from mcp_guard.integrations.read_only import ReadOnlyList, read_only

    looped: list[Any] = ["x"]
    looped.append(looped)
    note = {"lines": ["a"]}
    original = {"loop": looped, "deep": nested(1200), "tags": {"a"}, "same": [note, note], "other": Tenant(name="n")}
    seen = read_only(original)
    assert type(seen["loop"]) is ReadOnlyList and seen["loop"][1] is seen["loop"]  # a cycle stays a cycle
    assert depth_of(seen["deep"]) == (1200, ["bottom"])
    assert seen["tags"] == frozenset({"a"}) and type(seen["tags"]) is frozenset
    assert seen["same"][0] is seen["same"][1] and seen["same"][0] == note
    assert isinstance(seen["other"], Tenant) and dict(seen["other"]) == {"name": "n", "admin": False}
    with pytest.raises(ValueError, match="frozen"):
        seen["other"].name = "m"


def test_read_only_values_copy_as_plain_ones() -> None:
    import copy
    import pickle

    from mcp_guard.integrations.read_only import ReadOnlyUser, read_only, read_only_token

    token = read_only_token(access_token("alice", "a b", act={"sub": "agent"}), token="")
    assert token.model_dump()["claims"]["act"] == {"sub": "agent"} and '"scopes":["a","b"]' in token.model_dump_json()
    for duplicate in (copy.copy(token.scopes), copy.deepcopy(token.scopes), pickle.loads(pickle.dumps(token.scopes))):  # noqa: S301 (our own bytes)
        assert type(duplicate) is list and duplicate == ["a", "b"]
        duplicate.append("c")  # a copy is the tool's own
    claims = copy.deepcopy(token.claims)
    assert type(claims) is dict and type(claims["act"]) is dict
    assert type(copy.deepcopy(token).claims) is dict  # model_copy(deep=True) as well
    user = ReadOnlyUser(token)
    with pytest.raises(AttributeError, match="read-only"):
        user.access_token = access_token("mallory", "admin")
    with pytest.raises(TypeError, match="read-only"):
        read_only({"n": [{"x": 1}]})["n"][0]["x"] = 2
    with pytest.raises(TypeError, match="read-only"):
        token.scopes.__init__(["admin"])  # type: ignore[misc]


def test_the_read_only_token_keeps_its_verifiers_class_and_fields() -> None:
    from mcp_guard.integrations.read_only import read_only_token

    class TenantToken(AccessToken):
        tenant: str = ""

    custom = TenantToken(**dict(access_token("alice", "a")), tenant="acme")
    seen = read_only_token(custom, token="")
    assert isinstance(seen, TenantToken) and seen.tenant == "acme" and seen.token == ""
    assert type(read_only_token(custom)) is type(seen)  # one frozen class per verifier class
    with pytest.raises(ValueError, match="frozen"):
        seen.tenant = "evil"


@pytest.mark.parametrize(
    ("advance", "code"),
    [(16 * 60, "session_idle_expired"), (None, "session_expired")],
)
async def test_ended_sessions_refuse_the_next_call(
    mode: str, audit: MemoryAuditSink, advance: float | None, code: str
) -> None:
    clock = Clock(time.time())
    guard = Guard(audit=[audit], clock=clock, session_settings=SessionSettings(absolute_ttl=1200, idle_ttl=900))
    server = notes_server(guard)
    with acting_as(access_token("alice", "notes:read", expires_in=7200)):
        async with Client(server, mode=mode) as client:
            assert not (await client.call_tool("read_note", {"title": "welcome"})).is_error
            if advance is None:  # stay active, but outlive the absolute lifetime
                for _ in range(3):
                    clock.advance(300)
                    assert not (await client.call_tool("read_note", {"title": "welcome"})).is_error
                clock.advance(301)
            else:
                clock.advance(advance)
            assert (await denial(client, "read_note", {"title": "welcome"})).data == {"reason": code}
    assert [e.kind for e in audit.events].count(EventKind.SESSION_EXPIRED) == 1


async def test_a_call_that_runs_past_the_idle_limit_leaves_its_session_alive(
    mode: str, audit: MemoryAuditSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mcp_guard.integrations.mcp_sdk.LONG_CALL", 0.05)  # a long call, made short
    clock = Clock(time.time())
    guard = Guard(audit=[audit], clock=clock, session_settings=SessionSettings(idle_ttl=900))
    mcp = MCPServer("jobs", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool(scopes="jobs:run")
    async def build() -> str:
        await anyio.sleep(0.06)
        clock.advance(16 * 60)  # the build ran past the idle limit
        return "built"

    with acting_as(access_token("alice", "jobs:run", expires_in=7200)):
        async with Client(mcp, mode=mode) as client:
            assert not (await client.call_tool("build", {})).is_error
            clock.advance(60)  # the agent reads the result, then calls again
            assert not (await client.call_tool("build", {})).is_error
            clock.advance(901)  # and then goes quiet
            assert (await denial(client, "build", {})).data == {"reason": "session_idle_expired"}


def test_a_read_only_token_pickles_as_a_plain_one_and_odd_classes_fall_back() -> None:
    import pickle

    from mcp_guard.integrations.read_only import ReadOnlyAccessToken, read_only_token

    seen = read_only_token(Issued(**dict(access_token("alice", "a")), tenant="acme"), token="")
    plain = pickle.loads(pickle.dumps(seen))  # noqa: S301 (our own bytes)
    assert type(plain) is Issued and plain.tenant == "acme" and type(plain.scopes) is list

    class Registered(AccessToken):
        def __init_subclass__(cls, *, kind: str, **kwargs: Any) -> None:
            super().__init_subclass__(**kwargs)

    class Odd(Registered, kind="odd"):
        pass

    fallback = read_only_token(Odd(**dict(access_token("alice", "a"))), token="")
    assert type(fallback) is ReadOnlyAccessToken and fallback.scopes == ["a"]


class Issued(AccessToken):
    tenant: str = ""


async def test_a_task_a_tool_spawns_cannot_run_guarded_tools_once_the_call_ends(mode: str) -> None:
    import asyncio

    from mcp_guard.errors import UnguardedCallError

    guard = Guard()
    server = MCPServer("spawner", middleware=[GuardMiddleware(guard)])
    call_over = asyncio.Event()
    later: list[asyncio.Task[Any]] = []

    @server.tool()
    @guard.tool(scopes="pay")
    async def payout(amount: int) -> str:
        if amount == 1:  # inherits this call's context, admission included

            async def again() -> str:
                await call_over.wait()
                return await payout(5000)

            later.append(asyncio.get_running_loop().create_task(again()))
        return f"paid {amount}"

    with acting_as(access_token("alice", "pay")):
        async with Client(server, mode=mode) as client:
            assert (await client.call_tool("payout", {"amount": 1})).structured_content == {"result": "paid 1"}
    call_over.set()
    with pytest.raises(UnguardedCallError):
        await later[0]


async def test_a_tool_cannot_change_the_session_the_next_call_is_decided_on(mode: str) -> None:
    guard = Guard(audit=[MemoryAuditSink()], risk=RiskSettings(threshold=12, write=5))
    mcp = MCPServer("notes", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool(scopes="notes:write", risk=Risk.WRITE)
    async def write_note(title: str) -> str:
        call = current_call()
        assert call is not None and call.principal.scopes == {"notes:write", "admin"}  # requested, untrimmed
        seen = f"{call.session.risk_score:g} {sorted(call.session.history.tools)}"
        call.session.risk_score = 0.0  # a copy: the guard keeps scoring the stored session
        call.session.expires_at = math.inf
        call.session.history.tools.clear()
        return seen

    with acting_as(access_token("alice", "notes:write admin")):
        async with Client(mcp, mode=mode) as client:
            first = await client.call_tool("write_note", {"title": "a"})
            second = await client.call_tool("write_note", {"title": "b"})
            assert [first.content[0].text, second.content[0].text] == ["5 ['write_note']", "10 ['write_note']"]  # type: ignore[union-attr]
            assert (await denial(client, "write_note", {"title": "c"})).data["reason"] == "session_risk_exceeded"  # type: ignore[index]


async def test_a_request_naming_an_older_version_on_its_own_connection_opens_no_session_of_its_own() -> None:
    """In process on 2026-07-28 each request gets a connection of its own, with no channel back,
    and a client may stamp an older version on it: that request is no session to mint, or every
    call would open a fresh one and no session rule (risk, lifetimes, revocation) would hold."""
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit], risk=RiskSettings(threshold=12, write=5))
    mcp = MCPServer("notes", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool(scopes="notes:write", risk=Risk.WRITE)
    async def write_note() -> str:
        return "written"

    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2025-11-25",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    outcomes = []
    with acting_as(access_token("alice", "notes:write")):
        async with Client(mcp) as client:
            dispatcher = client.session._dispatcher  # sends the envelope as given: the typed client stamps its own
            for _ in range(3):
                try:
                    await dispatcher.send_raw_request(
                        "tools/call", {"name": "write_note", "arguments": {}, "_meta": envelope}
                    )
                    outcomes.append("ok")
                except MCPError as error:
                    outcomes.append(error.error.data["reason"])  # type: ignore[index]
    assert outcomes == ["ok", "ok", "session_risk_exceeded"]
    assert len([event for event in audit.events if event.kind == EventKind.SESSION_OPENED]) == 1


def reads(client: Client) -> dict[str, Callable[[], Any]]:
    """Every way to read the server's data without a tool, by method."""
    return {
        "resources/read": lambda: client.read_resource("notes://index"),
        "resources/list": client.list_resources,
        "resources/templates/list": client.list_resource_templates,
        "prompts/get": lambda: client.get_prompt("summarise", {"title": "welcome"}),
        "prompts/list": client.list_prompts,
    }


@pytest.mark.parametrize(
    ("revoke", "reason"),
    [({"subject": "alice"}, ReasonCode.SUBJECT_REVOKED), ({"session_id": ...}, ReasonCode.SESSION_REVOKED)],
)
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # ping, gone from 2026-07-28
async def test_resources_and_prompts_are_served_only_to_a_caller_a_tool_call_would_accept(
    server: MCPServer, guard: Guard, audit: MemoryAuditSink, mode: str, revoke: dict[str, Any], reason: str
) -> None:
    """A revoked caller, or one whose session was revoked, reads nothing more: no resource, no
    prompt, no list of them; each refusal is recorded."""
    with acting_as(access_token("alice", "notes:read")):
        async with Client(server, mode=mode) as client:
            assert (await client.read_resource("notes://index")).contents[0].text == "welcome"  # type: ignore[union-attr]
            assert (await client.get_prompt("summarise", {"title": "welcome"})).messages
            await client.call_tool("read_note", {"title": "welcome"})  # opens the governed session
            session_id = last_decision(audit).session_id
            await guard.revoke(**{key: session_id if value is ... else value for key, value in revoke.items()})
            for method, read in reads(client).items():
                with pytest.raises(MCPError) as raised:
                    await read()
                assert (raised.value.error.code, raised.value.error.data) == (GUARD_DENIED, {"reason": reason}), method
            if mode == "legacy":  # ping is gone from 2026-07-28
                await client.send_ping()  # liveness carries no data
    refused = [
        e for e in audit.events if e.kind in (EventKind.CALL_DECIDED, EventKind.TOKEN_REJECTED) and e.tool is None
    ]
    assert [e.detail for e in refused] == [f"{method} request" for method in reads(client)]
    assert {(e.subject, e.session_id, e.outcome, e.reasons[0]) for e in refused} == {
        ("alice", session_id, "denied", reason)
    }


async def test_resources_and_prompts_need_a_caller(server: MCPServer, mode: str) -> None:
    async with Client(server, mode=mode) as client:
        for method, read in reads(client).items():
            with pytest.raises(MCPError) as raised:
                await read()
            assert raised.value.error.data == {"reason": ReasonCode.TOKEN_MISSING}, method


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # ping and logging levels
async def test_every_other_method_a_server_serves_needs_a_caller_too(mode: str, audit: MemoryAuditSink) -> None:
    """Not only those the guard knows of: a low-level server may serve completions, logging
    levels or an extension's methods; only the handshake and ping are served to anyone."""
    served: list[str] = []

    async def complete(ctx: ServerRequestContext[Any], params: Any) -> types.CompleteResult:
        served.append("completion/complete")
        return types.CompleteResult(completion=types.Completion(values=["welcome"]))

    async def set_level(ctx: ServerRequestContext[Any], params: Any) -> types.EmptyResult:
        served.append("logging/setLevel")
        return types.EmptyResult()

    server: Server[Any] = Server("lowlevel", on_completion=complete, on_set_logging_level=set_level)
    server.middleware.append(GuardMiddleware(Guard(audit=[audit])))
    async with Client(server, mode=mode) as client:
        if mode == "legacy":  # ping is gone from 2026-07-28
            await client.send_ping()
        for attempt in (
            lambda: client.complete(types.PromptReference(type="ref/prompt", name="p"), {"name": "a", "value": "w"}),
            lambda: client.set_logging_level("info"),
        ):
            with pytest.raises(MCPError) as raised:
                await attempt()
            assert raised.value.error.data == {"reason": ReasonCode.TOKEN_MISSING}
    assert served == []
    assert [e.detail for e in audit.events] == ["completion/complete request", "logging/setLevel request"]


async def test_a_served_tool_the_guard_does_not_know_is_named_in_the_log_once(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard()
    mcp = MCPServer("files", middleware=[GuardMiddleware(guard)])

    @mcp.tool(name="read-file")  # renamed by the server, declared by the guard as read_file
    @guard.tool(scopes="files:read")
    async def read_file(path: str) -> str:
        return path

    with acting_as(access_token("alice", "files:read")):
        async with Client(mcp) as client:
            for _ in range(2):
                assert (await client.list_tools()).tools == []
    warned = [record.getMessage() for record in caplog.records if "no declaration" in record.getMessage()]
    assert len(warned) == 1 and "tool 'read-file'" in warned[0] and "guard.tool(name=...)" in warned[0]


async def test_a_session_store_that_does_not_answer_holds_a_long_calls_response_only_so_long(
    mode: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mcp_guard.session.memory import MemorySessionStore

    monkeypatch.setattr("mcp_guard.integrations.mcp_sdk.LONG_CALL", 0.05)
    monkeypatch.setattr("mcp_guard.guard.ACTIVITY_TIMEOUT", 0.2)

    class Stalling(MemorySessionStore):
        async def record_activity(self, session: Any, at: float) -> None:
            await anyio.sleep(3600)  # a store that does not answer

    guard = Guard(sessions=Stalling())
    mcp = MCPServer("jobs", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool()
    async def build() -> str:
        await anyio.sleep(0.06)
        return "built"

    with acting_as(access_token("alice", "")), anyio.fail_after(5):
        async with Client(mcp, mode=mode) as client:
            assert (await client.call_tool("build", {})).structured_content == {"result": "built"}
    assert any("did not restart the idle timer" in record.getMessage() for record in caplog.records)
