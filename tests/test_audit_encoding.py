"""The log line built from remembered parts is byte for byte the one written from the full record."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.audit.chain import ChainState, entry_line, verify_lines
from mcp_guard.audit.encoding import event_line
from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.model import Decision, Principal, Reason, SessionOwners

text = st.text(max_size=12) | st.text(st.characters(categories=["Cs", "Lo", "Zs", "Cc"]), max_size=4)
"""Any text, lone surrogates included (only the escaped fallback can write those)."""
names = st.text("abcxyz:._-", min_size=1, max_size=8)
scopes = st.frozensets(names, max_size=4)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)

principals = st.none() | st.builds(
    Principal,
    issuer=text,
    subject=text,
    client_id=text,
    scopes=scopes,
    token_id=st.none() | text,
    token_hash=st.none() | names,
    actor_chain=st.lists(text, max_size=2).map(tuple),
)
decisions = st.none() | st.builds(
    Decision,
    allowed=st.booleans(),
    requested_scopes=scopes,
    approved_scopes=scopes,
    missing_scopes=scopes,
    reasons=st.lists(
        st.builds(Reason.of, st.sampled_from(["allowed", "insufficient_scope", "odd"]), text), max_size=2
    ).map(tuple),
    rule_ids=st.lists(names, max_size=2).map(tuple),
    policy_id=text,
    policy_version=text,
)
owners = st.none() | st.builds(
    SessionOwners, policy_owner=st.none() | text, operator=st.none() | text, responder=st.none() | text
)
facts = st.none() | st.dictionaries(
    st.sampled_from(["result", "duration_ms", "error_type", "arguments", "tool", "detail", "x"]),
    json_values,
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(list(EventKind)) | text,
    at=numbers,
    principal=principals,
    session_id=st.none() | text,
    tool=st.none() | text,
    decision=decisions,
    detail=st.none() | text,
    owners=owners,
    facts=facts,
    key=st.none() | st.just(b"k" * 32),
    twice=st.booleans(),
)
def test_an_event_line_is_the_entry_line_of_its_record(
    kind: str,
    at: Any,
    principal: Principal | None,
    session_id: str | None,
    tool: str | None,
    decision: Decision | None,
    detail: str | None,
    owners: SessionOwners | None,
    facts: dict[str, Any] | None,
    key: bytes | None,
    twice: bool,
) -> None:
    args = (kind, at, principal, session_id, tool, decision, None, detail, owners, facts)
    event = AuditEvent.build(*args)  # any kind, even one that is not an EventKind
    expected_state, state = ChainState(3, "a" * 64), ChainState(3, "a" * 64)
    for _ in range(2 if twice else 1):  # the second time from remembered parts
        expected = entry_line(expected_state, kind, event.record(), key)
        assert event_line(state, event, key) == expected
        assert state == expected_state


def test_lines_from_remembered_parts_verify_as_a_chain() -> None:
    principal = Principal("https://issuer.test", "alice", "app", frozenset({"a", "b"}), token_id="j")
    decision = Decision(True, frozenset({"a", "b"}), frozenset({"a"}), policy_id="p", policy_version="1")
    state = ChainState()
    lines = [entry_line(state, "chain.file", {"file": "audit.jsonl"})]
    for index in range(50):
        event = AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0 + index, principal, "s", "t", decision)
        lines.append(event_line(state, event))
    assert verify_lines([("audit.jsonl", lines)]).ok
