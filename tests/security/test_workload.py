"""Servers without an HTTP header act as a configured, verified workload identity."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from authority import RESOURCE, Authority
from mcp_guard import EventKind, Guard, IntrospectionVerifier, JWTVerifier, MemoryAuditSink, Refused, TrustedIssuer
from mcp_guard.identity.workload import WorkloadIdentity
from mcp_guard.testing import access_token, acting_as
from serving import free_port, serving
from support import notes_server

pytestmark = pytest.mark.anyio

STDIO_SERVER = Path(__file__).parent.parent / "stdio_server.py"


@pytest.fixture
def verifier(authority: Authority) -> JWTVerifier:
    return JWTVerifier([TrustedIssuer(issuer=authority.issuer, audience=RESOURCE, jwks_uri=authority.jwks_uri)])


async def test_calls_without_a_credential_act_as_the_workload(
    authority: Authority, verifier: JWTVerifier, audit: MemoryAuditSink, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_GUARD_TOKEN", authority.mint(sub="indexer", scope="notes:read"))
    workload = WorkloadIdentity.from_env(verifier)
    await workload.refresh()
    server: MCPServer = notes_server(Guard(identifier=workload, audit=[audit]))
    async with Client(server, mode=mode) as client:
        result = await client.call_tool("read_note", {"title": "welcome"})
        assert (result.structured_content or {})["text"] == "hello"
        with pytest.raises(MCPError) as raised:
            await client.call_tool("write_note", {"title": "t", "text": "x"})
        assert raised.value.error.data["reason"] == "insufficient_scope"
    decided = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED]
    assert {e.subject for e in decided} == {"indexer"}


async def test_the_workload_is_never_lent_to_an_anonymous_http_request(
    authority: Authority, verifier: JWTVerifier, audit: MemoryAuditSink, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same server served over HTTP as well, without a token verifier: a request without a
    credential is refused, not identified as the process's own workload."""
    monkeypatch.setenv("MCP_GUARD_TOKEN", authority.mint(sub="indexer", scope="notes:read"))
    workload = WorkloadIdentity.from_env(verifier)
    await workload.refresh()
    port = free_port()
    with serving(notes_server(Guard(identifier=workload, audit=[audit])).streamable_http_app(), port):
        async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp"), mode=mode) as client:
            assert (await client.list_tools()).tools == []
            with pytest.raises(MCPError) as raised:
                await client.call_tool("read_note", {"title": "welcome"})
    assert raised.value.error.data["reason"] == "token_missing"
    assert not [event for event in audit.events if event.subject == "indexer"]


async def test_a_credential_that_is_present_wins(
    authority: Authority, verifier: JWTVerifier, audit: MemoryAuditSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_GUARD_TOKEN", authority.mint(sub="indexer", scope="notes:read"))
    workload = WorkloadIdentity.from_env(verifier)
    await workload.refresh()
    with acting_as(access_token("alice", "notes:read")):
        async with Client(notes_server(Guard(identifier=workload, audit=[audit]))) as client:
            await client.call_tool("read_note", {"title": "welcome"})
    assert [e.subject for e in audit.events if e.kind == EventKind.CALL_DECIDED] == ["alice"]


async def test_a_rotated_token_file_is_picked_up_and_a_bad_one_ignored(
    authority: Authority, verifier: JWTVerifier, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(authority.mint(sub="indexer", scope="notes:read") + "\n")
    workload = WorkloadIdentity.from_file(verifier, token_file)
    assert (await workload.refresh()).scopes == {"notes:read"}
    token_file.write_text(authority.mint(sub="indexer", scope="notes:read notes:write"))
    assert (await workload.refresh()).scopes == {"notes:read", "notes:write"}
    token_file.write_text(authority.mint(sub="indexer", aud="https://elsewhere.test"))
    assert (await workload.refresh()).scopes == {"notes:read", "notes:write"}  # the last good one stays
    token_file.unlink()
    assert (await workload.refresh()).subject == "indexer"


async def test_no_usable_token_means_no_calls(verifier: JWTVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_GUARD_TOKEN", raising=False)
    workload = WorkloadIdentity.from_env(verifier)
    with pytest.raises(Refused) as raised:
        await workload.refresh()
    assert raised.value.code == "token_missing"
    with pytest.raises(Refused):
        workload.identify(None)
    monkeypatch.setenv("MCP_GUARD_TOKEN", "not-a-jwt")
    with pytest.raises(Refused) as raised:
        await workload.refresh()
    assert raised.value.code == "token_malformed"
    with pytest.raises(ValueError, match="exactly one"):
        WorkloadIdentity(verifier)


async def test_a_stdio_server_serves_as_its_workload(authority: Authority, mode: str) -> None:
    environment = {
        **os.environ,
        "MCP_GUARD_TOKEN": authority.mint(sub="stdio-worker", scope="notes:read"),
        "TEST_ISSUER": authority.issuer,
        "TEST_JWKS": authority.jwks_uri,
        "TEST_RESOURCE": RESOURCE,
    }
    params = StdioServerParameters(command=sys.executable, args=[str(STDIO_SERVER)], env=environment)
    async with Client(params, mode=mode) as client:
        result = await client.call_tool("whoami", {})
        assert result.content[0].text.startswith("stdio-worker via ")  # type: ignore[union-attr]
        with pytest.raises(MCPError) as raised:
            await client.call_tool("write_note", {"text": "x"})
        assert raised.value.error.data["reason"] == "insufficient_scope"


def asking_every_time(authority: Authority) -> IntrospectionVerifier:
    """An introspection verifier that keeps no answer, so each refresh asks the issuer again."""
    return IntrospectionVerifier(
        TrustedIssuer(issuer=authority.issuer, audience=RESOURCE),
        endpoint=f"{authority.issuer}/introspect",
        client_id=authority.client_id,
        client_secret=authority.client_secret,
        cache_ttl=0.000001,
    )


async def test_the_held_token_refused_for_good_leaves_no_identity(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad replacement token keeps the last good one, but the very token held, once the
    issuer says it is no longer active, stops acting at once; an outage keeps it."""
    verifier = asking_every_time(authority)
    now = int(time.time())
    authority.answers["workload-held"] = {
        "active": True, "iss": authority.issuer, "aud": RESOURCE, "sub": "indexer", "client_id": "indexer",
        "scope": "notes:read", "exp": now + 300, "iat": now,
    }  # fmt: skip
    monkeypatch.setenv("MCP_GUARD_TOKEN", "workload-held")
    workload = WorkloadIdentity.from_env(verifier)
    assert (await workload.refresh()).subject == "indexer"
    authority.answers["workload-held"] = 503  # the endpoint fails: nothing is known about the token
    assert (await workload.refresh()).subject == "indexer"
    authority.answers["workload-held"] = {"active": False}
    with pytest.raises(Refused) as raised:
        await workload.refresh()
    assert raised.value.code == "token_inactive"
    with pytest.raises(Refused):
        workload.identify(None)


@pytest.mark.parametrize("replacement", [None, "not-a-valid-token"])
async def test_a_held_token_its_issuer_revoked_is_dropped_when_no_good_replacement_comes(
    authority: Authority, monkeypatch: pytest.MonkeyPatch, replacement: str | None
) -> None:
    verifier = asking_every_time(authority)
    authority.answers["held-workload"] = {
        "active": True,
        "sub": "indexer",
        "client_id": "indexer",
        "aud": RESOURCE,
    }  # no exp
    monkeypatch.setenv("MCP_GUARD_TOKEN", "held-workload")
    workload = WorkloadIdentity.from_env(verifier)
    assert (await workload.refresh()).subject == "indexer"
    if replacement is None:
        monkeypatch.delenv("MCP_GUARD_TOKEN")
    else:
        monkeypatch.setenv("MCP_GUARD_TOKEN", replacement)
    assert (await workload.refresh()).subject == "indexer"  # still active: the held one is kept
    authority.answers["held-workload"] = {"active": False}  # the issuer revokes it
    with pytest.raises(Refused) as raised:
        await workload.refresh()
    assert raised.value.code == "token_inactive"
    with pytest.raises(Refused):
        workload.identify(None)


async def test_a_verifier_that_breaks_on_the_held_token_leaves_no_identity(
    verifier: JWTVerifier, authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Breaking:
        """The real verifier, until it starts failing with something other than a refusal."""

        issuers = verifier.issuers
        broken = False

        async def verify(self, token: str) -> Any:
            if self.broken:
                raise RuntimeError("verifier bug")
            return await verifier.verify(token)

    breaking = Breaking()
    monkeypatch.setenv("MCP_GUARD_TOKEN", authority.mint(sub="indexer"))
    workload = WorkloadIdentity.from_env(breaking)
    assert (await workload.refresh()).subject == "indexer"
    monkeypatch.delenv("MCP_GUARD_TOKEN")
    breaking.broken = True
    with pytest.raises(Refused) as raised:
        await workload.refresh()
    assert raised.value.code == "guard_error"
    with pytest.raises(Refused):
        workload.identify(None)
