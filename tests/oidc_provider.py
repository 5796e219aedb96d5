"""oidc-provider (npm), a certified OAuth 2.0 / OpenID Connect server, run on loopback for tests.

``make test`` installs it into ``tests/oidc/node_modules`` (``npm ci``); ``server.mjs`` there
configures client credentials, resource indicators, JWT access tokens and introspection.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from services import require
from serving import free_port

HERE = Path(__file__).parent / "oidc"


@dataclass(frozen=True)
class OIDCProvider:
    issuer: str
    jwt_resource: str
    opaque_resource: str
    agent: tuple[str, str] = ("agent", "agent-secret")
    resource_server: tuple[str, str] = ("mcp-server", "server-secret")

    def token(self, resource: str, scope: str = "notes:read") -> str:
        """An access token for ``resource``, from the token endpoint, by client credentials."""
        response = httpx2.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "scope": scope, "resource": resource},
            auth=self.agent,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


@contextmanager
def serve_oidc_provider(jwt_resource: str, opaque_resource: str) -> Iterator[OIDCProvider]:
    node = shutil.which("node")
    installed = (HERE / "node_modules" / "oidc-provider").is_dir()
    require("oidc-provider", None if node and installed else "node or tests/oidc/node_modules is missing (make test)")
    assert node is not None
    port = free_port()
    environment = {**os.environ, "PORT": str(port), "JWT_RESOURCE": jwt_resource, "OPAQUE_RESOURCE": opaque_resource}
    process = subprocess.Popen(
        [node, str(HERE / "server.mjs")], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while True:
            line = process.stdout.readline()
            if line.startswith("ready "):
                break
            if (not line and process.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"oidc-provider did not start: {line!r}")
        yield OIDCProvider(f"http://127.0.0.1:{port}", jwt_resource, opaque_resource)
    finally:
        process.terminate()
        process.wait(timeout=10)
