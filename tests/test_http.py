"""The guard over streamable HTTP: uvicorn on 127.0.0.1, bearer tokens, both protocol generations."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.settings import AuthSettings

from mcp_guard import GUARD_DENIED, EventKind, Guard, MemoryAuditSink
from mcp_guard.testing import StaticTokenVerifier, access_token, acting_as
from serving import free_port, serving
from support import notes_server

pytestmark = pytest.mark.anyio

TOKENS = {
    "reader-token": access_token("alice", "notes:read notes:admin-audit"),
    "writer-token": access_token("bob", "notes:write"),
    "mallory-token": access_token("mallory", "notes:read"),
}


@pytest.fixture
def http_server(guard: Guard) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = AuthSettings(
        issuer_url="https://auth.example.test", resource_server_url=f"{url}/mcp", validate_token_resource=False
    )
    server = notes_server(guard, token_verifier=StaticTokenVerifier(TOKENS), auth=auth)
    with serving(server.streamable_http_app(), port):
        yield f"{url}/mcp"


@pytest.fixture
def connect(http_server: str, mode: str) -> object:
    async def open_client(bearer: str) -> Client:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"})
        return Client(streamable_http_client(http_server, http_client=http), mode=mode)

    return open_client


async def test_calls_are_authorized_and_trimmed_over_http(connect: object, audit: MemoryAuditSink, mode: str) -> None:
    async with await connect("reader-token") as client:  # type: ignore[operator]
        listed = await client.list_tools()
        assert [tool.name for tool in listed.tools] == ["read_note"]
        result = await client.call_tool("read_note", {"title": "welcome"})
        assert (result.structured_content or {})["scopes"] == ["notes:read"]
        with pytest.raises(MCPError) as raised:
            await client.call_tool("write_note", {"title": "t", "text": "x"})
        error = raised.value.error
        assert error.code == GUARD_DENIED
        assert error.data == {
            "reason": "insufficient_scope",
            "missing_scopes": ["notes:write"],
            "required_scopes": ["notes:write"],
        }
        with pytest.raises(MCPError) as raised:
            await client.call_tool("re\u0430d_note", {"title": "welcome"})
        assert raised.value.error.data == {"reason": "tool_not_found"}
    opened = [e for e in audit.events if e.kind == EventKind.SESSION_OPENED]
    assert len(opened) == 1
    # legacy streamable HTTP: the transport's Mcp-Session-Id is the session; 2026-07-28: the token
    assert opened[0].session_id.startswith("mcp:" if mode == "legacy" else "token:")


async def test_writer_can_write_over_http(connect: object) -> None:
    async with await connect("writer-token") as client:  # type: ignore[operator]
        result = await client.call_tool("write_note", {"title": "t", "text": "x"})
        assert (result.structured_content or {})["scopes"] == ["notes:write"]


async def test_revoked_subject_is_refused_over_http(connect: object, guard: Guard) -> None:
    async with await connect("reader-token") as client:  # type: ignore[operator]
        assert not (await client.call_tool("read_note", {"title": "welcome"})).is_error
        await guard.revoke(subject="alice")
        with pytest.raises(MCPError) as raised:
            await client.call_tool("read_note", {"title": "welcome"})
        assert raised.value.error.data == {"reason": "subject_revoked"}


async def test_a_revoked_subject_reads_no_resource_or_prompt_over_http(connect: object, guard: Guard) -> None:
    async with await connect("reader-token") as client:  # type: ignore[operator]
        assert (await client.read_resource("notes://index")).contents
        await guard.revoke(subject="alice")
        for read in (lambda: client.read_resource("notes://index"), client.list_prompts):
            with pytest.raises(MCPError) as raised:
                await read()
            assert (raised.value.error.code, raised.value.error.data) == (GUARD_DENIED, {"reason": "subject_revoked"})


async def test_missing_or_unknown_bearer_gets_401(http_server: str) -> None:
    async with httpx2.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            response = await http.post(http_server, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer ")


async def test_a_legacy_http_session_cannot_change_hands(http_server: str, audit: MemoryAuditSink) -> None:
    reader = httpx2.AsyncClient(headers={"Authorization": "Bearer reader-token"})
    async with Client(streamable_http_client(http_server, http_client=reader), mode="legacy") as client:
        await client.call_tool("read_note", {"title": "welcome"})
        session_id = next(e.session_id for e in audit.events if e.kind == EventKind.SESSION_OPENED)
        call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "read_note", "arguments": {}}}
        headers = {
            "Authorization": "Bearer mallory-token",
            "Mcp-Session-Id": session_id.removeprefix("mcp:"),
            "Mcp-Protocol-Version": "2025-11-25",
            "Accept": "application/json, text/event-stream",
        }
        async with httpx2.AsyncClient() as http:
            response = await http.post(http_server, json=call, headers=headers)
    assert response.status_code in (403, 404)  # the transport refuses a foreign credential outright
    assert not any(e.subject == "mallory" and e.outcome not in (None, "denied") for e in audit.events)


async def test_an_identity_set_around_the_server_never_reaches_an_anonymous_request(guard: Guard, mode: str) -> None:
    """Over HTTP the caller is the one the request authenticated as: a server started inside
    `acting_as` (a test helper, misused) does not lend that identity to requests without one."""
    port = free_port()
    app = notes_server(guard).streamable_http_app()  # no token verifier at all
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    async with anyio.create_task_group() as tasks:
        with acting_as(access_token("root", "notes:admin notes:read notes:write")):
            tasks.start_soon(server.serve)  # in this task's context, so in the identity's
        while not server.started:
            await anyio.sleep(0.01)
        try:
            async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp"), mode=mode) as client:
                assert (await client.list_tools()).tools == []
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("read_note", {"title": "welcome"})
        finally:
            server.should_exit = True
    assert refused.value.error.code == GUARD_DENIED and refused.value.error.data["reason"] == "token_missing"
