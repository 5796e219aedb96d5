"""Shadow mode: a candidate policy judged beside the enforcing one, on live traffic.

The enforcing decision always stands. Where the candidate would decide otherwise (allow where
the enforcing policy denied, deny where it allowed, or approve other scopes), the disagreement
is counted and recorded as a ``policy.disagreed`` audit event that `mcp-guard policy diff`
summarises. A candidate that fails, abstains or (asynchronously) takes longer than its timeout
counts as a denial, as it would if it enforced. The candidate judges each call on the session as
the enforcing policy saw it, before the call is recorded, and counts (rate limits) only what it
would itself have allowed.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter
from collections.abc import Sequence

import anyio
from opentelemetry import metrics

from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.sinks import AuditSink
from mcp_guard.errors import Refused
from mcp_guard.model import CallRequest, Decision, tell_allowed
from mcp_guard.policy.base import Policy, PolicyFunction, as_policy
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import format_scope

__all__ = ["Shadow"]

logger = logging.getLogger("mcp_guard")

_DETAIL_LIMIT = 300


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
        self._counter = metrics.get_meter("mcp_guard").create_counter(
            "mcp_guard.policy.disagreements", description="Calls the shadow policy would have decided otherwise"
        )

    async def compare(self, request: CallRequest, enforced: Decision, event: AuditEvent) -> None:
        """Judge ``request`` with the candidate; record a disagreement with ``enforced``. Never raises."""
        try:
            candidate, detail = await self._judge(request)
            if candidate.allowed:
                try:  # the candidate counts what it would have allowed
                    tell_allowed(candidate.on_allow, request)
                except Refused as refusal:  # its own limit, filled meanwhile
                    candidate = Decision.deny(refusal.code, refusal.message, requested=candidate.requested_scopes)
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

    async def _judge(self, request: CallRequest) -> tuple[Decision, str | None]:
        """The candidate's decision, with what went wrong when it failed to give one."""
        try:
            verdict = self.candidate.decide(request)
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
