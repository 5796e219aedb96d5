"""Shadow mode: a candidate policy judged beside the enforcing one, on live traffic.

The enforcing decision always stands. Where the candidate would decide otherwise (allow where
the enforcing policy denied, deny where it allowed, or approve other scopes), the disagreement
is counted and recorded as a ``policy.disagreed`` audit event that `mcp-guard policy diff`
summarises. A candidate that fails, abstains or (asynchronously) takes longer than its timeout
counts as a denial, as it would if it enforced. The candidate judges each call on the session as
the enforcing policy saw it, before the call is recorded, and counts (rate limits) only what it
would itself have allowed. The targets its own rules take (a distinct-targets cap) are kept per
session beside the real history, which holds only what the enforcing policy took, and the
tools the session ran carry the tags the candidate declares for them.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import anyio
from opentelemetry import metrics

from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.sinks import AuditSink
from mcp_guard.errors import Refused
from mcp_guard.memo import remember
from mcp_guard.model import AllowHook, CallRequest, Decision, tell_allowed
from mcp_guard.policy.base import Policy, PolicyFunction, as_policy
from mcp_guard.policy.engine import RulePolicy, rule_policies
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import format_scope

__all__ = ["Asked", "Shadow"]

logger = logging.getLogger("mcp_guard")

_DETAIL_LIMIT = 300
_SESSIONS_LIMIT = 10_000


class Asked(NamedTuple):
    """A call put to the candidate: its answer (perhaps still pending), or why it failed."""

    request: CallRequest
    verdict: object
    error: str | None = None

    def close(self) -> None:
        """Drop an answer still pending (the call was refused before it could be compared)."""
        if inspect.iscoroutine(self.verdict):
            self.verdict.close()


class Shadow:
    """Judges each decided call again with ``candidate`` and records where the two disagree.

    ``disagreements`` counts them by ``"<enforced> -> <candidate>"`` outcome; the same count
    goes to the OpenTelemetry counter ``mcp_guard.policy.disagreements``.
    """

    def __init__(self, candidate: Policy | PolicyFunction, sinks: Sequence[AuditSink], *, timeout: float = 0.5) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"the shadow timeout must be a positive number of seconds, not {timeout!r}")
        self.candidate = as_policy(candidate)
        self.sinks = tuple(sinks)
        self.timeout = timeout
        self.disagreements: Counter[str] = Counter()
        self._reached: dict[tuple[str, float], dict[str, frozenset[str]]] = {}
        """The targets the candidate's rules took, by session (its id and when it opened: a
        session opened anew under the same key starts afresh), bounded."""
        self._known: tuple[tuple[RulePolicy, ...], frozenset[int]] = ((), frozenset())
        """The enforcing rule policies last seen, and the ids of their rules: one value, so a
        thread never reads the policies of one reload with the rules of another."""
        self._counter = metrics.get_meter("mcp_guard").create_counter(
            "mcp_guard.policy.disagreements", description="Calls the shadow policy would have decided otherwise"
        )

    def ask(self, request: CallRequest) -> Asked:
        """Put ``request`` to the candidate now, before the enforcing policy counts the call, so
        a limit both hold is judged on the same count; `compare` settles the answer.

        ``request`` holds a copy of the session's history, which gets the targets the
        candidate's own rules took before, and the tags the candidate's declarations give the
        tools the session ran (the history holds the tags the enforcing policy saw)."""
        try:  # what follows is the shadow's alone: a failure in it is the candidate's failure
            history = request.session.history
            reached = self._reached.get((request.session.id, request.session.created_at))
            if reached:
                for rule_id, seen in reached.items():
                    history.targets.setdefault(rule_id, set()).update(seen)
            for policy in rule_policies(self.candidate):
                for name in history.tools:
                    declared = policy.declared.get(name)
                    if declared is not None:
                        history.tags |= declared.tags
            return Asked(request, self.candidate.decide(request))
        except Exception as error:
            return Asked(request, None, f"{type(error).__name__}: {error}"[:_DETAIL_LIMIT])

    async def compare(self, asked: Asked, enforced: Decision, event: AuditEvent, enforcing: Policy) -> None:
        """Settle the candidate's answer to ``asked``; record a disagreement with ``enforced``,
        which ``enforcing`` decided. Never raises."""
        request = asked.request
        try:
            candidate, detail = await self._judge(asked)
            if candidate.allowed:
                try:  # the candidate counts what it would have allowed, with the rules it does not share
                    tell_allowed(self._own(candidate.on_allow, enforcing), request)
                except Refused as refusal:  # its own limit, filled meanwhile
                    candidate = Decision.deny(refusal.code, refusal.message, requested=candidate.requested_scopes)
                else:  # added to what calls of the session that overlapped this one took
                    session = (request.session.id, request.session.created_at)
                    taken = dict(self._reached.get(session, {}))
                    for rule, seen in request.session.history.targets.items():
                        taken[rule] = taken.get(rule, frozenset()) | seen
                    remember(self._reached, session, taken, _SESSIONS_LIMIT)
            if candidate.allowed == enforced.allowed and (
                not enforced.allowed or candidate.approved_scopes == enforced.approved_scopes
            ):
                return
            shift = f"{enforced.outcome} -> {candidate.outcome}"
            self.disagreements[shift] += 1
            self._counter.add(1, {"mcp_guard.shift": shift, "gen_ai.tool.name": request.tool.name})
            facts = {
                "candidate_policy_id": self.candidate.id,
                "candidate_policy_version": self.candidate.version,
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
                detail,
                request.session.owners,
                facts,
            )._replace(trace_id=event.trace_id, span_id=event.span_id)
            for sink in self.sinks:
                sink.emit(record)
        except Exception:
            logger.exception("mcp-guard: recording a shadow policy disagreement failed")

    def _own(self, hooks: Sequence[AllowHook], enforcing: Policy) -> list[AllowHook]:
        """The ``hooks`` that are the candidate's own. A rule the enforcing policy holds too (a
        candidate that adds rules to it, say) counted the call already, or must not count a call
        the enforcing policy refused."""
        policies = tuple(rule_policies(enforcing))
        known, shared = self._known
        if policies != known:  # rule policies compare by identity: a reload is a new one
            shared = frozenset(id(rule) for policy in policies for rule in policy.rules)
            self._known = (policies, shared)
        return [hook for hook in hooks if id(hook) not in shared]

    async def _judge(self, asked: Asked) -> tuple[Decision, str | None]:
        """The candidate's decision, with what went wrong when it failed to give one."""
        request, verdict = asked.request, asked.verdict
        if asked.error is not None:
            return self._refusal(request, ReasonCode.POLICY_ERROR), asked.error
        try:
            if inspect.isawaitable(verdict):
                with anyio.move_on_after(self.timeout) as waiting:
                    verdict = await verdict
                if waiting.cancelled_caught:
                    return self._refusal(request, ReasonCode.POLICY_ERROR), f"no answer within {self.timeout:g} s"
        except Exception as error:
            return self._refusal(request, ReasonCode.POLICY_ERROR), f"{type(error).__name__}: {error}"[:_DETAIL_LIMIT]
        if verdict is None:
            return self._refusal(request, ReasonCode.NO_APPLICABLE_RULE), None
        if not isinstance(verdict, Decision):
            return self._refusal(request, ReasonCode.POLICY_ERROR), f"returned {type(verdict).__name__}"
        return verdict, None

    def _refusal(self, request: CallRequest, code: str) -> Decision:
        return Decision.deny(
            code,
            requested=request.principal.scopes,
            policy_id=self.candidate.id,
            policy_version=self.candidate.version,
        )
