"""Audit facts on the OpenTelemetry span of the call: MCP semantic conventions plus ``mcp_guard.*``.

The SDK already opens the SERVER span ``tools/call {tool}`` with ``mcp.method.name``,
``gen_ai.operation.name`` and ``jsonrpc.request.id``; the guard enriches that span rather than
opening a second one. Callers skip this when the span is not recording.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, StatusCode
from opentelemetry.util.types import AttributeValue

from mcp_guard.audit.events import AuditEvent
from mcp_guard.memo import remember
from mcp_guard.model import Decision
from mcp_guard.scopes import format_scope

__all__ = ["annotate_span", "current_span_context", "recording_span", "tracing_configured"]


def tracing_configured() -> bool:
    """Whether a tracer provider is installed; nearly free, and until then nothing can record.

    OpenTelemetry installs its global tracer provider once and keeps it in ``_TRACER_PROVIDER``
    (None until set). Should a future version rename it, the default below answers True, which
    is never wrong, only slower.
    """
    return getattr(trace, "_TRACER_PROVIDER", trace) is not None


def recording_span() -> Span | None:
    """The current span when it records, else None."""
    if not tracing_configured():
        return None
    span = trace.get_current_span()
    return span if span.is_recording() else None


def current_span_context() -> SpanContext | None:
    """The context of the current span when it records, for an event built outside `authorize`'s
    own (session and revocation events), so every event joins the trace it happened in."""
    span = recording_span()
    return span.get_span_context() if span is not None else None


def annotate_span(span: Span, event: AuditEvent, decision: Decision, transport_session: str | None) -> None:
    """Put one call's decision on a recording ``span``; a denial marks the span as an error.

    Scope sets are space-delimited strings, the OAuth ``scope`` syntax, as the token itself
    carries them; string attributes are also the cheapest for the SDK to take.
    """
    attributes = dict(_decision_attributes(decision))
    attributes["mcp_guard.event_id"] = event.event_id
    principal = event.principal
    if principal is not None:
        attributes["mcp_guard.principal.issuer"] = principal.issuer
        attributes["mcp_guard.principal.subject"] = principal.subject
        attributes["mcp_guard.principal.client_id"] = principal.client_id
        token_id = principal.token_id or principal.token_hash
        if token_id is not None:
            attributes["mcp_guard.token.id"] = token_id
    optional = (
        ("gen_ai.tool.name", event.tool),
        ("mcp.session.id", transport_session),
        ("mcp_guard.session.id", event.session_id),
        ("mcp_guard.arguments", event.facts.get("arguments") if event.facts else None),
    )
    for key, value in optional:
        if value is not None:
            attributes[key] = value
    span.set_attributes(attributes)
    if not decision.allowed:
        span.set_attribute("error.type", decision.reason.code)
        span.set_status(StatusCode.ERROR, decision.reason.code)  # a message may quote an argument: never its value


def _decision_attributes(decision: Decision) -> dict[str, AttributeValue]:
    """The attributes that depend on the decision alone, worked out once per decision object.

    Policies hand out the same decision for the same kind of call, so this is one lookup on a
    warm call. Remembered decisions are held (bounded), so an id is never reused meanwhile.
    """
    seen = _BY_DECISION.get(id(decision))
    if seen is not None and seen[0] is decision:
        return seen[1]
    attributes: dict[str, AttributeValue] = {
        "mcp_guard.decision": decision.outcome,
        "mcp_guard.reason": decision.reason.code,
        "mcp_guard.requested_scopes": format_scope(decision.requested_scopes),
        "mcp_guard.approved_scopes": format_scope(decision.approved_scopes),
        "mcp_guard.missing_scopes": format_scope(decision.missing_scopes),
    }
    if decision.policy_id:
        attributes["mcp_guard.policy.id"] = decision.policy_id
    if decision.policy_version:
        attributes["mcp_guard.policy.version"] = decision.policy_version
    if decision.rule_ids:
        attributes["mcp_guard.rule_ids"] = decision.rule_ids  # a tuple: shared safely by every span
    remember(_BY_DECISION, id(decision), (decision, attributes), _DECISIONS_LIMIT)
    return attributes


_BY_DECISION: dict[int, tuple[Decision, dict[str, AttributeValue]]] = {}
_DECISIONS_LIMIT = 1024
