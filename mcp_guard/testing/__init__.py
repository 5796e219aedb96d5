"""Helpers for testing guarded servers and policies in your own pytest suite.

``access_token(...)`` makes a verified-looking SDK `AccessToken`; ``acting_as(token)`` makes
an in-process server see it as the caller; ``StaticTokenVerifier`` serves fixed tokens over
HTTP. None of these verify anything: they stand in for a real `TokenVerifier` in tests and demos.
``call_request(...)`` builds the `CallRequest` a policy sees, to unit-test a policy directly.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from mcp_guard.model import CallHistory, CallRequest, Principal, ToolSpec
from mcp_guard.scopes import format_scope, scope_set
from mcp_guard.session.settings import SessionSettings

__all__ = ["StaticTokenVerifier", "access_token", "acting_as", "call_request"]

DEFAULT_ISSUER = "https://auth.example.test"


def access_token(
    subject: str | None = "agent-1",
    scopes: str | list[str] = "",
    *,
    issuer: str | None = DEFAULT_ISSUER,
    client_id: str = "test-client",
    expires_in: float | None = 3600,
    token: str | None = None,
    **claims: Any,
) -> AccessToken:
    """An `AccessToken` as a verifier would return it, with a fresh random bearer string.

    ``issuer=None`` or ``subject=None`` leave those facts out, to test the refusals.
    Extra keyword arguments become claims (``jti=...``, ``sid=...``).
    """
    granted = sorted(scope_set(scopes)) if isinstance(scopes, str) else list(scopes)
    all_claims: dict[str, Any] = {"scope": format_scope(granted), **claims} if isinstance(scopes, str) else dict(claims)
    if issuer is not None:
        all_claims["iss"] = issuer
    return AccessToken(
        token=token if token is not None else "test-" + secrets.token_urlsafe(24),
        client_id=client_id,
        scopes=granted,
        expires_at=int(time.time() + expires_in) if expires_in is not None else None,
        subject=subject,
        claims=all_claims,
    )


@contextmanager
def acting_as(token: AccessToken | None) -> Iterator[None]:
    """Within the block, an in-process server (``Client(server)``) sees ``token`` as the caller.

    Enter it before opening the client: the in-process server inherits the context then.
    """
    reset = auth_context_var.set(AuthenticatedUser(token) if token is not None else None)
    try:
        yield
    finally:
        auth_context_var.reset(reset)


class StaticTokenVerifier:
    """An SDK `TokenVerifier` over a fixed map of bearer strings, for demos and HTTP tests."""

    def __init__(self, tokens: Mapping[str, AccessToken]) -> None:
        self._tokens = dict(tokens)

    async def verify_token(self, token: str) -> AccessToken | None:
        return self._tokens.get(token)


def call_request(
    tool: ToolSpec | str,
    arguments: Mapping[str, Any] | None = None,
    *,
    scopes: str | Iterable[str] = "",
    subject: str = "agent-1",
    issuer: str = DEFAULT_ISSUER,
    client_id: str = "test-client",
    claims: Mapping[str, Any] | None = None,
    actor_chain: Iterable[str] = (),
    earlier: Iterable[ToolSpec] = (),
    at: float | None = None,
    session_id: str = "test-session",
) -> CallRequest:
    """The `CallRequest` a policy sees for one call, for testing a policy without a server.

    ``earlier`` are tools the session already ran (for sequence rules); ``at`` defaults to now.
    """
    now = time.time() if at is None else at
    principal = Principal(
        issuer=issuer,
        subject=subject,
        client_id=client_id,
        scopes=scope_set(scopes),
        expires_at=now + 3600,
        token_id=f"{session_id}-token",
        actor_chain=tuple(actor_chain),
        claims=dict(claims or {}),
    )
    history = CallHistory()
    for spec in earlier:
        history.tools.add(spec.name)
        history.tags |= spec.tags
    session = SessionSettings().open(session_id, principal, now)
    session.history, session.call_count = history, len(history.tools)
    spec = tool if isinstance(tool, ToolSpec) else ToolSpec(tool)
    return CallRequest(principal, session, spec, dict(arguments or {}), now)
