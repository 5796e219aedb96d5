"""HTTP behaviour the MCP authorization spec asks of a resource server, as ASGI middleware.

    app = GuardHTTP(mcp.streamable_http_app(), guard, verifier, resource="https://mcp.example.com/mcp")

- RFC 9728 protected resource metadata at ``/.well-known/oauth-protected-resource{path}``,
  whose ``scopes_supported`` lists the scopes every request needs (``required_scopes``) and
  those the declared tools need (concealed tools' scopes stay unadvertised), and whose
  ``authorization_servers`` are the verifier's trusted issuers.
- A real HTTP 403 ``insufficient_scope`` challenge (RFC 6750 section 3.1) when a client names
  the tool in the ``Mcp-Method: tools/call`` and ``Mcp-Name`` headers (MCP 2026-07-28) and its
  token lacks scopes that tool requires. The challenge names *all* the scopes the call needs,
  so the client can step up in one go.

Everything else passes through: a missing or invalid token gets the SDK's 401 with
``resource_metadata``, and a tool that is unknown, concealed, or named only in the body gets the
guard's in-band answer, so no header reveals which tools exist. A challenge is given only when
the body calls the tool the header names (the body is read for that, up to 1 MiB, and handed
on unchanged): a body that disagrees gets the SDK's 400. Header values are built only
from validated scope tokens and configuration, never from request input.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from typing import NamedTuple
from urllib.parse import urlsplit

from mcp.server.streamable_http import check_accept_headers
from mcp.shared.inbound import (
    InboundModernRoute,
    classify_inbound_request,
    decode_header_value,
    validate_mcp_param_headers,
)
from mcp_types import JSONRPCRequest
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_guard.clock import read_clock
from mcp_guard.errors import Refused
from mcp_guard.guard import Guard
from mcp_guard.identity.bearer import BearerVerifier
from mcp_guard.model import Decision, Principal, Reason, ToolSpec
from mcp_guard.policy.scopes import granted_scopes
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import format_scope, scope_set

__all__ = ["MAX_CHALLENGED_BODY", "GuardHTTP", "resource_metadata_url"]

logger = logging.getLogger("mcp_guard")

_NOT_IN_CHALLENGES = frozenset({"offline_access"})
_METADATA_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"public, max-age=3600"),
    (b"access-control-allow-origin", b"*"),
]
"""The headers the SDK's own metadata answer carries: browser clients read it across origins."""


def resource_metadata_url(resource: str) -> str:
    """Where RFC 9728 places the metadata of ``resource``: the well-known prefix before its path
    (a trailing slash kept, as the SDK keeps it in its 401 challenges; a bare ``/`` dropped)."""
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"


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
        required_scopes: Iterable[str] = (),
        json_response: bool = False,
    ) -> None:
        """``required_scopes`` and ``json_response`` are what the wrapped app was built with (the
        SDK's ``AuthSettings.required_scopes``, and ``streamable_http_app(json_response=...)``):
        the metadata and every challenge name the scopes all requests need, a token without them
        is left to the SDK's own 403, and a JSON-only client is challenged where the app serves it.
        ``mcp_path`` is where the app serves MCP: by default the resource's path without a
        trailing slash, as the SDK routes it (it redirects the slashed path there)."""
        self.app = app
        self.guard = guard
        self.verifier = verifier
        if not _header_safe(resource):
            raise ValueError(f"resource {resource!r} cannot be quoted safely in a WWW-Authenticate header")
        self.resource = resource
        self.metadata_url = resource_metadata_url(resource)
        self.metadata_path = urlsplit(self.metadata_url).path
        self.mcp_path = mcp_path if mcp_path is not None else (urlsplit(resource).path.rstrip("/") or "/")
        self.authorization_servers = (
            list(authorization_servers) if authorization_servers is not None else list(verifier.issuers)
        )
        self.required_scopes = scope_set(required_scopes)
        self.json_response = json_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == self.metadata_path and scope["method"] in ("GET", "HEAD"):
                await _respond(send, 200, json.dumps(self.metadata()).encode(), _METADATA_HEADERS)
                return
            if scope["path"] == self.mcp_path and scope["method"] == "POST":
                step_up = await self._step_up(_single_headers(scope["headers"]))
                if step_up is not None:
                    body, receive = await _read_body(receive)
                    if _served_as_call(scope, body, step_up.spec, self.json_response) and await self._recorded(step_up):
                        answer = json.dumps({"error": "insufficient_scope"}).encode()
                        challenge = self._insufficient_scope(step_up.spec).encode("ascii")
                        headers = [(b"www-authenticate", challenge), (b"content-type", b"application/json")]
                        await _respond(send, 403, answer, headers)
                        return
        await self.app(scope, receive, send)

    def metadata(self) -> dict[str, object]:
        """The RFC 9728 document for this resource."""
        specs = (self.guard.as_policy_sees(spec) for spec in self.guard.tools.values() if not spec.conceal)
        scopes = self.required_scopes.union(*(spec.usable_scopes for spec in specs))
        return {
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": sorted(scopes - _NOT_IN_CHALLENGES),
            "bearer_methods_supported": ["header"],
        }

    async def _step_up(self, headers: dict[bytes, bytes] | None) -> _StepUp | None:
        """The tool named in the headers and the verified caller, when the call needs scopes the
        token lacks.

        The token is read and its expiry checked as the SDK does (the first ``Authorization``
        header, the text after ``Bearer `` as it is, no leeway), and headers sent twice get no
        challenge, so the 403 never answers a request the SDK would refuse with 401. The tool
        name is decoded as the SDK decodes it. Only when the policy itself would refuse every
        call to the tool (`Policy.visible` is false): a policy that could allow it without those
        scopes (a function, `AnyOf`) decides the call in band instead of being pre-empted here;
        and only when it would allow it with them, so no client is sent to ask for scopes that
        cannot help (a tool the policy does not list, a delegation it forbids).
        """
        if headers is None or headers.get(b"mcp-method") != b"tools/call":
            return None
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if not authorization.lower().startswith("bearer ") or len(authorization) == len("bearer "):
            return None
        try:  # before the name is looked up, so the work done never tells which tools exist
            principal = await self.verifier.verify(authorization[len("bearer ") :])
            now = read_clock(self.guard.clock)
            self.guard.check_principal(principal, now)
            if principal.expires_at is not None and principal.expires_at < now:
                return None  # inside the guard's leeway, but the SDK answers 401
        except Refused:
            return None  # the SDK answers 401, or the guard its in-band refusal
        except Exception:
            logger.exception("mcp-guard: verifying a bearer token for a step-up challenge failed")
            return None
        if not self.required_scopes <= principal.scopes:
            return None  # the SDK refuses it with its own 403, before any tool is looked at
        name = decode_header_value(headers.get(b"mcp-name", b"").decode("latin-1"))
        declared = self.guard.tools.get(name) if name is not None else None
        if declared is None:
            return None
        spec = self.guard.as_policy_sees(declared)
        if spec.conceal or self._callable(principal, spec):
            return None  # a policy that would allow some call to the tool (a function, AnyOf) decides in band
        missing = spec.scopes - granted_scopes(self.guard.policy, principal)
        if not missing or not self._callable(replace(principal, scopes=principal.scopes | missing), spec):
            return None  # the scopes are not all it lacks: no token could pass what refuses it otherwise
        return _StepUp(principal, spec, missing)

    def _callable(self, principal: Principal, spec: ToolSpec) -> bool:
        """Whether the policy says ``principal`` could call ``spec``; false when it fails to say."""
        try:
            return bool(self.guard.policy.visible(principal, spec))
        except Exception:
            logger.exception("mcp-guard: the policy failed to say whether tool %s is callable", spec.name)
            return False

    async def _recorded(self, step_up: _StepUp) -> bool:
        """Record the challenge as a denied call on the caller's session, weighed for risk as
        any refusal is; unrecorded, it is not given (the guard refuses in band)."""
        decision = Decision(
            allowed=False,
            requested_scopes=step_up.principal.scopes,
            missing_scopes=step_up.missing,
            reasons=(Reason.of(ReasonCode.INSUFFICIENT_SCOPE),),
            rule_ids=("http.step_up",),
        )
        return await self.guard.record_refusal(step_up.principal, step_up.spec, decision, "HTTP 403 step-up challenge")

    def _insufficient_scope(self, spec: ToolSpec) -> str:
        scope = format_scope((self.required_scopes | spec.scopes) - _NOT_IN_CHALLENGES)
        return (
            f'Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{self.metadata_url}", '
            'error_description="The access token lacks scopes this tool requires"'
        )


class _StepUp(NamedTuple):
    """A call that gets a 403: who makes it, the tool it names, and the scopes it lacks."""

    principal: Principal
    spec: ToolSpec
    missing: frozenset[str]


_READ_HEADERS = frozenset({b"authorization", b"mcp-method", b"mcp-name", b"mcp-protocol-version"})

MAX_CHALLENGED_BODY = 1024 * 1024
"""Largest request body read to confirm a challenge; a larger one is left to the SDK."""


def _single_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes] | None:
    """The headers a challenge reads, or None when one of them is sent twice."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in _READ_HEADERS:
            if name in found:
                return None
            found[name] = value
    return found


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The request body (None past `MAX_CHALLENGED_BODY` or on a disconnect), and a ``receive``
    that hands the application what was read here before the rest.

    What was read is kept, and handed on, as one message: a body sent a byte at a time would
    otherwise be held as a message per byte, hundreds of times its size.
    """
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            read = [_body_message(body, more=True), message] if body else [message]
            return None, _replayed(read, receive)
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
        if len(body) > MAX_CHALLENGED_BODY:
            return None, _replayed([_body_message(body, more)], receive)
        if not more:
            whole = _body_message(body, more=False)
            return whole["body"], _replayed([whole], receive)


def _body_message(body: bytearray, more: bool) -> Message:
    return {"type": "http.request", "body": bytes(body), "more_body": more}


def _replayed(read: list[Message], receive: Receive) -> Receive:
    pending = deque(read)

    async def replay() -> Message:
        return pending.popleft() if pending else await receive()

    return replay


def _served_as_call(scope: Scope, body: bytes | None, tool: ToolSpec, json_response: bool) -> bool:
    """Whether the SDK's modern transport would serve ``body`` as a call to ``tool``.

    Its own checks, in its order: a JSON content type, the media types accepted (JSON, and
    event streams unless the app answers in JSON alone: ``json_response``), a JSON-RPC
    request (not a notification, a batch or a malformed envelope), the protocol ladder (the
    per-request envelope, headers that agree with the body, a supported version), and
    ``Mcp-Param-*`` headers that agree with the arguments the tool's schema marks for them. A
    request it would refuse gets its refusal, not a 403, and no call is recorded that was
    never made. Its DNS-rebinding checks (``Host``, ``Origin``) and its body size limit depend
    on settings the app keeps to itself and are not repeated: a request with a foreign
    ``Origin`` gets a 403 either way, but one with a foreign ``Host`` (the SDK's 421) or a body
    over the app's limit (413) gets the challenge. Either needs a valid token for this server,
    which a DNS-rebinding page does not have.
    """
    if body is None:
        return False
    request = Request(scope)
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        return False
    has_json, has_sse = check_accept_headers(request)
    if not (has_json and (has_sse or json_response)):
        return False
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(decoded, dict) or "id" not in decoded:
        return False
    try:
        JSONRPCRequest.model_validate(decoded)
    except ValidationError:
        return False
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    if not isinstance(classify_inbound_request(decoded, headers=headers), InboundModernRoute):
        return False
    params = decoded.get("params")
    if decoded.get("method") != "tools/call" or not isinstance(params, dict) or params.get("name") != tool.name:
        return False
    arguments = params.get("arguments")
    if tool.input_schema is None:  # declared without its schema: the headers cannot be checked here
        return True
    found = arguments if isinstance(arguments, dict) else {}
    return validate_mcp_param_headers(tool.input_schema, found, request.headers) is None


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
