"""Against a real, independent authorization server: oidc-provider, on loopback.

Tokens come from its token endpoint (client credentials, RFC 8707 resource indicators); the
guard finds its JWKS and its introspection endpoint from its metadata.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from mcp_guard import (
    EventKind,
    Guard,
    IntrospectionVerifier,
    JWTVerifier,
    MemoryAuditSink,
    Refused,
    TrustedIssuer,
)
from oidc_provider import OIDCProvider, serve_oidc_provider
from serving import free_port, guarded_notes, serving

pytestmark = pytest.mark.anyio

JWT_PORT, OPAQUE_PORT = free_port(), free_port()
JWT_RESOURCE = f"http://127.0.0.1:{JWT_PORT}/mcp"
OPAQUE_RESOURCE = f"http://127.0.0.1:{OPAQUE_PORT}/mcp"


@pytest.fixture(scope="module")
def provider() -> Iterator[OIDCProvider]:
    with serve_oidc_provider(JWT_RESOURCE, OPAQUE_RESOURCE) as running:
        yield running


async def test_jwt_access_tokens_verify_with_keys_found_by_discovery(provider: OIDCProvider) -> None:
    verifier = JWTVerifier([TrustedIssuer(issuer=provider.issuer, audience=JWT_RESOURCE, algorithms=("ES256",))])
    principal = await verifier.verify(provider.token(JWT_RESOURCE, "notes:read"))
    assert (principal.issuer, principal.subject, principal.client_id) == (provider.issuer, "agent", "agent")
    assert principal.scopes == {"notes:read"}
    assert principal.audience == (JWT_RESOURCE,)


async def test_a_token_for_another_resource_is_refused(provider: OIDCProvider) -> None:
    elsewhere = JWTVerifier([TrustedIssuer(issuer=provider.issuer, audience="http://127.0.0.1:1/mcp")])
    with pytest.raises(Refused) as raised:
        await elsewhere.verify(provider.token(JWT_RESOURCE))
    assert raised.value.code == "audience_mismatch"


async def test_opaque_tokens_verify_by_introspection_found_by_discovery(provider: OIDCProvider) -> None:
    verifier = await IntrospectionVerifier.discover(
        TrustedIssuer(issuer=provider.issuer, audience=OPAQUE_RESOURCE),
        client_id=provider.resource_server[0],
        client_secret=provider.resource_server[1],
    )
    principal = await verifier.verify(provider.token(OPAQUE_RESOURCE, "notes:read notes:write"))
    assert (principal.subject, principal.client_id) == ("agent", "agent")  # client credentials: the client
    assert principal.scopes == {"notes:read", "notes:write"}
    with pytest.raises(Refused) as raised:
        await verifier.verify("not-a-token-it-issued")
    assert raised.value.code == "token_inactive"


@pytest.fixture
def jwt_server(provider: OIDCProvider, guard: Guard) -> Iterator[str]:
    verifier = JWTVerifier([TrustedIssuer(issuer=provider.issuer, audience=JWT_RESOURCE)])
    server = guarded_notes(guard, verifier, provider.issuer, JWT_RESOURCE)
    with serving(server.streamable_http_app(), JWT_PORT):
        yield JWT_RESOURCE


async def test_a_guarded_server_with_real_tokens(
    provider: OIDCProvider, jwt_server: str, audit: MemoryAuditSink, mode: str
) -> None:
    token = provider.token(JWT_RESOURCE, "notes:read")
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with Client(streamable_http_client(jwt_server, http_client=http), mode=mode) as client:
        assert [tool.name for tool in (await client.list_tools()).tools] == ["read_note"]
        result = await client.call_tool("read_note", {"title": "welcome"})
        assert (result.structured_content or {})["scopes"] == ["notes:read"]
        with pytest.raises(MCPError) as raised:
            await client.call_tool("write_note", {"title": "t", "text": "x"})
        assert raised.value.error.data["missing_scopes"] == ["notes:write"]
    decided = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED]
    assert {e.issuer for e in decided} == {provider.issuer}
    assert token not in repr(audit.events)
