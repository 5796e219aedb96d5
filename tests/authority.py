"""A small real token issuer on loopback for tests: real keys, a JWKS endpoint, OAuth metadata.

It signs tokens in-process with joserfc (any header, any claims, any key) and serves its
public keys over HTTP, counting how often the JWKS is fetched.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from joserfc import jwt
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serving import free_port, serving

RESOURCE = "https://mcp.example.test/mcp"


class Authority:
    """An issuer: ``issuer`` URL, signing keys by kid, and a JWKS served at ``jwks_uri``."""

    def __init__(self, port: int) -> None:
        self.issuer = f"http://127.0.0.1:{port}"
        self.jwks_uri = f"{self.issuer}/jwks"
        self.keys: dict[str, Key] = {
            "rsa-1": RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),
            "ec-1": ECKey.generate_key("P-256", parameters={"kid": "ec-1"}),
            "ed-1": OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"}),
        }
        self.jwks_fetches = 0
        self.jwks_down = False
        self.client_id, self.client_secret = "mcp-server", "s3cret-for-tests"
        self.answers: dict[str, Any] = {}
        """What the introspection endpoint answers for each token (a raw body when it is bytes)."""
        self.introspections = 0
        self.introspection_delay = 0.0
        self.jwks_body: bytes | None = None
        """When set, the JWKS endpoint serves these bytes instead of the real keys."""
        self.drip = 0.0
        """When set, metadata, JWKS and introspection answers are sent a byte at a time, this many seconds apart."""
        self.metadata_requests = 0
        self.metadata_issuer: str | None = None
        """When set, the metadata names this issuer instead of the real one."""

    def public_jwks(self) -> dict[str, Any]:
        return KeySet(list(self.keys.values())).as_dict(private=False)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "agent-7",
            "client_id": "agent-app",
            "aud": RESOURCE,
            "iat": now,
            "exp": now + 600,
            "jti": f"jti-{time.monotonic_ns()}",
            "scope": "notes:read notes:write",
        }
        claims.update(overrides)
        return {key: value for key, value in claims.items() if value is not None}

    def mint(
        self,
        *,
        alg: str = "RS256",
        kid: str | None = "rsa-1",
        typ: str | None = "at+jwt",
        header: dict[str, Any] | None = None,
        key: Key | None = None,
        **claims: Any,
    ) -> str:
        """A token signed with ``key`` (by default the key named ``kid``)."""
        full_header: dict[str, Any] = {"alg": alg}
        if kid is not None:
            full_header["kid"] = kid
        if typ is not None:
            full_header["typ"] = typ
        full_header.update(header or {})
        signing_key = key if key is not None else self.keys[kid or "rsa-1"]
        return jwt.encode(full_header, self.claims(**claims), signing_key, algorithms=[alg], default_type=None)

    def answer(self, body: bytes) -> Response:
        """A JSON answer, all at once or (with ``drip``) a byte at a time."""
        if not self.drip:
            return Response(body, media_type="application/json")

        async def bytes_slowly() -> AsyncIterator[bytes]:
            for index in range(len(body)):
                await anyio.sleep(self.drip)
                yield body[index : index + 1]

        return StreamingResponse(bytes_slowly(), media_type="application/json")

    def app(self) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.jwks_fetches += 1
            if self.jwks_down:
                return Response("down", status_code=503)
            if self.jwks_body is not None:
                return Response(self.jwks_body, media_type="application/json")
            return self.answer(json.dumps(self.public_jwks()).encode())

        async def introspect(request: Request) -> Response:
            self.introspections += 1
            expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            if request.headers.get("authorization") != expected:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            form = await request.form()
            answer = self.answers.get(str(form.get("token")), {"active": False})  # as of the request's arrival
            if self.introspection_delay:
                await anyio.sleep(self.introspection_delay)
            if isinstance(answer, bytes):
                return Response(answer, media_type="application/json")
            if isinstance(answer, int) and not isinstance(answer, bool):
                return Response("", status_code=answer)
            return self.answer(json.dumps(answer).encode())

        async def metadata(request: Request) -> Response:
            self.metadata_requests += 1
            issuer = self.metadata_issuer or self.issuer
            return self.answer(json.dumps({"issuer": issuer, "jwks_uri": self.jwks_uri}).encode())

        async def tenant_metadata(request: Request) -> Response:
            """An issuer with a path: RFC 8414's location for tenant-1, OpenID's appended one for tenant-2."""
            tenant = request.path_params["tenant"]
            if (tenant == "tenant-1") != request.url.path.startswith("/.well-known/"):
                return Response("not here", status_code=404)
            return self.answer(json.dumps({"issuer": f"{self.issuer}/{tenant}", "jwks_uri": self.jwks_uri}).encode())

        return Starlette(
            routes=[
                Route("/jwks", jwks),
                Route("/introspect", introspect, methods=["POST"]),
                Route("/.well-known/oauth-authorization-server", metadata),
                Route("/.well-known/oauth-authorization-server/{tenant}", tenant_metadata),
                Route("/{tenant}/.well-known/openid-configuration", tenant_metadata),
            ]
        )


@contextmanager
def serve_authority() -> Iterator[Authority]:
    port = free_port()
    authority = Authority(port)
    with serving(authority.app(), port):
        yield authority
