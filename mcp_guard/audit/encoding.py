"""An audit event as its log line, built from parts remembered per principal and per decision.

The writer thread serialises every event under the GIL, so its cost is paid by the calls being
served. Most of an event is its principal and its decision, shared by every call of one token
and one kind of call: their members are read off `AuditEvent.record` once and remembered as
JSON (bounded, keyed by the object, which is held so its id is never reused meanwhile). The
line is byte for byte the one `entry_line` writes from `AuditEvent.record`; whatever the parts
cannot express exactly (a value only the escaped fallback can write, facts that shadow a
member, a kind that is not an `EventKind`) takes that path.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from mcp_guard.audit.chain import ChainState, encoded_entry_line, entry_line
from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.memo import remember
from mcp_guard.model import Decision, Principal, SessionOwners

__all__ = ["event_line"]

_LIMIT = 1024
_UNWRITABLE = (PydanticSerializationError, ValueError, TypeError)
_MEMBERS = frozenset(AuditEvent(EventKind.CALL_DECIDED, "", 0.0).record())
"""The members `AuditEvent.record` writes; facts named like one of them overwrite it there."""


def event_line(state: ChainState, event: AuditEvent, key: bytes | None = None) -> bytes:
    """The next line of the chain for ``event``, advancing ``state``: `entry_line` of its record."""
    facts = event.facts
    if isinstance(event.kind, EventKind) and (not facts or _MEMBERS.isdisjoint(facts)):
        try:
            encoded = _encoded(event)
        except _UNWRITABLE:
            pass
        else:
            return encoded_entry_line(state, event.kind, encoded, key)
    return entry_line(state, event.kind, event.record(), key)


def _encoded(event: AuditEvent) -> bytes:
    kind = str(event.kind)  # a plain string: it hashes in C, where the enum member hashes in Python
    decided, owasp = _decision_parts(kind, event.decision)
    parts = [
        _json({"event_id": event.event_id, "at": event.at, "kind": kind}),
        _principal_part(event.principal),
        _json({"session_id": event.session_id, "tool": event.tool}),
        decided,
        _json({"trace_id": event.trace_id, "span_id": event.span_id, "detail": event.detail}),
        _owners_part(event.owners),
        owasp,
    ]
    if event.facts:
        parts.append(_json(dict(event.facts)))
    return b"{" + b",".join(parts) + b"}"


def _json(members: dict[Any, Any]) -> bytes:
    """``members`` as compact JSON without its braces, NaN and infinities as null."""
    return to_json(members, inf_nan_mode="null")[1:-1]


def _principal_part(principal: Principal | None) -> bytes:
    seen = _PRINCIPALS.get(id(principal))
    if seen is not None and seen[0] is principal:
        return seen[1]
    record = AuditEvent(EventKind.CALL_DECIDED, "", 0.0, principal).record()
    part = _json({name: record[name] for name in _PRINCIPAL_MEMBERS})
    remember(_PRINCIPALS, id(principal), (principal, part), _LIMIT)
    return part


def _decision_parts(kind: str, decision: Decision | None) -> tuple[bytes, bytes]:
    """The decision's members, and the ``owasp`` member (which also depends on the kind)."""
    seen = _DECISIONS.get((kind, id(decision)))
    if seen is not None and seen[0] is decision:
        return seen[1], seen[2]
    record = AuditEvent(EventKind(kind), "", 0.0, decision=decision).record()
    part = _json({name: record[name] for name in _DECISION_MEMBERS})
    owasp = _json({"owasp": record["owasp"]})
    remember(_DECISIONS, (kind, id(decision)), (decision, part, owasp), _LIMIT)
    return part, owasp


def _owners_part(owners: SessionOwners | None) -> bytes:
    seen = _OWNERS.get(id(owners))
    if seen is not None and seen[0] is owners:
        return seen[1]
    part = _json({"owners": AuditEvent(EventKind.CALL_DECIDED, "", 0.0, owners=owners).record()["owners"]})
    remember(_OWNERS, id(owners), (owners, part), _LIMIT)
    return part


_PRINCIPAL_MEMBERS = ("issuer", "subject", "client_id", "token_id", "actor_chain")
_DECISION_MEMBERS = (
    "requested_scopes",
    "approved_scopes",
    "missing_scopes",
    "decision",
    "reasons",
    "rule_ids",
    "policy_id",
    "policy_version",
)
_PRINCIPALS: dict[int, tuple[Principal | None, bytes]] = {}
_DECISIONS: dict[tuple[str, int], tuple[Decision | None, bytes, bytes]] = {}
_OWNERS: dict[int, tuple[SessionOwners | None, bytes]] = {}
