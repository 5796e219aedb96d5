"""The audit event: one record per decision or lifecycle change, never holding a token."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from enum import StrEnum

from opentelemetry import trace

from mcp_guard.model import Decision, Outcome, Principal

__all__ = ["AuditEvent", "EventKind", "new_event_id"]


class EventKind(StrEnum):
    SESSION_OPENED = "session.opened"
    SESSION_EXPIRED = "session.expired"
    SESSION_REVOKED = "session.revoked"
    TOKEN_REJECTED = "token.rejected"
    CALL_DECIDED = "call.decided"
    ACCESS_REVOKED = "access.revoked"
    ACCESS_RESTORED = "access.restored"


_PROCESS = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def new_event_id() -> str:
    """A unique event id: a random per-process prefix and a counter (ordered within a process)."""
    return f"{_PROCESS}-{next(_COUNTER):010x}"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who did what under which session, what was asked, what was approved, and why.

    Principal facts are copied out (issuer, subject, client id, token id or fingerprint), so an
    event stays meaningful after the principal is gone. Requested, approved and missing scopes
    are separate fields.
    """

    kind: EventKind
    event_id: str
    at: float
    issuer: str | None = None
    subject: str | None = None
    client_id: str | None = None
    token_id: str | None = None
    token_hash: str | None = None
    actor_chain: tuple[str, ...] = ()
    session_id: str | None = None
    tool: str | None = None
    requested_scopes: frozenset[str] = frozenset()
    approved_scopes: frozenset[str] = frozenset()
    missing_scopes: frozenset[str] = frozenset()
    decision: Outcome | None = None
    reasons: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    policy_id: str | None = None
    policy_version: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    detail: str | None = None

    @classmethod
    def build(
        cls,
        kind: EventKind,
        at: float,
        principal: Principal | None = None,
        *,
        session_id: str | None = None,
        tool: str | None = None,
        decision: Decision | None = None,
        detail: str | None = None,
    ) -> AuditEvent:
        """An event stamped with a fresh id and the current trace context."""
        context = trace.get_current_span().get_span_context()
        traced = context.is_valid
        return cls(
            kind=kind,
            event_id=new_event_id(),
            at=at,
            issuer=principal.issuer if principal else None,
            subject=principal.subject if principal else None,
            client_id=principal.client_id if principal else None,
            token_id=principal.token_id if principal else None,
            token_hash=principal.token_hash if principal else None,
            actor_chain=principal.actor_chain if principal else (),
            session_id=session_id,
            tool=tool,
            requested_scopes=decision.requested_scopes if decision else frozenset(),
            approved_scopes=decision.approved_scopes if decision else frozenset(),
            missing_scopes=decision.missing_scopes if decision else frozenset(),
            decision=decision.outcome if decision else None,
            reasons=tuple(reason.code for reason in decision.reasons) if decision else (),
            rule_ids=decision.rule_ids if decision else (),
            policy_id=decision.policy_id or None if decision else None,
            policy_version=decision.policy_version or None if decision else None,
            trace_id=format(context.trace_id, "032x") if traced else None,
            span_id=format(context.span_id, "016x") if traced else None,
            detail=detail,
        )
