"""Serving ASGI apps for tests: uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from mcp_guard import BearerVerifier, Guard, GuardTokenVerifier
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
