"""Shadow mode: a candidate policy judged beside the enforcing one, on live traffic.

The enforcing decision always stands. Where the candidate would decide otherwise (allow where
the enforcing policy denied, deny where it allowed, or approve other scopes), the disagreement
is counted and recorded as a ``policy.disagreed`` audit event that `mcp-guard policy diff`
summarises. A candidate that fails, abstains or (asynchronously) takes longer than its timeout
counts as a denial, as it would if it enforced. The candidate judges each call on the session as
the enforcing policy saw it, before the call is counted or recorded, and on the tool as declared
with its own declaration of it (not the enforcing policy's); it counts (rate limits) only what
it would itself have allowed. The targets its own rules take (a distinct-targets cap) are kept per
session beside the real history, which holds only what the enforcing policy took, and the
tools the session ran carry the tags the candidate declares for them.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import anyio
from cachetools import LRUCache
from opentelemetry import metrics

from mcp_guard.audit.arguments import error_detail, log_failure
from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.sinks import AuditSink
from mcp_guard.errors import Refused
from mcp_guard.model import CallRequest, Decision, ToolSpec, tell_allowed
from mcp_guard.policy.base import Policy, PolicyFunction, cancelled_itself, in_force, named_policy, reloads
from mcp_guard.policy.engine import RulePolicy, rule_policies
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import format_scope

__all__ = ["Asked", "Shadow"]

logger = logging.getLogger("mcp_guard")

_SESSIONS_LIMIT = 10_000


class Asked(NamedTuple):
    """A call as the candidate saw it; its decision, and what went wrong when it failed to give
    one; the ids of the enforcing rules it shares, which the enforcing decision alone counts;
    and the candidate as it was in force for the call (a policy file's revision)."""

    request: CallRequest
    decision: Decision
    detail: str | None
    shared: frozenset[int]
    candidate: Policy


class Shadow:
    """Judges each decided call again with ``candidate`` and records where the two disagree.

    ``disagreements`` counts them by ``"<enforced> -> <candidate>"`` outcome; the same count
    goes to the OpenTelemetry counter ``mcp_guard.policy.disagreements``.
    """

    def __init__(self, candidate: Policy | PolicyFunction, sinks: Sequence[AuditSink], *, timeout: float = 0.5) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"the shadow timeout must be a positive number of seconds, not {timeout!r}")
        self.candidate = named_policy(candidate)
        self.sinks = tuple(sinks)
        self.timeout = timeout
        self.disagreements: Counter[str] = Counter()
        self._holds = reloads(self.candidate)
        self._reached: LRUCache[tuple[str, float], dict[str, frozenset[str]]] = LRUCache(maxsize=_SESSIONS_LIMIT)
        """The targets the candidate's rules took, by session (its id and when it opened: a
        session opened anew under the same key starts afresh): the sessions used least lately go
        first, one at a time, so a flood of new sessions does not wipe those in use."""
        self._reaching = threading.Lock()
        self._known: tuple[tuple[RulePolicy, ...], frozenset[int]] = ((), frozenset())
        """The enforcing rule policies last seen, and the ids of their rules: one value, so a
        thread never reads the policies of one reload with the rules of another."""
        self._counter = metrics.get_meter("mcp_guard").create_counter(
            "mcp_guard.policy.disagreements", description="Calls the shadow policy would have decided otherwise"
        )

    def hold(self) -> Policy | None:
        """The candidate as it is in force now, to be held for one call (a policy file's
        revision, as the guard holds the enforcing policy's): taken when the call begins. None
        when it cannot say: `ask` tries again, where a failure is the candidate's, never the
        call's."""
        try:
            return self._in_force()
        except Exception:
            return None

    def _in_force(self) -> Policy:
        return in_force(self.candidate) if self._holds else self.candidate

    async def ask(
        self, request: CallRequest, declared: ToolSpec, enforcing: Policy, candidate: Policy | None = None
    ) -> Asked:
        """The candidate's answer to ``request`` (``declared``: its tool as registered), settled
        before the enforcing policy counts the call, so a limit both hold is judged on the same
        count; an asynchronous answer gets the timeout.

        The enforcing rules the candidate shares are read as it is asked and once it answered:
        a reload of ``enforcing`` meanwhile makes new rule objects, the ones the candidate may
        hold. ``candidate`` is the one `hold` gave when the call began (else it is held now).
        Raises nothing but the cancellation of the task awaiting it."""
        request = request.detached()
        shared: frozenset[int] = frozenset()
        try:  # what follows is the shadow's alone: a failure in it is the candidate's failure
            if candidate is None:
                candidate = self._in_force()
            shared = self._shared(enforcing)
            request = self._as_seen(request, declared, candidate)
            decision, detail = await self._answer(request, candidate)
            later = self._shared(enforcing)
            if later is not shared:
                shared |= later
        except BaseException as error:
            if not (isinstance(error, Exception) or cancelled_itself(error)):
                raise
            candidate = self.candidate  # the one given, checked: the held one may be what failed
            decision = _refusal(request, ReasonCode.POLICY_ERROR, candidate)
            detail = error_detail(error, declared.redact)
        return Asked(request, decision, detail, shared, candidate)

    def compare(self, asked: Asked, enforced: Decision, event: AuditEvent) -> Sequence[Callable[[], None]]:
        """Record a disagreement of ``asked`` with ``enforced``; count what the candidate allowed
        with the rules it does not share, and return how to give those counts back, should the
        call be refused late (the candidate, enforcing, would have been refused too). Never raises."""
        request, candidate = asked.request, asked.decision
        counted: Sequence[Callable[[], None]] = ()
        try:
            if candidate.allowed:
                try:
                    counted = tell_allowed(
                        [hook for hook in candidate.on_allow if id(hook) not in asked.shared], request
                    )
                except Refused as refusal:  # its own limit, filled meanwhile
                    candidate = Decision.deny(refusal.code, refusal.message, requested=candidate.requested_scopes)
                else:  # added to what calls of the session that overlapped this one took
                    session = (request.session.id, request.session.created_at)
                    with self._reaching:
                        taken = dict(self._reached.get(session, {}))
                        for rule, seen in request.session.history.targets.items():
                            taken[rule] = taken.get(rule, frozenset()) | seen
                        self._reached[session] = taken
            if candidate.allowed == enforced.allowed and (
                not enforced.allowed or candidate.approved_scopes == enforced.approved_scopes
            ):
                return counted
            shift = f"{enforced.outcome} -> {candidate.outcome}"
            self.disagreements[shift] += 1
            self._counter.add(1, {"mcp_guard.shift": shift, "gen_ai.tool.name": request.tool.name})
            facts = {
                "candidate_policy_id": asked.candidate.id,
                "candidate_policy_version": asked.candidate.version,
                "candidate_decision": candidate.outcome,
                "candidate_reasons": [reason.code for reason in candidate.reasons],
                "candidate_rule_ids": list(candidate.rule_ids),
                "candidate_approved_scopes": format_scope(candidate.approved_scopes),
            }
            record = AuditEvent.build(
                EventKind.POLICY_DISAGREED,
                event.at,
                request.principal,
                request.session.id,
                request.tool.name,
                enforced,
                None,
                asked.detail,
                request.session.owners,
                facts,
            )._replace(trace_id=event.trace_id, span_id=event.span_id)
            for sink in self.sinks:
                sink.emit(record)
        except Exception as error:
            log_failure(logger, "recording a shadow policy disagreement failed", error, request.tool.redact)
        return counted

    def _as_seen(self, request: CallRequest, declared: ToolSpec, candidate: Policy) -> CallRequest:
        """``request`` (a detached copy) as ``candidate`` would see it if it enforced: the tool
        as registered with the candidate's own declaration of it, and a history with the targets
        the candidate's rules took before and the tags its declarations give the tools the
        session ran (the history holds what the enforcing policy took and saw)."""
        history = request.session.history
        with self._reaching:
            reached = self._reached.get((request.session.id, request.session.created_at))
        if reached:
            for rule_id, seen in reached.items():
                history.targets.setdefault(rule_id, set()).update(seen)
        for policy in rule_policies(candidate):
            for name in history.tools:
                known = policy.declared.get(name)
                if known is not None:
                    history.tags |= known.tags
        merged = getattr(candidate, "merged", None)
        return request._replace(tool=merged(declared) if callable(merged) else declared)

    async def _answer(self, request: CallRequest, candidate: Policy) -> tuple[Decision, str | None]:
        """``candidate``'s decision on ``request``, with what went wrong when it gave none."""
        verdict = candidate.decide(request)
        if inspect.isawaitable(verdict):
            with anyio.move_on_after(self.timeout) as waiting:
                verdict = await verdict
            if waiting.cancelled_caught:
                return _refusal(request, ReasonCode.POLICY_ERROR, candidate), f"no answer within {self.timeout:g} s"
        if verdict is None:
            return _refusal(request, ReasonCode.NO_APPLICABLE_RULE, candidate), None
        if not isinstance(verdict, Decision):
            return _refusal(request, ReasonCode.POLICY_ERROR, candidate), f"returned {type(verdict).__name__}"
        return verdict, None

    def _shared(self, enforcing: Policy) -> frozenset[int]:
        """The ids of the rules in ``enforcing``. A rule the candidate holds too (a candidate that
        adds rules to the enforcing policy, say) is counted by the enforcing decision, and must
        not count a call the enforcing policy refused."""
        policies = tuple(rule_policies(enforcing))
        known, shared = self._known
        if policies != known:  # rule policies compare by identity: a reload is a new one
            shared = frozenset(id(rule) for policy in policies for rule in policy.rules)
            self._known = (policies, shared)
        return shared


def _refusal(request: CallRequest, code: str, candidate: Policy) -> Decision:
    return Decision.deny(
        code, requested=request.principal.scopes, policy_id=candidate.id, policy_version=candidate.version
    )
