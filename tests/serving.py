"""Serving ASGI apps for tests: uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from mcp_guard import BearerVerifier, Guard, GuardTokenVerifier, JWTVerifier, TrustedIssuer
from support import notes_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: ASGIApp, port: int) -> Iterator[None]:
    """Run ``app`` on 127.0.0.1:``port`` until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def guarded_notes(guard: Guard, verifier: BearerVerifier, issuer: str, resource: str) -> MCPServer:
    """The test notes server, its bearer tokens checked by ``verifier`` for ``resource``."""
    auth = AuthSettings(issuer_url=issuer, resource_server_url=resource, validate_token_resource=True)
    return notes_server(guard, token_verifier=GuardTokenVerifier(verifier, guard), auth=auth)


@contextmanager
def serving_jwt_notes(
    guard: Guard, issuer: str, jwks_uri: str, wrap: Callable[[ASGIApp, JWTVerifier, str], ASGIApp] | None = None
) -> Iterator[str]:
    """The notes server taking JWT access tokens from ``issuer``, served on loopback; yields its
    resource URL. ``wrap`` puts middleware (such as `GuardHTTP`) around the app."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    verifier = JWTVerifier([TrustedIssuer(issuer=issuer, audience=resource, jwks_uri=jwks_uri)])
    app = guarded_notes(guard, verifier, issuer, resource).streamable_http_app()
    with serving(wrap(app, verifier, resource) if wrap else app, port):
        yield resource
