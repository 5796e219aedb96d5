"""The guard on the MCP Python SDK: one `ServerMiddleware` for `MCPServer` and the low-level `Server`.

    mcp = MCPServer("notes", middleware=[GuardMiddleware(guard)])
    server.middleware.append(GuardMiddleware(guard))        # low-level Server

It sees every ``tools/call`` before params validation and refuses what the guard denies with
an `MCPError` (code `GUARD_DENIED`), and it filters ``tools/list`` down to what the caller may
call. Every other request (resources, prompts, completions, tasks) but the handshake and ping
is served only to a caller a tool call would accept (identified, not expired or revoked, its
session usable), with no per-item rules. While an admitted tool runs, ``get_access_token()`` returns the caller's token trimmed to
the approved scopes, with the raw bearer string withheld (tools must not pass it through); over
HTTP, the request the tool can reach has no ``Authorization`` header and the trimmed caller.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, InputRequiredResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from starlette.authentication import AuthCredentials
from starlette.requests import Request

from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.spans import tracing_configured
from mcp_guard.clock import read_clock
from mcp_guard.context import ADMITTED, Admission
from mcp_guard.errors import Refused
from mcp_guard.guard import LONG_CALL, Authorization, Guard
from mcp_guard.identity.access_token import refused_token_fingerprint
from mcp_guard.identity.bearer import BearerVerifier
from mcp_guard.integrations.read_only import ReadOnlyUser, read_only_token
from mcp_guard.memo import remember
from mcp_guard.model import Decision, Principal
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import format_scope
from mcp_guard.text import excerpt

__all__ = [
    "GUARD_DENIED",
    "UNCHECKED_METHODS",
    "GuardMiddleware",
    "GuardTokenVerifier",
    "denial_error",
    "transport_session",
]

logger = logging.getLogger("mcp_guard")

GUARD_DENIED = -32003
"""The JSON-RPC error code of every guard denial; ``error.data.reason`` says which one."""

UNCHECKED_METHODS = frozenset({"initialize", "ping", "server/discover"})
"""Requests served to anyone who reaches the server: the handshake and liveness, which carry no
data. Every other request but a tool call or listing (resources, prompts, completions,
subscriptions, tasks, any extension's method) is served only to a caller a tool call would
accept (`Guard.admit_request`)."""

_CONNECTION_SESSION = "mcp_guard.session"
_UNTRIMMED = "the caller's token could not be trimmed for the tool"
_TRACER = trace.get_tracer("mcp_guard")


class GuardMiddleware:
    """Enforces a `Guard` on an MCP SDK server (a `ServerMiddleware`)."""

    _TRIMMED_LIMIT = 4096
    _UNDECLARED_LIMIT = 1024

    def __init__(self, guard: Guard, *, record_completions: bool = True) -> None:
        """``record_completions=False`` drops the ``call.completed`` event after each call.

        That event says how an admitted call ended (result, duration, error type); leaving it
        out saves about 4 us per call, and leaves the trail without those facts.
        """
        self.guard = guard
        self.record_completions = record_completions
        self._trimmed: dict[tuple[str | None, frozenset[str]], tuple[Principal, AuthenticatedUser]] = {}
        self._undeclared: set[str] = set()
        """Served tools the guard has no declaration for, each logged once."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        method = ctx.method
        if ctx.request_id is None:  # a notification: it runs no tool and lists none, and nothing answers it
            return await call_next(ctx)
        if method == "tools/list":
            return await self._list_tools(ctx, call_next)
        if method != "tools/call":
            if method not in UNCHECKED_METHODS:
                denial = await self.guard.admit_request(
                    method, _credential(ctx), transport_session(ctx), remote=ctx.request is not None
                )
                if denial is not None:
                    raise denial_error(Authorization(denial))
            return await call_next(ctx)
        # tools/call, the per-call hot path: written flat, each Python call here costs ~0.5 us.
        params = ctx.params
        if type(params) is not dict and not isinstance(params, Mapping):
            params = {}
        if ctx.request is None:  # in process: what get_access_token() reads (`_credential`, inline)
            caller = auth_context_var.get()
            credential = caller.access_token if caller is not None else None
        else:
            credential = _authenticated(ctx.request)
        version = ctx.protocol_version
        authorization = await self.guard.authorize(
            params.get("name"),
            params.get("arguments"),
            credential,
            protocol_version=version,
            transport_session=None if version in MODERN_PROTOCOL_VERSIONS else transport_session(ctx),
            request_id=ctx.request_id,
            remote=ctx.request is not None,
        )
        decision, request, decided = authorization
        if request is None or decided is None or not decision.allowed:
            raise denial_error(authorization)
        user = None
        if credential is not None:
            principal = request.principal
            seen = self._trimmed.get((principal.token_hash, decision.approved_scopes))
            trimmed = seen[1] if seen is not None and seen[0] is principal else None
            try:
                if trimmed is None:
                    trimmed = self._trim(credential, principal, decision.approved_scopes)
                if ctx.request is not None:  # over HTTP, the tool's view of the request is trimmed as well
                    ctx = replace(ctx, request=_request_as_seen(ctx.request, trimmed))
            except Exception:
                logger.exception(
                    "mcp-guard: the caller as tool %s would see it could not be built; denying", request.tool.name
                )
                raise denial_error(self.guard.refuse_admitted(authorization, _UNTRIMMED)) from None
            user = auth_context_var.set(trimmed)
        admission = Admission(request)
        admitted = ADMITTED.set(admission)
        started, result, error_type = time.perf_counter(), "error", None
        try:
            response = await call_next(ctx)
            if isinstance(response, dict):  # inline: a function call more is measurable here
                asks = response.get("resultType") == "input_required"  # a round asking for input: another comes
                result = "tool_error" if response.get("isError") is True else "input_required" if asks else "ok"
            else:
                result = "input_required" if isinstance(response, InputRequiredResult) else "ok"
            return response
        except BaseException as error:
            error_type = type(error).__name__
            raise
        finally:
            admission.end()
            ADMITTED.reset(admitted)
            if user is not None:
                auth_context_var.reset(user)
            duration = time.perf_counter() - started
            if self.record_completions:
                self.guard.record_completion(decided, result, duration, error_type)
            if duration >= LONG_CALL:  # cancelled or not, it ran
                await self.guard.call_ended(request)

    def _trim(self, credential: AccessToken, principal: Principal, approved: frozenset[str]) -> AuthenticatedUser:
        """The caller as a tool sees it: only the approved scopes, no bearer string.

        Memoised per token and approved set, for as long as the token's verification is the
        same one (the same `Principal`): a token verified anew with a different answer is
        trimmed afresh. The object is shared, so it is read-only (`read_only`). A credential
        without a token fingerprint is trimmed afresh every call. Raises when a value in the
        token cannot be made read-only: the call is then refused (`Guard.refuse_admitted`).
        """
        user = ReadOnlyUser(_trimmed(credential, approved))
        if principal.token_hash is not None:
            remember(self._trimmed, (principal.token_hash, approved), (principal, user), self._TRIMMED_LIMIT)
        return user

    async def _list_tools(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        visible = await self.guard.visible_tools(
            _credential(ctx), transport_session(ctx), remote=ctx.request is not None
        )
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            logger.error("mcp-guard: tools/list returned %s, which cannot be filtered", type(result).__name__)
            raise MCPError(code=INTERNAL_ERROR, message="tools/list could not be filtered by mcp-guard")
        self._warn_undeclared(tools)
        filtered = {
            **result,
            "tools": [tool for tool in tools if isinstance(tool, dict) and tool.get("name") in visible],
        }
        if "cacheScope" in filtered:  # a list shown to one caller must not be served from a cache to another
            filtered["cacheScope"] = "private"
        return filtered

    def _warn_undeclared(self, tools: list[Any]) -> None:
        """Log, once per name, a tool the server serves and the guard has no declaration for:
        hidden and refused (default deny), which a tool meant to be served is by mistake (a
        name `@mcp.tool(name=...)` gave it and `@guard.tool` did not)."""
        declared = self.guard.tools
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if isinstance(name, str) and name not in declared and name not in self._undeclared:
                if len(self._undeclared) >= self._UNDECLARED_LIMIT:
                    return
                self._undeclared.add(name)
                logger.warning(
                    "mcp-guard: the server serves tool %s, which the guard has no declaration for: it is hidden "
                    "and refused. Declare it with @guard.tool(...) under @mcp.tool(), under the same name "
                    "(guard.tool(name=...) when the server renames it), or with guard.declare(ToolSpec(...))",
                    excerpt(name),
                )


class GuardTokenVerifier:
    """The SDK's `TokenVerifier` over a `JWTVerifier` or an `IntrospectionVerifier`.

        MCPServer(..., token_verifier=GuardTokenVerifier(verifier, guard), auth=AuthSettings(...))

    A refused token gets the SDK's 401. When a guard is given, a refusal is recorded as
    ``token.rejected`` with the precise reason, and the first acceptance of each token (and of
    each different answer for it) as ``token.accepted`` (never the token, only its
    fingerprint). When a tracer provider is installed, each verification is timed in a
    ``mcp-guard verify token`` span.
    """

    _ACCEPTED_LIMIT = 10_000

    def __init__(self, verifier: BearerVerifier, guard: Guard | None = None) -> None:
        self.verifier = verifier
        self.guard = guard
        self._accepted: dict[str | None, tuple[Principal, AccessToken]] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        if not tracing_configured():
            return await self._verify(token, None)
        with _TRACER.start_as_current_span("mcp-guard verify token") as span:
            return await self._verify(token, span)

    async def _verify(self, token: str, span: Span | None) -> AccessToken | None:
        """The SDK's view of a verified token. Its fields are built once per verification and
        remembered without the bearer string (no raw token outlives its request here); each
        request gets them with the token it presented. A token verified anew with a different
        answer (fewer scopes, say) gets new fields, and its acceptance is recorded again."""
        try:
            principal = await self.verifier.verify(token)
            seen = self._accepted.get(principal.token_hash)
            if seen is None or not _same_answer(seen[0], principal):
                seen = (principal, self._access_token(principal))
                if self.guard is not None:
                    context = span.get_span_context() if span is not None else None
                    self.guard.record(
                        AuditEvent.build(
                            EventKind.TOKEN_ACCEPTED, read_clock(self.guard.clock), principal, span=context
                        )
                    )
                remember(self._accepted, principal.token_hash, seen, self._ACCEPTED_LIMIT)  # once it is recorded
            accepted = seen[1].model_copy(update={"token": token}, deep=True)  # its own lists and dicts
        except Refused as refusal:
            self._reject(token, refusal.code, refusal.message, span)
            return None
        except Exception:
            logger.exception("mcp-guard: verifying a bearer token failed; refusing it")
            self._reject(token, ReasonCode.GUARD_ERROR, None, span)
            return None
        if span is not None:
            span.set_attributes(
                {
                    "mcp_guard.reason": "accepted",
                    "mcp_guard.principal.issuer": principal.issuer,
                    "mcp_guard.principal.subject": principal.subject,
                }
            )
        return accepted

    def _access_token(self, principal: Principal) -> AccessToken:
        return AccessToken(
            token="",
            client_id=principal.client_id,
            scopes=sorted(principal.scopes),
            expires_at=int(principal.expires_at) if principal.expires_at is not None else None,
            resource=self.verifier.issuers[principal.issuer].audience,
            subject=principal.subject,
            claims={**principal.claims, "iss": principal.issuer, "sub": principal.subject},
        )

    def _reject(self, token: str, code: str, message: str | None, span: Span | None) -> None:
        logger.info("mcp-guard: bearer token refused: %s", code)
        if span is not None:
            span.set_attribute("mcp_guard.reason", str(code))
            span.set_status(StatusCode.ERROR, code)
        if self.guard is not None:
            try:  # the token is refused either way: a failing clock or log must not turn 401 into 500
                policy = self.guard.policy  # recorded under the policy in force, as in-band refusals are
                event = AuditEvent.build(
                    EventKind.TOKEN_REJECTED,
                    read_clock(self.guard.clock),
                    decision=Decision.deny(code, message, policy_id=policy.id, policy_version=policy.version),
                    span=span.get_span_context() if span is not None else None,
                    detail=f"token {refused_token_fingerprint(token)}",
                )
                self.guard.record(event)
            except Exception:
                logger.exception("mcp-guard: recording a refused bearer token failed")


def _same_answer(before: Principal, now: Principal) -> bool:
    """Whether two verifications of one token said the same (the same object, on a cache hit)."""
    return before is now or (before == now and before.claims == now.claims)


def _credential(ctx: ServerRequestContext[Any, Any]) -> AccessToken | None:
    """The caller's verified token: over HTTP, the one this request authenticated with (never
    one set around the server, such as a test's `acting_as`); in process, what
    ``get_access_token()`` reads."""
    if ctx.request is None:
        caller = auth_context_var.get()
        return caller.access_token if caller is not None else None
    return _authenticated(ctx.request)


def _authenticated(request: object) -> AccessToken | None:
    """The token an HTTP request authenticated with (the user Starlette's authentication set)."""
    user = request.scope.get("user") if isinstance(request, Request) else None
    return user.access_token if isinstance(user, AuthenticatedUser) else None


def transport_session(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The legacy session a request belongs to; None on MCP 2026-07-28 and stateless HTTP.

    Streamable HTTP sessions have the ``Mcp-Session-Id``. A stdio or in-process connection has
    no id of its own, so one is minted and kept in the connection's state: the connection is
    the session. A connection with no channel back to the client is one request's own (a
    per-request envelope naming an older version, in process): no session, as on 2026-07-28.
    The SDK exposes the connection only as ``ctx.session._connection``.
    """
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    connection = getattr(ctx.session, "_connection", None)
    if connection is None:
        return None
    session_id = getattr(connection, "session_id", None)
    if isinstance(session_id, str):
        return session_id
    if ctx.request is not None or not getattr(connection, "has_standalone_channel", True):
        return None
    state: dict[str, Any] = connection.state
    minted = state.get(_CONNECTION_SESSION)
    if not isinstance(minted, str):
        state[_CONNECTION_SESSION] = minted = "conn-" + secrets.token_hex(16)
    return minted


def denial_error(authorization: Authorization) -> MCPError:
    """The JSON-RPC error for a denial: a stable code, the reason's message, and machine data."""
    decision = authorization.decision
    reason = decision.reason
    data: dict[str, Any] = {"reason": reason.code}
    if decision.missing_scopes:
        data["missing_scopes"] = sorted(decision.missing_scopes)
    if reason.code == ReasonCode.INSUFFICIENT_SCOPE and authorization.request is not None:
        data["required_scopes"] = sorted(authorization.request.tool.scopes)
    return MCPError(code=GUARD_DENIED, message=reason.message, data=data)


def _request_as_seen(request: Any, user: AuthenticatedUser) -> Any:
    """The HTTP request as a tool may see it: no ``Authorization`` header, and the trimmed
    caller as its ``user`` and ``auth`` (what Starlette's authentication set on it)."""
    if not isinstance(request, Request):
        return request
    scope = dict(request.scope)
    scope["headers"] = [(name, value) for name, value in scope.get("headers", ()) if name.lower() != b"authorization"]
    scope["user"], scope["auth"] = user, AuthCredentials(user.scopes)
    seen = Request(scope, request.receive)
    body = getattr(request, "_body", None)
    if isinstance(body, bytes):  # what the SDK already read: reading it again must not wait on the socket
        seen._body = body
    return seen


def _trimmed(token: AccessToken, approved: frozenset[str]) -> AccessToken:
    """The caller's token as a tool may see it: only the approved scopes, no bearer string.

    The scope claims (``scope``, and ``scp`` that some servers use) are trimmed too.
    """
    listed = sorted(approved)
    claims = dict(token.claims) if token.claims else None
    if claims is not None:
        if "scope" in claims:
            claims["scope"] = format_scope(listed)
        if "scp" in claims:
            claims["scp"] = listed
    return read_only_token(token, token="", scopes=listed, claims=claims)
