"""HTTP behaviour the MCP authorization spec asks of a resource server, as ASGI middleware.

    app = GuardHTTP(mcp.streamable_http_app(), guard, verifier, resource="https://mcp.example.com/mcp")

- RFC 9728 protected resource metadata at ``/.well-known/oauth-protected-resource{path}``,
  whose ``scopes_supported`` lists the scopes the declared tools need (concealed tools' scopes
  stay unadvertised), and whose
  ``authorization_servers`` are the verifier's trusted issuers.
- A real HTTP 403 ``insufficient_scope`` challenge (RFC 6750 section 3.1) when a client names
  the tool in the ``Mcp-Method: tools/call`` and ``Mcp-Name`` headers (MCP 2026-07-28) and its
  token lacks scopes that tool requires. The challenge names *all* the scopes the call needs,
  so the client can step up in one go.

Everything else passes through: a missing or invalid token gets the SDK's 401 with
``resource_metadata``, and a tool that is unknown, concealed, or named only in the body gets the
guard's in-band answer, so no header reveals which tools exist. Header values are built only
from validated scope tokens and configuration, never from request input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.errors import Refused
from mcp_guard.guard import Guard
from mcp_guard.identity.bearer import BearerVerifier
from mcp_guard.model import Decision, Reason, ToolSpec
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeHierarchy, format_scope

__all__ = ["GuardHTTP", "resource_metadata_url"]

logger = logging.getLogger("mcp_guard")

_NOT_IN_CHALLENGES = frozenset({"offline_access"})


def resource_metadata_url(resource: str) -> str:
    """Where RFC 9728 places the metadata of ``resource``: the well-known prefix before its path."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path.rstrip('/')}"


class GuardHTTP:
    """ASGI middleware: protected resource metadata, and 403 step-up challenges before the SDK."""

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        verifier: BearerVerifier,
        *,
        resource: str,
        authorization_servers: Iterable[str] | None = None,
        mcp_path: str | None = None,
    ) -> None:
        self.app = app
        self.guard = guard
        self.verifier = verifier
        if not _header_safe(resource):
            raise ValueError(f"resource {resource!r} cannot be quoted safely in a WWW-Authenticate header")
        self.resource = resource
        self.metadata_url = resource_metadata_url(resource)
        self.metadata_path = urlsplit(self.metadata_url).path
        self.mcp_path = mcp_path if mcp_path is not None else (urlsplit(resource).path or "/")
        self.authorization_servers = (
            list(authorization_servers) if authorization_servers is not None else list(verifier.issuers)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == self.metadata_path and scope["method"] in ("GET", "HEAD"):
                await _respond(
                    send, 200, json.dumps(self.metadata()).encode(), [(b"content-type", b"application/json")]
                )
                return
            if scope["path"] == self.mcp_path and scope["method"] == "POST":
                challenge = await self._challenge(dict(scope["headers"]))
                if challenge is not None:
                    body = json.dumps({"error": "insufficient_scope"}).encode()
                    headers = [(b"www-authenticate", challenge.encode("ascii")), (b"content-type", b"application/json")]
                    await _respond(send, 403, body, headers)
                    return
        await self.app(scope, receive, send)

    def metadata(self) -> dict[str, object]:
        """The RFC 9728 document for this resource."""
        specs = (self.guard.as_policy_sees(spec) for spec in self.guard.tools.values() if not spec.conceal)
        scopes = set().union(*(spec.usable_scopes for spec in specs))
        return {
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": sorted(scopes - _NOT_IN_CHALLENGES),
            "bearer_methods_supported": ["header"],
        }

    async def _challenge(self, headers: dict[bytes, bytes]) -> str | None:
        """The ``WWW-Authenticate`` value when the named tool needs scopes the token lacks.

        Only when the policy itself would refuse every call to the tool (`Policy.visible` is
        false): a policy that could allow it without those scopes (a function, `AnyOf`) decides
        the call in band instead of being pre-empted here.
        """
        if headers.get(b"mcp-method") != b"tools/call":
            return None
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:  # before the name is looked up, so the work done never tells which tools exist
            principal = await self.verifier.verify(token.strip())
            self.guard.check_principal(principal, self.guard.clock())
        except Refused:
            return None  # the SDK answers 401, or the guard its in-band refusal
        except Exception:
            logger.exception("mcp-guard: verifying a bearer token for a step-up challenge failed")
            return None
        declared = self.guard.tools.get(headers.get(b"mcp-name", b"").decode("latin-1"))
        if declared is None:
            return None
        spec = self.guard.as_policy_sees(declared)
        try:  # a policy that would allow some call to the tool (a function, AnyOf) decides in band
            if self.guard.policy.visible(principal, spec):
                return None
        except Exception:
            logger.exception("mcp-guard: the policy failed to say whether tool %s is callable", spec.name)
            return None
        if spec.conceal:
            return None
        hierarchy = getattr(self.guard.policy, "hierarchy", None)
        granted = hierarchy.expand(principal.scopes) if isinstance(hierarchy, ScopeHierarchy) else principal.scopes
        missing = spec.scopes - granted
        if not missing:
            return None
        decision = Decision(
            allowed=False,
            requested_scopes=principal.scopes,
            missing_scopes=missing,
            reasons=(Reason.of(ReasonCode.INSUFFICIENT_SCOPE),),
            rule_ids=("http.step_up",),
        )
        event = AuditEvent.build(
            EventKind.CALL_DECIDED,
            self.guard.clock(),
            principal,
            None,
            spec.name,
            decision,
            detail="HTTP 403 step-up challenge",
        )
        try:
            self.guard.record(event)
        except Exception:  # unrecorded, the challenge is not given: the guard refuses the call in band
            logger.exception("mcp-guard: recording a step-up challenge failed")
            return None
        return self._insufficient_scope(spec)

    def _insufficient_scope(self, spec: ToolSpec) -> str:
        scope = format_scope(spec.scopes - _NOT_IN_CHALLENGES)
        return (
            f'Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{self.metadata_url}", '
            'error_description="The access token lacks scopes this tool requires"'
        )


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
