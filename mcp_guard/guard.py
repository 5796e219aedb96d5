"""The `Guard`: the tool registry and the one pipeline every call goes through.

    identify -> bind session -> decide -> record

Each stage is a small protocol (`Identifier`, `SessionStore` with `SessionKeys`, `Policy`,
`AuditSink`); this module only wires them, and turns any failure into a recorded denial.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar, cast

import anyio
from mcp.server.auth.provider import AccessToken

from mcp_guard.audit.arguments import error_detail, log_failure, summarize_arguments
from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.owed import OwedRecords
from mcp_guard.audit.sinks import AuditSink, MemoryAuditSink
from mcp_guard.audit.spans import annotate_span, current_span_context, recording_span
from mcp_guard.clock import read_clock
from mcp_guard.context import ADMITTED, refuse_unguarded
from mcp_guard.errors import Refused
from mcp_guard.identity.access_token import AccessTokenIdentifier, Identifier, refused_token_fingerprint
from mcp_guard.model import (
    CallRequest,
    Decision,
    Delegation,
    Principal,
    Risk,
    Session,
    SessionState,
    ToolSpec,
    collection,
    give_back_all,
    tell_allowed,
)
from mcp_guard.policy.base import Policy, PolicyFunction, cancelled_itself, in_force, named_policy, reloads
from mcp_guard.policy.gaps import policy_gaps
from mcp_guard.policy.risk import RiskScoring, RiskSettings
from mcp_guard.policy.scopes import ScopePolicy, check_within_grant
from mcp_guard.policy.shadow import Shadow
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import scope_set
from mcp_guard.session.keys import SessionKeys, named_by_one_token
from mcp_guard.session.memory import MemorySessionStore
from mcp_guard.session.revocation import Revocations
from mcp_guard.session.settings import SessionSettings, presentable_until
from mcp_guard.session.store import SessionStore
from mcp_guard.signature import ToolArguments, signature_of
from mcp_guard.text import escaped

__all__ = ["ACTIVITY_TIMEOUT", "LONG_CALL", "Authorization", "Guard"]

logger = logging.getLogger("mcp_guard")

F = TypeVar("F", bound=Callable[..., Any])

LONG_CALL = 1.0
"""Seconds an admitted call runs before its end counts as activity of its own (`Guard.call_ended`)."""

ACTIVITY_TIMEOUT = 1.0
"""Seconds `Guard.call_ended` waits on the session store before it lets the response go."""

_LIFETIME_ENDS = (ReasonCode.SESSION_EXPIRED, ReasonCode.SESSION_IDLE_EXPIRED)
_ACTIVE = SessionState.ACTIVE
_FAILED = Decision.deny(ReasonCode.GUARD_ERROR)
_UNRECORDED = "The call was refused because its audit record could not be written."
_REFUSED_LATE = "refused after it was allowed and recorded: "
_LATE = _REFUSED_LATE + "revoked or ended while the call was being recorded"
_UNCOUNTED = "The call was refused because its session could not be updated."
_UNCOUNTED_DETAIL = _REFUSED_LATE + "counting it on its session failed"
_new = tuple.__new__
_CALL_DECIDED = EventKind.CALL_DECIDED
_TOKEN_REJECTED = EventKind.TOKEN_REJECTED


class Authorization(NamedTuple):
    """What `Guard.authorize` returns: the decision, the call it judged (None if refused early),
    and the ``call.decided`` event recorded for it (what `Guard.record_completion` follows up)."""

    decision: Decision
    request: CallRequest | None = None
    event: AuditEvent | None = None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


class Guard:
    """Authorizes every tool call: who is calling, under which session, with which scopes.

    Every argument has a safe default: the SDK's verified access token as identity, sessions
    in process memory, the built-in scope policy (with an optional explicit scope hierarchy),
    and an in-memory audit log. ``leeway`` is the grace in seconds after a token's expiry;
    ``clock`` returns the time in seconds (inject one in tests). ``record_arguments`` puts each
    call's arguments (redacted per tool, and bounded) on its span and in its audit event.
    ``risk`` scores sessions and revokes one that crosses its threshold (a policy loaded from a
    file brings its own). ``shadow`` is a candidate policy judged beside the enforcing one: it
    never changes a decision, each disagreement is recorded as ``policy.disagreed``, and an
    asynchronous candidate gets at most ``shadow_timeout`` seconds per call.
    """

    def __init__(
        self,
        *,
        policy: Policy | PolicyFunction | None = None,
        scope_hierarchy: Mapping[str, str | Iterable[str]] | None = None,
        identifier: Identifier | None = None,
        sessions: SessionStore | None = None,
        session_settings: SessionSettings | None = None,
        session_keys: SessionKeys | None = None,
        audit: Sequence[AuditSink] | None = None,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        record_arguments: bool = False,
        risk: RiskSettings | None = None,
        shadow: Policy | PolicyFunction | None = None,
        shadow_timeout: float = 0.5,
    ) -> None:
        if policy is not None and scope_hierarchy is not None:
            raise ValueError("give scope_hierarchy to your policy, not to both")
        if not (math.isfinite(leeway) and 0 <= leeway <= 300):
            raise ValueError(f"leeway must be between 0 and 300 seconds, not {leeway!r}")
        self.policy = policy if policy is not None else ScopePolicy(scope_hierarchy)
        self.identifier: Identifier = identifier if identifier is not None else AccessTokenIdentifier()
        self.sessions: SessionStore = sessions if sessions is not None else MemorySessionStore()
        self.session_settings = session_settings if session_settings is not None else SessionSettings()
        self.session_keys = session_keys if session_keys is not None else SessionKeys()
        self.sinks: tuple[AuditSink, ...] = tuple(audit) if audit is not None else (MemoryAuditSink(),)
        self.revocations = Revocations()
        self._owed = OwedRecords()
        self.leeway = leeway
        self.clock = clock
        self.record_arguments = record_arguments
        self._risk = risk
        self.shadow = Shadow(shadow, self.sinks, timeout=shadow_timeout) if shadow is not None else None
        self._tools: dict[str, ToolSpec] = {}
        self._arguments: dict[str, ToolArguments] = {}

    @property
    def policy(self) -> Policy:
        """The policy deciding calls (replaceable at any time)."""
        return self._deciding[0]

    @policy.setter
    def policy(self, policy: Policy | PolicyFunction) -> None:
        """Install ``policy`` (a function is wrapped by `as_policy`, as for ``shadow``); one
        without a string ``id`` and ``version`` is refused, since every decision and denial is
        recorded under them."""
        policy = named_policy(policy)
        merged = getattr(policy, "merged", None)
        self._deciding: tuple[Policy, bool, Callable[[ToolSpec], ToolSpec] | None, bool] = (
            policy,
            hasattr(policy, "risk"),
            merged if callable(merged) else None,
            reloads(policy),
        )
        """The policy, whether it scores risk, how it sees a declaration, and whether it reloads
        (``in_force()`` gives the revision to hold to), read by a call in one step: a policy
        installed or reloaded meanwhile decides the next call, not part of this one."""

    @property
    def risk(self) -> RiskScoring | None:
        """How sessions' risk is scored: the guard's own settings, else its policy's (which may reload)."""
        return self._risk if self._risk is not None else getattr(self.policy, "risk", None)

    # -- the registry -------------------------------------------------------------------------

    @property
    def tools(self) -> Mapping[str, ToolSpec]:
        """The declared tools by name (read-only)."""
        return MappingProxyType(self._tools)

    def as_policy_sees(self, spec: ToolSpec) -> ToolSpec:
        """``spec`` with what the policy's own declaration of the tool adds (a policy file's
        scopes, tags and risk level): the declaration that decides, lists, weighs and enters the
        session's history, whichever member of a combination declared it."""
        merged = self._deciding[2]
        return spec if merged is None else merged(spec)

    def policy_gaps(self) -> list[str]:
        """Names the policy's rules use that no declared tool has (a tool, a tag, an argument):
        rules that can never apply, one sentence each. Call it once every tool is declared, in a
        test (``assert guard.policy_gaps() == []``) or at start-up."""
        tools = {name: self.as_policy_sees(spec) for name, spec in self._tools.items()}
        return policy_gaps(self.policy, tools, {name: reading.loose for name, reading in self._arguments.items()})

    def declare(self, spec: ToolSpec) -> ToolSpec:
        """Register what a tool needs. A name can be declared once."""
        if spec.name in self._tools:
            raise ValueError(f"tool {spec.name!r} is already declared")
        self._tools[spec.name] = spec
        return spec

    def tool(
        self,
        name: str | None = None,
        *,
        scopes: str | Iterable[str] = (),
        optional_scopes: str | Iterable[str] = (),
        risk: Risk | str = Risk.READ,
        data_classes: Iterable[str] = (),
        owner: str | None = None,
        tags: Iterable[str] = (),
        conceal: bool = False,
        delegation: Delegation = "allow",
        actors: Iterable[str] = (),
        redact: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Declare a tool's needs; stack it under ``@mcp.tool()``.

        The function keeps its name, signature, docstring and sync/async nature, so the SDK
        builds the same schema, injects Context, and runs sync tools on worker threads. It
        refuses to run unless the guard admitted this very call, so a server that forgot the
        middleware fails closed instead of serving unchecked calls. A field named in ``redact``
        is redacted under each of its names the signature shows (`ToolArguments.redacting`).
        """

        def decorator(fn: F) -> F:
            input_schema, arguments = signature_of(fn)
            tool_name = name or fn.__name__

            def listed(values: Iterable[str], what: str) -> frozenset[str]:
                return frozenset(collection(values, f"tool {tool_name!r}: {what}"))

            spec = self.declare(
                ToolSpec(
                    name=tool_name,
                    scopes=scope_set(scopes),
                    optional_scopes=scope_set(optional_scopes),
                    risk=Risk(risk),
                    data_classes=listed(data_classes, "data_classes"),
                    owner=owner,
                    tags=listed(tags, "tags"),
                    conceal=conceal,
                    delegation=delegation,
                    actors=listed(actors, "actors"),
                    redact=arguments.redacting(listed(redact, "redact")),
                    input_schema=input_schema,
                )
            )
            self._arguments[spec.name] = arguments
            return _admitted_only(fn, spec.name)

        return decorator

    # -- the pipeline ---------------------------------------------------------------------------

    async def authorize(
        self,
        tool: object,
        arguments: object,
        credential: AccessToken | None,
        *,
        protocol_version: str | None = None,
        transport_session: str | None = None,
        request_id: str | int | None = None,
        remote: bool = False,
    ) -> Authorization:
        """Decide one ``tools/call`` from what arrived on the wire, and record the decision.

        ``tool`` and ``arguments`` are the raw request values (any type). ``transport_session``
        is the legacy transport's session id, None on MCP 2026-07-28. ``remote`` says the call
        came over a network transport (HTTP): without a credential it is refused as
        ``token_missing``, never given an identity the process holds for itself
        (`WorkloadIdentity`, meant for stdio and in-process servers). Never raises: a failure
        in any stage is a denial with its own reason code (a policy's cancellation of its own
        is a failure; a cancellation of the task awaiting this one propagates).

        This is the per-call hot path. Inside a real request every Python-level call costs about
        half a microsecond, so one-line steps are written inline here and the per-call records
        are built with ``tuple.__new__``; each stage with real logic keeps its own method.
        """
        installed, policy_scores_risk, merged, holds = self._deciding  # this call's, whatever comes meanwhile
        policy = installed
        try:
            now = read_clock(self.clock)
            revocations_made = self.revocations.made  # one made on another thread meanwhile: check again
            kind = _TOKEN_REJECTED
            detail: str | None = None
            principal: Principal | None = None
            session_id: str | None = None
            session: Session | None = None
            found: Session | None = None
            spec: ToolSpec | None = None
            request: CallRequest | None = None
            candidate: Policy | None = None
            active_at = now  # when the session was last active: the end of a decision awaited
            try:
                if remote and credential is None:
                    raise Refused(ReasonCode.TOKEN_MISSING)
                principal = self.identifier.identify(credential)
                self.check_principal(principal, now)
                kind = _CALL_DECIDED
                if holds:  # a policy file, or a combination of one: hold to the revision in force now
                    policy = in_force(installed)
                    merged, policy_scores_risk = getattr(policy, "merged", None), hasattr(policy, "risk")
                if self.shadow is not None:  # the candidate too, as of the same moment
                    candidate = self.shadow.hold()
                session_id = self.session_keys.key(principal, transport_session)
                found = await self.sessions.get(session_id)
                if (
                    found is None
                    or (principal.token_id or principal.token_hash) not in found.tokens
                    or _session_refusal(found, principal, now) is not None
                ):
                    found = await self._bind_session(session_id, principal, found, now, transport_session is None)
                session = found  # only a session this principal may use counts the call
                if type(tool) is not str:
                    raise Refused(ReasonCode.REQUEST_MALFORMED)
                spec = self._tools.get(tool)
                if spec is not None and merged is not None:
                    spec = merged(spec)
                if spec is None or (spec.conceal and not policy.visible(principal, spec)):
                    spec = None
                    raise Refused(ReasonCode.TOOL_NOT_FOUND, f"Unknown tool '{_display(tool)}'.")
                if arguments is None:
                    arguments = {}
                elif type(arguments) is not dict:
                    raise Refused(ReasonCode.ARGUMENTS_INVALID)
                reading = self._arguments.get(tool)
                if reading is not None:  # as the tool will receive them
                    arguments = reading.apply(arguments)
                request = _new(CallRequest, (principal, session, spec, arguments, now, protocol_version, request_id))
                awaited = False
                try:
                    verdict = policy.decide(request)
                    awaited = type(verdict) is not Decision
                    decision = await self._settled(verdict, principal, policy) if awaited else cast(Decision, verdict)
                    if not decision.policy_id:  # a policy naming none: recorded under its own name
                        decision = _named_by(decision, policy)
                    if decision.allowed and not decision.approved_scopes <= principal.scopes:
                        check_within_grant(decision, principal, policy)  # or within it by the hierarchy
                except BaseException as error:
                    if not (isinstance(error, Exception) or cancelled_itself(error)):
                        raise
                    detail = error_detail(error, spec.redact)
                    log_failure(logger, f"policy {policy.id!r} failed on tool {spec.name}; denying", error, spec.redact)
                    decision = self._refusal(ReasonCode.POLICY_ERROR, None, principal, policy)
                if awaited and decision.allowed:  # revoked or ended while a remote policy was deciding?
                    active_at = await self._check_still_usable(principal, session, now)
            except Refused as refusal:
                decision = self._refusal(refusal.code, refusal.message, principal, policy)
                if principal is None and credential is not None and credential.token:
                    detail = f"token {refused_token_fingerprint(credential.token)}"  # which token could not be read
                elif principal is not None and session_id is None:  # expired or revoked: the session it names
                    session_id, found = await self._named_session(principal, transport_session)
            except Exception:
                logger.exception("mcp-guard: authorizing tool %s failed; denying", _display(tool))
                decision = self._refusal(ReasonCode.GUARD_ERROR, None, principal, policy)
            tool_name = spec.name if spec is not None else _display(tool)
            span = recording_span()
            trace_context = span.get_span_context() if span is not None else None
            known = session if session is not None else found  # a refused caller's too: its owners hear of it
            owners = known.owners if known is not None else None
            facts = None
            if self.record_arguments and request is not None:
                facts = {"arguments": summarize_arguments(request.arguments, request.tool.redact)}
            asked = None
            if self.shadow is not None and request is not None:
                # the live policy: the shadow reads the rules it shares with it before and after a reload
                asked = await self.shadow.ask(request, self._tools[request.tool.name], installed, candidate)
            risk = self._risk  # the `risk` property, inline, of the deciding policy
            if risk is None and policy_scores_risk:
                risk = getattr(policy, "risk", None)
            weight = 0.0
            if risk is not None and session is not None:
                weight = risk.weight(decision, spec)
                if decision.allowed and risk.reached(session.risk_score + weight):
                    decision = self._refusal(ReasonCode.SESSION_RISK_EXCEEDED, None, principal, policy)
            taken: Sequence[Callable[[], None]] = ()  # what gives back the counts, should the call be refused late
            if decision.allowed and request is not None and decision.on_allow:  # last: only allowed calls count
                decision, taken = self._counted(decision, request, principal, policy)
                if not decision.allowed and risk is not None and session is not None:
                    weight = risk.weight(decision, spec)  # weighed as the refusal it became
            event = AuditEvent.build(
                kind, now, principal, session_id, tool_name, decision, trace_context, detail, owners, facts
            )
            ended = False  # by this call's weight: calls on other threads counted in before it
            recorded = False
            shadow_taken: Sequence[Callable[[], None]] = ()  # what the candidate counted of its own
            try:
                self.record(event)
                recorded = True
                if session is not None:
                    score = await self.sessions.record_call(
                        session, active_at, allowed=decision.allowed, tool=spec, targets=decision.targets, risk=weight
                    )
                    if risk is not None and risk.reached(score):
                        await self._end_risky_session(session, principal, score, risk.threshold, now)
                        ended = True
                if self.shadow is not None and asked is not None:
                    shadow_taken = self.shadow.compare(asked, decision, event)
            except Exception:
                failed = "counting the call on its session" if recorded else "recording the decision"
                logger.exception("mcp-guard: %s on tool %s failed; denying", failed, tool_name)
                if decision.allowed:
                    give_back_all(taken)
                    message, why = (_UNCOUNTED, _UNCOUNTED_DETAIL) if recorded else (_UNRECORDED, detail)
                    decision = self._refusal(ReasonCode.GUARD_ERROR, message, principal, policy)
                    event = AuditEvent.build(
                        kind, now, principal, session_id, tool_name, decision, trace_context, why, owners, facts
                    )
                    self._emit_best_effort(event)
            except BaseException:  # cancelled while recording: the call will not run
                if decision.allowed:
                    give_back_all([*taken, *shadow_taken])
                raise
            if (
                decision.allowed
                and session is not None
                and principal is not None
                and (
                    ended
                    or self.shadow is not None
                    or type(self.sessions) is not MemorySessionStore
                    or self.revocations.made != revocations_made
                )
            ):
                try:  # the shadow, the session store or another thread: revoked or ended meanwhile?
                    await self._check_still_usable(principal, session, now)
                except Exception as error:
                    give_back_all([*taken, *shadow_taken])
                    if isinstance(error, Refused):
                        decision = self._refusal(error.code, error.message, principal, policy)
                    else:
                        logger.exception("mcp-guard: checking the session again on tool %s failed; denying", tool_name)
                        decision = self._refusal(ReasonCode.GUARD_ERROR, None, principal, policy)
                    event = AuditEvent.build(
                        kind, now, principal, session_id, tool_name, decision, trace_context, _LATE, owners, facts
                    )
                    self._emit_best_effort(event)
                except BaseException:  # cancelled during the second look: the call will not run
                    give_back_all([*taken, *shadow_taken])
                    raise
            if span is not None:
                annotate_span(span, event, decision, transport_session)
            return _new(Authorization, (decision, request, event))
        except Exception:
            logger.exception("mcp-guard: authorizing a call failed outside any stage; denying")
            return Authorization(_FAILED)

    async def visible_tools(
        self, credential: AccessToken | None, transport_session: str | None = None, *, remote: bool = False
    ) -> frozenset[str]:
        """The declared tools this caller may call now, for ``tools/list``. Nothing on any failure,
        and nothing to a ``remote`` caller without a credential (see `authorize`).

        Listing opens no session; a session that exists must be usable by this caller.
        """
        try:
            principal, _, _, refusal, _ = await self._caller(
                credential, transport_session, remote, read_clock(self.clock)
            )
            if refusal is not None:
                return frozenset()
            return frozenset(
                name for name, spec in self._tools.items() if self.policy.visible(principal, self.as_policy_sees(spec))
            )
        except Refused:
            return frozenset()
        except Exception:
            logger.exception("mcp-guard: listing tools failed; showing none")
            return frozenset()

    async def admit_request(
        self, method: str, credential: AccessToken | None, transport_session: str | None = None, *, remote: bool = False
    ) -> Decision | None:
        """None when this caller may make a request that is not a tool call (``resources/read``,
        ``prompts/get``, their lists, ``completion/complete``, any other method) now; else the
        denial, recorded.

        The caller must be one a tool call would accept: a credential over HTTP, not expired,
        not revoked, and able to use its session if it has one (no session is opened). The
        guard has no per-resource or per-prompt rules: what a caller may call, it may read.
        """
        principal: Principal | None = None
        session_id: str | None = None
        session: Session | None = None
        now = math.nan
        kind = _TOKEN_REJECTED  # until the token is read, in time and not revoked, as for a tool call
        detail = f"{_display(method)} request"
        try:
            now = read_clock(self.clock)
            principal, session_id, session, refused, kind = await self._caller(
                credential, transport_session, remote, now
            )
            if refused is None:
                return None
            decision = self._refusal(refused.code, refused.message, principal)
        except Refused as refusal:
            decision = self._refusal(refusal.code, refusal.message, principal)
            if principal is None and credential is not None and credential.token:
                detail += f"; token {refused_token_fingerprint(credential.token)}"  # which token could not be read
        except Exception:
            logger.exception("mcp-guard: admitting a %s request failed; denying", _display(method))
            kind = _CALL_DECIDED  # the guard's failure (a store down, say), not the token's
            decision = self._refusal(ReasonCode.GUARD_ERROR, None, principal)
        span = recording_span()
        event = AuditEvent.build(
            kind,
            now if math.isfinite(now) else time.time(),
            principal,
            session_id,
            decision=decision,
            span=span.get_span_context() if span is not None else None,
            detail=detail,
            owners=session.owners if session is not None else None,
        )
        self._emit_best_effort(event)
        if span is not None:  # the request's span joins its record, as a tool call's does
            annotate_span(span, event, decision, transport_session)
        return decision

    async def _caller(
        self, credential: AccessToken | None, transport_session: str | None, remote: bool, now: float
    ) -> tuple[Principal, str | None, Session | None, Refused | None, EventKind]:
        """The principal of a request that opens no session, its session key and stored session,
        why it may not act now (None when it may: expired, revoked, or unable to use its session
        if it has one), and the kind of its record (``token.rejected`` for a token expired or
        revoked). `Refused` when there is no principal: no credential over HTTP (see
        `authorize`), or one that cannot be read."""
        if remote and credential is None:
            raise Refused(ReasonCode.TOKEN_MISSING)
        principal = self.identifier.identify(credential)
        session_id: str | None = None
        session: Session | None = None
        kind = _CALL_DECIDED
        try:
            session_id = self.session_keys.key(principal, transport_session)
            session = await self.sessions.get(session_id)  # read first: a refusal names its owners too
            try:
                self.check_principal(principal, now)
            except Refused:
                kind = _TOKEN_REJECTED
                raise
            if session is not None:
                code = _session_refusal(session, principal, now)
            else:  # none yet, or one the store has let go of: its id may be revoked for good
                code = ReasonCode.SESSION_REVOKED if self.revocations.session_revoked(session_id) else None
            return principal, session_id, session, Refused(code) if code is not None else None, kind
        except Refused as refusal:
            return principal, session_id, session, refusal, kind

    async def _named_session(
        self, principal: Principal, transport_session: str | None
    ) -> tuple[str | None, Session | None]:
        """The key of the session ``principal`` names, and the session stored under it (None if
        there is none), for the record of a refusal; (None, None) when the credential names no
        usable key, or the store cannot be read (which is logged)."""
        try:
            session_id = self.session_keys.key(principal, transport_session)
            return session_id, await self.sessions.get(session_id)
        except Refused:  # a key the credential cannot name (too long, say): the refusal says so
            return None, None
        except Exception:
            logger.exception("mcp-guard: the session of subject %s could not be read", escaped(principal.subject))
            return None, None

    # -- revocation -----------------------------------------------------------------------------

    async def revoke(
        self,
        *,
        session_id: str | None = None,
        subject: str | None = None,
        client_id: str | None = None,
        token_id: str | None = None,
        issuer: str | None = None,
        ttl: float | None = None,
        reason: str = "",
    ) -> None:
        """Revoke one target; it takes effect on the very next call.

        Give exactly one of ``session_id``, ``subject``, ``client_id`` or ``token_id`` (a
        ``jti`` or a token fingerprint). ``issuer`` narrows a subject, client or token id to one
        issuer (without it, every issuer). ``ttl`` bounds a subject, client or token revocation
        in seconds; without it, it lasts until `restore`. A session is revoked for good, so
        neither applies to it; one the guard does not hold raises `LookupError` (a governed
        session opens at its first tool call: before it, revoke its subject, client or token).
        A call already admitted runs to its end. A clock that gives no
        usable time raises `Refused` (``guard_error``) and revokes nothing; every call is denied
        meanwhile, and the revocation is to be made again once the clock is sound. An audit sink
        that refuses the record raises its error, and the revocation stands: the record is owed
        to that sink, and written before anything else it takes.
        """
        targets = {"session_id": session_id, "subject": subject, "client_id": client_id, "token_id": token_id}
        given = _one_target(targets, issuer)
        if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"ttl must be a positive, finite number of seconds, not {ttl!r}")
        if session_id is not None and (ttl is not None or issuer is not None):
            raise ValueError("a session is revoked for good, under its own id: give no ttl or issuer with session_id")
        now = read_clock(self.clock)
        if session_id is not None:
            stored = await self.sessions.get(session_id)
            ended = await self.sessions.end(session_id, SessionState.REVOKED, ReasonCode.SESSION_REVOKED)
            if ended == "missing":
                raise LookupError(f"no session {session_id!r} to revoke")
            already_revoked = self.revocations.session_revoked(session_id)
            self.revocations.revoke_session(session_id, until=_revoked_until(stored), now=now)
            if ended == "ended" or not already_revoked:  # an expired session's id is revoked now too
                note = None if ended == "ended" else "the session had already ended"
                detail = "; ".join(part for part in (note, reason) if part) or None
                self._record_changes(
                    (
                        AuditEvent.build(
                            EventKind.SESSION_REVOKED,
                            now,
                            Principal(*stored.binding) if stored is not None else None,  # whose session it was
                            session_id,
                            span=current_span_context(),
                            detail=detail,
                            owners=stored.owners if stored is not None else None,
                        ),
                    )
                )
            return
        until = math.inf if ttl is None else now + ttl
        if subject is not None:
            self.revocations.revoke_subject(subject, issuer=issuer, until=until)
        elif client_id is not None:
            self.revocations.revoke_client(client_id, issuer=issuer, until=until)
        elif token_id is not None:
            self.revocations.revoke_token(token_id, issuer=issuer, until=until)
        detail = _describe(given, issuer, reason, until)
        self._record_changes(
            (AuditEvent.build(EventKind.ACCESS_REVOKED, now, span=current_span_context(), detail=detail),)
        )

    async def restore(
        self,
        *,
        subject: str | None = None,
        client_id: str | None = None,
        token_id: str | None = None,
        issuer: str | None = None,
        reason: str = "",
    ) -> bool:
        """Lift the revocation of a subject, client or token named by the same arguments; say
        whether there was one (only then is ``access.restored`` recorded).

        It lifts every revocation of that target, however many were made: a target has one
        revocation, lasting as long as the longest made. Revoked sessions stay revoked: the
        client opens a new one.
        """
        given = _one_target({"subject": subject, "client_id": client_id, "token_id": token_id}, issuer)
        now = read_clock(self.clock)
        lifted = self.revocations.restore(
            now=now, token_id=token_id, subject=subject, client_id=client_id, issuer=issuer
        )
        if lifted is None:
            return False
        detail = _describe(given, issuer, reason, lifted, lifting=True)
        self._record_changes(
            (AuditEvent.build(EventKind.ACCESS_RESTORED, now, span=current_span_context(), detail=detail),)
        )
        return True

    # -- stages -------------------------------------------------------------------------------

    def check_principal(self, principal: Principal, now: float) -> None:
        """Raise `Refused` for a principal expired at ``now`` (beyond the leeway) or revoked."""
        if principal.expires_at is not None and now > principal.expires_at + self.leeway:
            raise Refused(ReasonCode.TOKEN_EXPIRED)
        if self.revocations.active:
            revoked = self.revocations.check(principal, now)
            if revoked is not None:
                raise Refused(revoked)

    async def _bind_session(
        self, session_id: str, principal: Principal, found: Session | None, now: float, from_credential: bool
    ) -> Session:
        """Open the session ``found`` missing and bind ``principal``'s token to it, or raise why
        ``principal`` may not use it now. ``from_credential`` says the key came from the token,
        not the transport (see `SessionSettings.open`).

        `authorize` checks the common case inline (an existing usable session with the token
        already bound to it), which this returns unchanged. A new token of the same identity
        (a refreshed one) is recorded as ``session.bound``.
        """
        if self._owed.entries:  # no change while a sink cannot take the records of those made
            self._owed.settle()
        session, opened = found, False
        changes: list[EventKind] = []
        if session is None:
            if self.revocations.session_revoked(session_id):
                raise Refused(ReasonCode.SESSION_REVOKED)
            opening = self.session_settings.open(
                session_id, principal, now, leeway=self.leeway, from_credential=from_credential
            )
            session, opened = await self.sessions.add(opening)
            if opened:
                changes.append(EventKind.SESSION_OPENED)
        refusal = _session_refusal(session, principal, now)
        if refusal is None:
            token_id = principal.token_id or principal.token_hash
            until = presentable_until(principal, self.leeway, math.inf)
            key_until = presentable_until(principal, self.leeway, math.inf if from_credential else session.expires_at)
            if opened or await self.sessions.bind_token(session, token_id, until, key_until):
                changes.append(EventKind.SESSION_BOUND)
        elif (
            refusal in _LIFETIME_ENDS and await self.sessions.end(session_id, SessionState.EXPIRED, refusal) == "ended"
        ):
            changes.append(EventKind.SESSION_EXPIRED)
        self._record_changes(
            AuditEvent.build(kind, now, principal, session_id, span=current_span_context(), owners=session.owners)
            for kind in changes
        )
        if refusal is None:
            return session
        raise Refused(refusal)

    def _counted(
        self, decision: Decision, request: CallRequest, principal: Principal | None, policy: Policy
    ) -> tuple[Decision, Sequence[Callable[[], None]]]:
        """``decision`` once the rules that count allowed calls (rate limits) have counted this
        one, and how to give the counts back should the call be refused before it runs.

        Each counts only while its limit still has room, in one step, so calls decided at the
        same time cannot all pass a limit one of them fills; the one that finds no room is
        refused with that rule's reason, and the rules that counted it before give it back. A
        rule that fails denies the call.
        """
        try:
            return decision, tell_allowed(decision.on_allow, request)
        except Refused as refusal:
            return self._refusal(refusal.code, refusal.message, principal, policy), ()
        except Exception as error:
            log_failure(
                logger, f"counting the call on tool {request.tool.name} failed; denying", error, request.tool.redact
            )
            return self._refusal(ReasonCode.GUARD_ERROR, None, principal, policy), ()

    async def _check_still_usable(self, principal: Principal, session: Session, began: float) -> float:
        """Raise `Refused` when ``principal`` or ``session`` was revoked, ended or ran out of
        time since the call began at ``began`` (as of now: the wait may have been long), read
        again from a store outside process memory, which another replica may change. Idleness
        is judged as of ``began``: the wait for the decision (an approval, a remote policy) is
        the call under way, not the session lying idle. Returns the time it checked at."""
        now = read_clock(self.clock)
        self.check_principal(principal, now)
        if type(self.sessions) is not MemorySessionStore:
            stored = await self.sessions.get(session.id)
            if stored is None:
                raise Refused(ReasonCode.SESSION_UNAVAILABLE, "The session could not be read again: retry.")
            session = stored
        refusal = _session_refusal(session, principal, now, idle_at=began)
        if refusal is None and self.revocations.session_revoked(session.id):
            refusal = ReasonCode.SESSION_REVOKED
        if refusal is not None:
            raise Refused(refusal)
        return now

    async def _settled(self, verdict: object, principal: Principal, policy: Policy) -> Decision:
        """The decision a policy's answer stands for: awaited if it is pending; an abstention denies."""
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is None:
            return self._refusal(ReasonCode.NO_APPLICABLE_RULE, None, principal, policy)
        if not isinstance(verdict, Decision):
            raise TypeError(f"policy {policy.id!r} returned {type(verdict).__name__}, not a Decision")
        return verdict

    async def _end_risky_session(
        self, session: Session, principal: Principal | None, score: float, threshold: float, now: float
    ) -> None:
        """Revoke a session whose risk score reached the threshold, and every token bound to it
        until none of them can be presented (a new connection, with the token that drove it
        there or another one of the session's, must not start a fresh budget), and record why."""
        newly = self.revocations.revoke_session(session.id, until=_revoked_until(session), now=now)
        changes: list[AuditEvent] = []
        if newly and principal is not None:  # else a call crossing the threshold at the same time did this
            reason = f"session {session.id} reached its risk threshold"
            driving = principal.token_id or principal.token_hash
            now_until = presentable_until(principal, self.leeway, math.inf)  # its expiry as verified now
            tokens = {driving: now_until, **session.tokens}  # the driving token first
            tokens[driving] = max(tokens[driving], now_until)
            for token_id, presentable in tokens.items():
                if token_id is not None:
                    until = max(session.retain_until, presentable)
                    self.revocations.revoke_token(token_id, issuer=principal.issuer, until=until)
                    detail = _describe({"token_id": token_id}, principal.issuer, reason, until)
                    changes.append(
                        AuditEvent.build(
                            EventKind.ACCESS_REVOKED,
                            now,
                            principal,
                            session.id,
                            span=current_span_context(),
                            detail=detail,
                            owners=session.owners,
                        )
                    )
        try:
            if await self.sessions.end(session.id, SessionState.REVOKED, ReasonCode.SESSION_RISK_EXCEEDED) == "ended":
                changes.append(
                    AuditEvent.build(
                        EventKind.SESSION_REVOKED,
                        now,
                        principal,
                        session.id,
                        span=current_span_context(),
                        detail=f"{ReasonCode.SESSION_RISK_EXCEEDED}: risk score {score:g} reached threshold {threshold:g}",
                        owners=session.owners,
                    )
                )
        finally:  # the revocations stand whatever the store does: so do their records
            self._record_changes(changes)  # once every revocation is made: a failing sink stops none of them

    def _refusal(
        self, code: str, message: str | None, principal: Principal | None, policy: Policy | None = None
    ) -> Decision:
        """A denial recorded under ``policy`` (the one that decided), else the one installed."""
        policy = policy if policy is not None else self.policy
        return Decision.deny(
            code,
            message,
            requested=principal.scopes if principal is not None else (),
            policy_id=policy.id,
            policy_version=policy.version,
        )

    async def record_refusal(self, principal: Principal, spec: ToolSpec, decision: Decision, detail: str) -> bool:
        """Record a call refused before it reached `authorize` (an HTTP step-up challenge) as an
        in-band refusal is recorded: on the caller's session, which it opens or binds to as a
        call would, with its risk weight, ending the session at the risk threshold.

        False when it cannot be (the caller may not use that session, a sink failed): the
        caller then gets no answer of its own, and `authorize` refuses the call in band. A
        decision naming no policy is recorded under the one installed, which judged the call.
        """
        try:
            if not decision.policy_id:
                decision = _named_by(decision, self.policy)
            now = read_clock(self.clock)
            session_id = self.session_keys.key(principal, None)
            found = await self.sessions.get(session_id)
            session = await self._bind_session(session_id, principal, found, now, True)
            span = recording_span()
            trace_context = span.get_span_context() if span is not None else None
            event = AuditEvent.build(
                _CALL_DECIDED, now, principal, session_id, spec.name, decision, trace_context, detail, session.owners
            )
            self.record(event)
            risk = self.risk
            weight = risk.weight(decision, spec) if risk is not None else 0.0
            score = await self.sessions.record_call(session, now, allowed=False, tool=spec, risk=weight)
            if risk is not None and risk.reached(score):
                await self._end_risky_session(session, principal, score, risk.threshold, now)
        except Refused:
            return False
        except Exception:
            logger.exception("mcp-guard: recording a refusal of tool %s failed", spec.name)
            return False
        return True

    def refuse_admitted(self, authorization: Authorization, why: str) -> Authorization:
        """Refuse a call `authorize` allowed and recorded, before it runs, as the integration
        cannot go on with it (``why``, for the record): a ``guard_error`` denial, recorded as a
        second ``call.decided`` event, as a call revoked while it was being recorded is.

        What the allowed decision counted (rate limits, the session's calls) stands. Best effort:
        the call is refused either way, so a failing sink is logged, never raised.
        """
        decided = authorization.event
        allowed = authorization.decision
        principal = decided.principal if decided is not None else None
        decision = Decision.deny(
            ReasonCode.GUARD_ERROR,
            None,
            requested=principal.scopes if principal is not None else (),
            policy_id=allowed.policy_id,
            policy_version=allowed.policy_version,
        )
        if decided is None:
            return Authorization(decision)
        span = recording_span()
        event = AuditEvent.build(
            _CALL_DECIDED,
            decided.at,
            principal,
            decided.session_id,
            decided.tool,
            decision,
            span.get_span_context() if span is not None else None,
            _REFUSED_LATE + why,
            decided.owners,
            decided.facts,
        )
        self._emit_best_effort(event)
        if span is not None:
            annotate_span(span, event, decision, None)
        return Authorization(decision, authorization.request, event)

    async def call_ended(self, request: CallRequest) -> None:
        """Restart the idle timer of the session an admitted call ran on, now that it has ended.

        The time a call runs is activity: an agent waiting on a tool that ran past the idle
        limit must not find its session lapsed when it calls again. Integrations call this for
        calls that ran `LONG_CALL` seconds or more, cancelled or not; for shorter ones the
        decision's restart stands within a second, and the store is spared a write per call.
        Best effort: the call has run, so a failing clock or store is logged, never raised, and
        a store that does not answer within `ACTIVITY_TIMEOUT` holds the response no longer (the
        wait is shielded from the call's cancellation, and bounded instead).
        """
        with anyio.move_on_after(ACTIVITY_TIMEOUT, shield=True) as waited:
            try:
                await self.sessions.record_activity(request.session, read_clock(self.clock))
            except Exception:
                logger.exception(
                    "mcp-guard: the end of a call to tool %s could not restart its idle timer", request.tool.name
                )
        if waited.cancelled_caught:
            logger.warning(
                "mcp-guard: the session store did not restart the idle timer of a call to tool %s within %g s",
                request.tool.name,
                ACTIVITY_TIMEOUT,
            )

    def record_completion(self, decided: AuditEvent, result: str, duration: float, error_type: str | None) -> None:
        """Record how an admitted call ended: ``ok``, ``tool_error``, ``input_required`` or ``error``,
        and how long it took.

        ``decided`` is the call's ``call.decided`` event (`Authorization.event`). Best effort: the
        call has run, so a sink or the clock failing now is logged (and a failing sink, in deny
        mode, stops the next call), never raised.
        """
        try:
            at = read_clock(self.clock)
        except Exception:
            logger.exception("mcp-guard: the clock failed as a call to tool %s ended", decided.tool)
            at = decided.at  # the event is still worth having, at the time of its decision
        try:
            event = decided.completion(at, result, duration, error_type)
        except Exception:
            logger.exception("mcp-guard: recording how a call to tool %s ended failed", decided.tool)
            return
        self._emit_best_effort(event)

    def record(self, event: AuditEvent) -> None:
        """Give an event to every audit sink (integrations record what happens outside `authorize`),
        after the records of changes a sink refused before (see `OwedRecords`)."""
        if self._owed.entries:
            refused = self._owed.give(event, self.sinks)
            if refused is not None:
                raise refused
            return
        for sink in self.sinks:
            sink.emit(event)

    def _record_changes(self, events: Iterable[AuditEvent]) -> None:
        """Record changes already made (a session opened, bound or ended, a revocation): a sink
        that refuses one is owed it, and gets it before anything else once it takes records
        again. Raises the first refusal, so the call making the changes is denied (they stand
        all the same)."""
        refusal: Exception | None = None
        for event in events:
            refused = self._owed.give(event, self.sinks, change=True)
            refusal = refusal or refused
        if refusal is not None:
            raise refusal

    def _emit_best_effort(self, event: AuditEvent) -> None:
        """Give ``event`` to every sink that will take it (after a sink already failed)."""
        if self._owed.entries:  # a failing sink is owed records: they go first
            refused = self._owed.give(event, self.sinks)
            if refused is not None:
                logger.error("mcp-guard: an audit sink failed: %s", refused)
            return
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:
                logger.exception("mcp-guard: audit sink %r failed", sink)


def _named_by(decision: Decision, policy: Policy) -> Decision:
    """``decision`` recorded under ``policy``'s id and version (it named no policy itself)."""
    return replace(decision, policy_id=policy.id, policy_version=policy.version)


def _revoked_until(session: Session | None) -> float:
    """How long a revoked session's id stays revoked: until no credential can present it (a
    key only one token presents), else for good."""
    return session.retain_until if session is not None and named_by_one_token(session.id) else math.inf


def _session_refusal(session: Session, principal: Principal, now: float, *, idle_at: float | None = None) -> str | None:
    """Why ``principal`` may not use ``session`` at ``now``, or None when it may; its idleness
    judged at ``idle_at`` when given (the start of a call still under way)."""
    if session.binding != principal.binding:
        return ReasonCode.SESSION_BINDING_MISMATCH
    if session.state is not _ACTIVE:
        return session.end_reason or ReasonCode.SESSION_REVOKED
    if now >= session.expires_at:
        return ReasonCode.SESSION_EXPIRED
    if (now if idle_at is None else idle_at) >= session.last_active_at + session.idle_timeout:
        return ReasonCode.SESSION_IDLE_EXPIRED
    return None


def _display(value: object) -> str:
    """A requested tool name as records show it: `escaped`, or its type when it is not a string."""
    return escaped(value) if isinstance(value, str) else f"<{type(value).__name__}>"


def _one_target(targets: Mapping[str, str | None], issuer: str | None) -> dict[str, str]:
    """The one revocation target given, checked: exactly one, and no empty strings."""
    given = {key: value for key, value in targets.items() if value is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(targets)}")
    for key, value in {**given, "issuer": issuer}.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key} must be a non-empty string, not {value!r}")
    return given


def _describe(
    targets: Mapping[str, str], issuer: str | None, reason: str, until: float, *, lifting: bool = False
) -> str:
    """A revocation's (or a lifted one's) audit detail: its target, and how long it lasts (lasted)."""
    parts = [f"{key}={value!r}" for key, value in targets.items()]
    if issuer is not None:
        parts.append(f"issuer={issuer!r}")
    parts.append(f"{'was until' if lifting else 'until'}={_moment(until)!r}")
    if reason:
        parts.append(f"reason={reason!r}")
    return " ".join(parts)


def _moment(at: float) -> str:
    """A time in an audit detail: ISO 8601 in UTC, or "for good" for no end."""
    if math.isinf(at):
        return "for good"
    try:
        return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # beyond the calendar (a ttl of 1e300 seconds)
        return f"{at:.0f} s after 1970"


def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether the SDK awaits ``fn``, read as it reads it: a coroutine function, through any
    ``functools.partial``, or an object whose ``__call__`` is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _admitted_only(fn: F, tool: str) -> F:
    """Wrap ``fn`` so it runs only inside a call the guard admitted for ``tool``.

    Both wrappers read the admission as `context.current_call` does, inline: they run on every
    tool call, and a function call more is measurable there."""
    if _is_async(fn):
        coroutine_fn = cast(Callable[..., Awaitable[Any]], fn)

        @functools.wraps(fn)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            admission = ADMITTED.get()
            call = admission.request if admission is not None else None
            if call is None or call.tool.name != tool:
                refuse_unguarded(tool, call)
            return await coroutine_fn(*args, **kwargs)

        return cast(F, guarded_async)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        admission = ADMITTED.get()
        call = admission.request if admission is not None else None
        if call is None or call.tool.name != tool:
            refuse_unguarded(tool, call)
        return fn(*args, **kwargs)

    return cast(F, guarded)
