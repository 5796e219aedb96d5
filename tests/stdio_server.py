"""A guarded notes server over stdio whose only identity is a configured workload token.

Started by tests as a subprocess: the issuer, its JWKS, the resource and the token come from
the environment.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer

from mcp_guard import Guard, GuardMiddleware, JWTVerifier, TrustedIssuer, current_call
from mcp_guard.identity.workload import WorkloadIdentity

verifier = JWTVerifier(
    [
        TrustedIssuer(
            issuer=os.environ["TEST_ISSUER"], audience=os.environ["TEST_RESOURCE"], jwks_uri=os.environ["TEST_JWKS"]
        )
    ]
)
workload = WorkloadIdentity.from_env(verifier)
guard = Guard(identifier=workload)


@asynccontextmanager
async def lifespan(server: MCPServer) -> AsyncIterator[dict[str, object]]:
    await workload.refresh()
    yield {}


mcp = MCPServer("stdio-notes", middleware=[GuardMiddleware(guard)], lifespan=lifespan)


@mcp.tool()
@guard.tool(scopes="notes:read")
async def whoami() -> str:
    """Who the guard says is calling."""
    call = current_call()
    return f"{call.principal.subject} via {call.session.id.split(':')[0]}" if call else "nobody"


@mcp.tool()
@guard.tool(scopes="notes:write")
async def write_note(text: str) -> str:
    """Needs a scope the workload token lacks."""
    return text


if __name__ == "__main__":
    mcp.run("stdio")
