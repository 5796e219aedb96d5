"""Shared set-up for the benchmarks: guards with N tools, a warm principal, in-process servers."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer

from mcp_guard import (
    AuditSink,
    Guard,
    GuardMiddleware,
    JWKSCache,
    JWTVerifier,
    MemoryAuditSink,
    ToolSpec,
    TrustedIssuer,
)
from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.model import Decision, Principal
from mcp_guard.testing import access_token

T = TypeVar("T")

SCOPES = "notes:read notes:write files:read mail:send calendar:read"


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without an event loop, and return its result.

    The in-memory guard never awaits real I/O, so this measures the decision itself and not
    the scheduler. A coroutine that does suspend is an error, not a silent mismeasurement.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the coroutine suspended; it cannot be driven synchronously")


def guard_with_tools(count: int) -> Guard:
    """A guard with ``count`` declared tools; ``tool_0`` needs ``notes:read``."""
    guard = Guard(scope_hierarchy={"notes:write": "notes:read"}, audit=[MemoryAuditSink(maxlen=1024)])
    for index in range(count):
        guard.declare(ToolSpec(f"tool_{index}", scopes=frozenset({"notes:read" if index % 2 == 0 else "files:read"})))
    return guard


def warm(guard: Guard) -> tuple[AccessToken, dict[str, Any]]:
    """A caller with five scopes whose token is verified and whose session is open."""
    token = access_token("agent-7", SCOPES, sid="bench-session")
    arguments = {"title": "welcome"}
    decision = run_now(guard.authorize("tool_0", arguments, token)).decision
    if not decision.allowed or decision.approved_scopes != {"notes:read"}:
        raise RuntimeError(f"the warm-up call was not allowed as expected: {decision}")
    return token, arguments


def notes_server(guarded: bool, *sinks: AuditSink) -> MCPServer:
    """A server with one trivial async tool, with or without the guard (recording to ``sinks``)."""
    guard = Guard(audit=sinks or [MemoryAuditSink(maxlen=1024)])
    server = MCPServer("bench", middleware=[GuardMiddleware(guard)] if guarded else [])

    async def echo(text: str) -> str:
        return text

    server.tool()(guard.tool(scopes="notes:read")(echo) if guarded else echo)
    return server


ISSUER = "https://auth.bench.test"
RESOURCE = "https://mcp.bench.test/mcp"


def decided_events(count: int) -> list[AuditEvent]:
    """``count`` realistic decision events: a principal with five scopes, a trimmed decision."""
    principal = Principal(ISSUER, "agent-7", "agent-app", frozenset(SCOPES.split()), (RESOURCE,), token_id="jti-1")
    decision = Decision(
        True, principal.scopes, frozenset({"notes:read"}), policy_id="mcp-guard/scopes", policy_version="1"
    )
    return [
        AuditEvent.build(EventKind.CALL_DECIDED, time.time(), principal, "token:abc", "read_note", decision)
        for _ in range(count)
    ]


def signed_token(alg: str, others: int = 0) -> tuple[JWTVerifier, str, Callable[[], None], list[str]]:
    """A verifier trusting a fresh key, a token it signed with ``alg``, the bare signature
    check, and ``others`` more tokens like it (each its own ``jti``), never seen by the verifier.

    The JWKS is served in-process (the cache's fetch is pluggable), so no network is timed. The
    bare check is what `cryptography` alone needs to verify the same token's signature.
    """
    key: Key = (
        RSAKey.generate_key(2048, parameters={"kid": "k"})
        if alg == "RS256"
        else (ECKey.generate_key("P-256", parameters={"kid": "k"}))
    )
    public = KeySet([key]).as_dict(private=False)

    async def fetch(uri: str) -> dict[str, Any]:
        return public

    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "agent-7",
        "client_id": "bench",
        "aud": RESOURCE,
        "iat": now,
        "exp": now + 3600,
        "jti": "bench-1",
        "scope": SCOPES,
    }
    header = {"alg": alg, "kid": "k", "typ": "at+jwt"}
    token = jwt.encode(header, claims, key, algorithms=[alg])
    unseen = [jwt.encode(header, {**claims, "jti": f"bench-{n}"}, key, algorithms=[alg]) for n in range(2, others + 2)]
    issuer = TrustedIssuer(issuer=ISSUER, audience=RESOURCE, jwks_uri="https://auth.bench.test/jwks", algorithms=(alg,))
    verifier = JWTVerifier([issuer], jwks=JWKSCache(fetch=fetch))
    signing_input, _, signature_b64 = token.rpartition(".")
    signature = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
    public_key = key.public_key

    def bare() -> None:
        if alg == "RS256":
            public_key.verify(signature, signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        else:
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            public_key.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))

    return verifier, token, bare, unseen
