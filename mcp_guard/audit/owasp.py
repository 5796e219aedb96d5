"""Which OWASP risks an audit event bears on: the Agentic Top 10 (2026) and the MCP Top 10.

Tags let a responder filter the trail by threat: every refused token is an identity-abuse
signal (ASI03, MCP01), every look-alike or unknown tool name a possible tool-poisoning probe
(MCP03), every trimmed grant scope creep that the guard contained (MCP02).
"""

from __future__ import annotations

from functools import lru_cache

from mcp_guard.reasons import ReasonCode

__all__ = ["owasp_tags"]

_BY_REASON: dict[str, tuple[str, ...]] = {
    ReasonCode.INSUFFICIENT_SCOPE: ("ASI03", "MCP02"),
    ReasonCode.TOOL_NOT_FOUND: ("MCP03",),
    ReasonCode.REQUEST_MALFORMED: ("MCP05",),
    ReasonCode.ARGUMENTS_INVALID: ("MCP05",),
    ReasonCode.SESSION_BINDING_MISMATCH: ("ASI03", "MCP07"),
    ReasonCode.SESSION_REVOKED: ("ASI10",),
    ReasonCode.SUBJECT_REVOKED: ("ASI10",),
    ReasonCode.CLIENT_REVOKED: ("ASI10",),
    ReasonCode.TOKEN_REVOKED: ("ASI10", "MCP01"),
    ReasonCode.DELEGATION_FORBIDDEN: ("ASI03",),
    ReasonCode.DELEGATION_REQUIRED: ("ASI03",),
    ReasonCode.ACTOR_NOT_ALLOWED: ("ASI03",),
    ReasonCode.DELEGATION_TOO_DEEP: ("ASI03",),
    ReasonCode.GUARD_ERROR: ("ASI08",),
    ReasonCode.POLICY_ERROR: ("ASI08",),
    ReasonCode.POLICY_DENIED: ("ASI02",),
    ReasonCode.NO_APPLICABLE_RULE: ("MCP07",),
    ReasonCode.PRINCIPAL_NOT_ALLOWED: ("ASI03", "MCP07"),
    ReasonCode.ARGUMENT_REJECTED: ("ASI02", "MCP05"),
    ReasonCode.SEQUENCE_FORBIDDEN: ("ASI01", "ASI02"),
    ReasonCode.TOO_MANY_TARGETS: ("ASI02",),
    ReasonCode.RATE_LIMITED: ("ASI02",),
    ReasonCode.BUDGET_EXHAUSTED: ("ASI02",),
    ReasonCode.OUTSIDE_TIME_WINDOW: ("ASI02",),
    ReasonCode.SESSION_RISK_EXCEEDED: ("ASI10",),
}

_BY_KIND: dict[str, tuple[str, ...]] = {
    "token.rejected": ("ASI03", "MCP01", "MCP07"),
    "session.revoked": ("ASI10",),
    "access.revoked": ("ASI10",),
}


@lru_cache(maxsize=4096)  # few distinct arguments, and every event written asks
def owasp_tags(kind: str, reasons: tuple[str, ...], outcome: str | None) -> tuple[str, ...]:
    """The OWASP Agentic (ASI..) and MCP (MCP..) ids for an event, sorted, without repeats."""
    tags = set(_BY_KIND.get(kind, ()))
    for reason in reasons:
        tags.update(_BY_REASON.get(reason, ()))
    if outcome == "trimmed":
        tags.add("MCP02")  # scope creep, contained: the grant was wider than the call needed
    if kind.startswith("call.") or kind.startswith("token."):
        tags.add("MCP08")  # the audit trail itself: the record MCP08 asks for
    return tuple(sorted(tags))
