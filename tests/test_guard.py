"""The authorize() pipeline on its own: identify -> bind session -> decide -> record."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import anyio
import pytest
from mcp.server.auth.provider import AccessToken

from mcp_guard import (
    Decision,
    EventKind,
    Guard,
    MemoryAuditSink,
    MemorySessionStore,
    Principal,
    ReasonCode,
    Refused,
    Risk,
    RiskSettings,
    ScopeHierarchy,
    ScopePolicy,
    SessionKeys,
    SessionOwners,
    SessionSettings,
    SessionState,
    ToolSpec,
    token_fingerprint,
)
from mcp_guard.model import MAX_SESSION_TOKENS
from mcp_guard.session import Revocations
from mcp_guard.testing import access_token
from support import Clock, ExplodingPolicy

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def make_guard(audit: MemoryAuditSink, clock: Clock, **options: Any) -> Guard:
    guard = Guard(scope_hierarchy={"notes:write": "notes:read"}, audit=[audit], clock=clock, **options)
    guard.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    guard.declare(ToolSpec("write_note", scopes=frozenset({"notes:write"}), optional_scopes=frozenset({"mail:send"})))
    guard.declare(ToolSpec("purge", scopes=frozenset({"notes:admin"}), conceal=True))
    return guard


@pytest.fixture
def g(audit: MemoryAuditSink, clock: Clock) -> Guard:
    return make_guard(audit, clock)


def token(
    subject: str = "alice", scopes: str = "notes:read", *, expires_at: float = NOW + 600, **kw: Any
) -> AccessToken:
    t = access_token(subject, scopes, **kw)
    return t.model_copy(update={"expires_at": int(expires_at)})


def events(audit: MemoryAuditSink, kind: EventKind) -> list[Any]:
    return [e for e in audit.events if e.kind == kind]


async def test_allowed_call_approves_only_what_the_tool_may_use(g: Guard, audit: MemoryAuditSink) -> None:
    result = await g.authorize("read_note", {"title": "a"}, token(scopes="notes:read mail:send admin"))
    decision = result.decision
    assert decision.allowed and decision.outcome == "trimmed"
    assert decision.requested_scopes == {"notes:read", "mail:send", "admin"}
    assert decision.approved_scopes == {"notes:read"}
    assert decision.missing_scopes == frozenset()
    assert decision.policy_id == "mcp-guard/scopes" and decision.rule_ids == ("scopes.required",)
    event = events(audit, EventKind.CALL_DECIDED)[-1]
    assert (event.outcome, event.tool, event.subject) == ("trimmed", "read_note", "alice")
    assert event.requested_scopes == decision.requested_scopes and event.approved_scopes == {"notes:read"}


async def test_exact_grant_is_allowed_untrimmed(g: Guard) -> None:
    decision = (await g.authorize("read_note", {}, token(scopes="notes:read"))).decision
    assert decision.outcome == "allowed" and decision.approved_scopes == {"notes:read"}


async def test_hierarchy_and_optional_scopes_shape_the_approved_set(g: Guard) -> None:
    read = (await g.authorize("read_note", {}, token(scopes="notes:write"))).decision
    assert read.allowed and read.approved_scopes == {"notes:read"}  # implied by notes:write
    write = (await g.authorize("write_note", {}, token(scopes="notes:write mail:send other"))).decision
    assert write.approved_scopes == {"notes:write", "mail:send"}  # "other" trimmed away


async def test_missing_scopes_are_all_named(audit: MemoryAuditSink, clock: Clock) -> None:
    g = make_guard(audit, clock)
    g.declare(ToolSpec("deploy", scopes=frozenset({"ci:run", "prod:write", "notes:read"})))
    result = await g.authorize("deploy", {}, token(scopes="notes:read"))
    decision = result.decision
    assert not decision.allowed
    assert decision.reason.code == ReasonCode.INSUFFICIENT_SCOPE
    assert decision.missing_scopes == {"ci:run", "prod:write"}
    assert decision.approved_scopes == frozenset()
    assert "missing 'ci:run', 'prod:write'" in decision.reason.message
    assert events(audit, EventKind.CALL_DECIDED)[-1].missing_scopes == {"ci:run", "prod:write"}


@pytest.mark.parametrize(
    "name",
    [
        "read_notE",
        "READ_NOTE",
        "read_note ",
        " read_note",
        "read_note\n",
        "re\u0430d_note",  # Cyrillic a
        "\uff52\uff45\uff41\uff44_\uff4e\uff4f\uff54\uff45",  # full-width
        "read\u200b_note",  # zero-width space
        "read_note\u200d",  # zero-width joiner
        "read\u00adnote",  # soft hyphen
        "read_note\x00",
        "",
        "x" * 10_000,
    ],
)
async def test_unknown_and_look_alike_names_are_not_found(g: Guard, audit: MemoryAuditSink, name: str) -> None:
    decision = (await g.authorize(name, {}, token())).decision
    assert not decision.allowed and decision.reason.code == ReasonCode.TOOL_NOT_FOUND
    event = events(audit, EventKind.CALL_DECIDED)[-1]
    assert event.reasons == ("tool_not_found",)
    assert event.tool is not None and len(event.tool) <= 80 and event.tool.isascii()


async def test_concealed_tool_is_indistinguishable_from_an_unknown_one(g: Guard) -> None:
    concealed = (await g.authorize("purge", {}, token())).decision
    unknown = (await g.authorize("purgf", {}, token())).decision
    assert concealed.reason.code == unknown.reason.code == ReasonCode.TOOL_NOT_FOUND
    assert concealed.missing_scopes == unknown.missing_scopes == frozenset()
    assert (await g.authorize("purge", {}, token(scopes="notes:admin"))).allowed


@pytest.mark.parametrize("tool", [None, 7, ["read_note"], {"name": "read_note"}])
async def test_non_string_tool_names_are_malformed(g: Guard, tool: object) -> None:
    assert (await g.authorize(tool, {}, token())).decision.reason.code == ReasonCode.REQUEST_MALFORMED


@pytest.mark.parametrize("arguments", [[1, 2], "text", 5, True])
async def test_non_object_arguments_are_refused(g: Guard, arguments: object) -> None:
    assert (await g.authorize("read_note", arguments, token())).decision.reason.code == ReasonCode.ARGUMENTS_INVALID


async def test_absent_arguments_are_an_empty_object(g: Guard) -> None:
    result = await g.authorize("read_note", None, token())
    assert result.allowed and result.request is not None and result.request.arguments == {}


@pytest.mark.parametrize(
    ("credential", "code"),
    [
        (None, ReasonCode.TOKEN_MISSING),
        (access_token("alice", "notes:read", issuer=None), ReasonCode.ISSUER_MISSING),
        (access_token(None, "notes:read"), ReasonCode.SUBJECT_MISSING),
        (access_token("alice", ["notes:read notes:write"]), ReasonCode.SCOPE_MALFORMED),
        (access_token("alice", ["notes:read\u00a0x"]), ReasonCode.SCOPE_MALFORMED),
        (access_token("alice", ['notes"read']), ReasonCode.SCOPE_MALFORMED),
        (access_token("alice", ["notes:read"], scope="notes:read  x"), ReasonCode.SCOPE_MALFORMED),
        (access_token("alice", ["notes:read"], scope="notes:read admin"), ReasonCode.SCOPE_MALFORMED),
        (access_token("alice", ["notes:read"], scope=["notes:read"]), ReasonCode.SCOPE_MALFORMED),
    ],
)
async def test_bad_identities_are_rejected_and_recorded(
    g: Guard, audit: MemoryAuditSink, credential: AccessToken | None, code: str
) -> None:
    result = await g.authorize("read_note", {}, credential)
    assert not result.allowed and result.decision.reason.code == code
    assert result.request is None
    rejected = events(audit, EventKind.TOKEN_REJECTED)
    assert rejected and rejected[-1].reasons == (code,)
    assert not events(audit, EventKind.SESSION_OPENED)


async def test_expiry_honours_the_leeway_on_both_sides(audit: MemoryAuditSink, clock: Clock) -> None:
    g = make_guard(audit, clock, leeway=10)
    at_edge = token(expires_at=NOW - 10)
    past_edge = token(expires_at=NOW - 11)
    assert (await g.authorize("read_note", {}, at_edge)).allowed
    assert (await g.authorize("read_note", {}, past_edge)).decision.reason.code == ReasonCode.TOKEN_EXPIRED
    with pytest.raises(ValueError, match="leeway"):
        Guard(leeway=-1)


async def test_sessions_open_once_and_count_calls(g: Guard, audit: MemoryAuditSink) -> None:
    t = token(scopes="notes:read", sid="login-1")
    for _ in range(3):
        assert (await g.authorize("read_note", {}, t)).allowed
    await g.authorize("write_note", {}, t)
    opened = events(audit, EventKind.SESSION_OPENED)
    assert len(opened) == 1
    session = await g.sessions.get(opened[0].session_id)
    assert session is not None
    assert (session.call_count, session.denied_count) == (3, 1)
    assert session.binding == ("https://auth.example.test", "alice", "test-client")


async def test_a_session_key_presented_by_another_principal_is_refused(g: Guard, audit: MemoryAuditSink) -> None:
    alice = token("alice", sid="shared")
    mallory = token("mallory", sid="shared")
    assert (await g.authorize("read_note", {}, alice)).allowed
    result = await g.authorize("read_note", {}, mallory)
    assert result.decision.reason.code == ReasonCode.SESSION_BINDING_MISMATCH
    event = events(audit, EventKind.CALL_DECIDED)[-1]
    assert event.subject == "mallory" and event.session_id == events(audit, EventKind.SESSION_OPENED)[0].session_id
    # the legitimate owner is not locked out, and the intruder's attempt did not count
    assert (await g.authorize("read_note", {}, alice)).allowed
    session = await g.sessions.get(event.session_id)
    assert session is not None and (session.call_count, session.denied_count) == (2, 0)


async def test_legacy_transport_sessions_bind_too(g: Guard) -> None:
    assert (await g.authorize("read_note", {}, token("alice"), transport_session="abc")).allowed
    stolen = await g.authorize("read_note", {}, token("alice", client_id="other"), transport_session="abc")
    assert stolen.decision.reason.code == ReasonCode.SESSION_BINDING_MISMATCH


async def test_one_login_session_is_one_governed_session_per_client(g: Guard) -> None:
    """Authorization servers put one ``sid`` in the tokens of every client signed in with a
    login: each client has its own session under it, and none can lock the others out."""
    assert (await g.authorize("read_note", {}, token("alice", sid="login-1"))).allowed
    assert (await g.authorize("read_note", {}, token("alice", client_id="other-app", sid="login-1"))).allowed
    intruder = await g.authorize("read_note", {}, token("mallory", sid="login-1"))
    assert intruder.decision.reason.code == ReasonCode.SESSION_BINDING_MISMATCH  # one client, another subject
    again = await g.authorize("read_note", {}, token("alice", sid="login-1"))
    assert again.allowed and again.request is not None and again.request.session.call_count == 2


async def test_session_keys_by_source(g: Guard) -> None:
    keys = SessionKeys()
    p = Principal("https://i", "s", "c", token_hash="f" * 32, claims={"sid": "x"})
    assert keys.key(p, "t1") == "mcp:t1"
    assert keys.key(p, None) == "claim:9:https://i1:c:x"
    assert SessionKeys(claim=None).key(p, None) == "token:" + "f" * 32
    assert keys.key(Principal("https://i", "s", "c"), None) == "principal:9:https://i1:sc"
    with pytest.raises(Refused) as refused:
        keys.key(Principal("https://i", "s", "c", claims={"sid": 5}), None)
    assert refused.value.code == ReasonCode.SESSION_UNAVAILABLE
    with pytest.raises(Refused):
        keys.key(p, "x" * 300)
    bad = await g.authorize("read_note", {}, token(sid=["a"]))
    assert bad.decision.reason.code == ReasonCode.SESSION_UNAVAILABLE


async def test_absolute_and_idle_lifetimes_end_sessions(audit: MemoryAuditSink, clock: Clock) -> None:
    settings = SessionSettings(absolute_ttl=100, idle_ttl=30, purpose="triage", owners=SessionOwners(operator="ops"))
    g = make_guard(audit, clock, session_settings=settings)
    long_lived = token(expires_at=NOW + 10_000, sid="s1")
    assert (await g.authorize("read_note", {}, long_lived)).allowed
    clock.advance(29)
    assert (await g.authorize("read_note", {}, long_lived)).allowed  # activity moves the idle deadline
    clock.advance(29)
    assert (await g.authorize("read_note", {}, long_lived)).allowed
    clock.advance(30)
    idle = await g.authorize("read_note", {}, long_lived)
    assert idle.decision.reason.code == ReasonCode.SESSION_IDLE_EXPIRED
    clock.advance(1)  # stays ended, with its first reason
    assert (await g.authorize("read_note", {}, long_lived)).decision.reason.code == ReasonCode.SESSION_IDLE_EXPIRED

    other = token(expires_at=NOW + 10_000, sid="s2")
    assert (await g.authorize("read_note", {}, other)).allowed
    for _ in range(4):
        clock.advance(25)
        await g.authorize("read_note", {}, other)
    assert (await g.authorize("read_note", {}, other)).decision.reason.code == ReasonCode.SESSION_EXPIRED

    expired = events(audit, EventKind.SESSION_EXPIRED)
    assert len(expired) == 2
    session = await g.sessions.get(expired[0].session_id)
    assert session is not None and session.state is SessionState.EXPIRED
    assert (session.purpose, session.owners.operator) == ("triage", "ops")


async def test_denied_calls_do_not_keep_a_session_alive(audit: MemoryAuditSink, clock: Clock) -> None:
    g = make_guard(audit, clock, session_settings=SessionSettings(idle_ttl=30))
    t = token(sid="s")
    assert (await g.authorize("read_note", {}, t)).allowed
    clock.advance(20)
    assert not (await g.authorize("write_note", {}, t)).allowed
    clock.advance(15)
    assert (await g.authorize("read_note", {}, t)).decision.reason.code == ReasonCode.SESSION_IDLE_EXPIRED


async def test_a_call_decided_slowly_does_not_move_the_idle_timer_back(audit: MemoryAuditSink, clock: Clock) -> None:
    gate = anyio.Event()
    scopes = ScopePolicy()

    class SlowOnWrites:
        id, version = "slow-on-writes", "1"

        def visible(self, principal: Principal, tool: ToolSpec) -> bool:
            return True

        async def decide(self, request: Any) -> Any:
            if request.tool.name == "write_note":
                await gate.wait()
            return scopes.decide(request)

    g = Guard(policy=SlowOnWrites(), audit=[audit], clock=clock, session_settings=SessionSettings(idle_ttl=60))
    g.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    g.declare(ToolSpec("write_note", scopes=frozenset({"notes:write"})))
    t = token(scopes="notes:read notes:write", expires_at=NOW + 10_000, sid="s")
    assert (await g.authorize("read_note", {}, t)).allowed
    async with anyio.create_task_group() as tasks:
        clock.advance(30)
        tasks.start_soon(g.authorize, "write_note", {}, t)  # decided as of NOW + 30, recorded later
        await anyio.wait_all_tasks_blocked()
        clock.advance(20)
        assert (await g.authorize("read_note", {}, t)).allowed  # NOW + 50
        gate.set()
    clock.advance(45)  # 45 s after the last call started, 65 s after the slow one did
    assert (await g.authorize("read_note", {}, t)).allowed


def test_session_settings_reject_nonsense() -> None:
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive"):
            SessionSettings(idle_ttl=bad)


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ({"subject": "alice"}, ReasonCode.SUBJECT_REVOKED),
        ({"subject": "alice", "issuer": "https://auth.example.test"}, ReasonCode.SUBJECT_REVOKED),
        ({"client_id": "test-client"}, ReasonCode.CLIENT_REVOKED),
        ({"token_id": "jti-1"}, ReasonCode.TOKEN_REVOKED),
    ],
)
async def test_revocation_takes_effect_on_the_next_call(
    g: Guard, audit: MemoryAuditSink, target: dict[str, str], code: str
) -> None:
    t = token(jti="jti-1")
    bob = token("bob", client_id="other-client")
    assert (await g.authorize("read_note", {}, t)).allowed
    await g.revoke(**target, reason="incident 7")
    assert (await g.authorize("read_note", {}, t)).decision.reason.code == code
    assert (await g.authorize("read_note", {}, bob)).allowed  # nobody else is affected
    assert "incident 7" in (events(audit, EventKind.ACCESS_REVOKED)[-1].detail or "")
    await g.restore(**target)
    assert (await g.authorize("read_note", {}, t)).allowed
    assert events(audit, EventKind.ACCESS_RESTORED)


async def test_revoking_a_subject_under_another_issuer_spares_this_one(g: Guard) -> None:
    await g.revoke(subject="alice", issuer="https://elsewhere.test")
    assert (await g.authorize("read_note", {}, token())).allowed


async def test_revoke_by_token_fingerprint_and_with_a_ttl(g: Guard, clock: Clock) -> None:
    t = token()
    await g.revoke(token_id=token_fingerprint(t.token), ttl=60)
    assert (await g.authorize("read_note", {}, t)).decision.reason.code == ReasonCode.TOKEN_REVOKED
    clock.advance(61)
    assert (await g.authorize("read_note", {}, t)).allowed


async def test_a_shorter_revocation_never_cuts_a_longer_one_short(g: Guard, clock: Clock) -> None:
    t = token()
    await g.revoke(subject="alice")  # until restored
    await g.revoke(subject="alice", ttl=60)
    await g.revoke(client_id="test-client", ttl=600)
    await g.revoke(client_id="test-client", ttl=30)
    clock.advance(61)
    assert (await g.authorize("read_note", {}, t)).decision.reason.code == ReasonCode.SUBJECT_REVOKED
    await g.restore(subject="alice")
    assert (await g.authorize("read_note", {}, t)).decision.reason.code == ReasonCode.CLIENT_REVOKED
    clock.advance(540)
    assert (await g.authorize("read_note", {}, t)).allowed


async def test_a_token_id_is_revoked_under_its_issuer(g: Guard) -> None:
    here, elsewhere = token(jti="J-1"), token(jti="J-1", issuer="https://other.example.test")
    await g.revoke(token_id="J-1", issuer="https://other.example.test")
    assert (await g.authorize("read_note", {}, here)).allowed  # a jti is unique only within its issuer
    assert (await g.authorize("read_note", {}, elsewhere)).decision.reason.code == ReasonCode.TOKEN_REVOKED
    assert not await g.restore(token_id="J-1")  # nothing revoked under every issuer
    assert (await g.authorize("read_note", {}, elsewhere)).decision.reason.code == ReasonCode.TOKEN_REVOKED
    await g.revoke(token_id="J-1")
    assert (await g.authorize("read_note", {}, here)).decision.reason.code == ReasonCode.TOKEN_REVOKED


async def test_revocation_records_say_how_long_and_what_was_lifted(
    g: Guard, audit: MemoryAuditSink, clock: Clock
) -> None:
    await g.revoke(subject="bob", ttl=60)
    await g.revoke(subject="carol", reason="incident 9")
    bob, carol = (event.detail or "" for event in events(audit, EventKind.ACCESS_REVOKED)[-2:])
    assert "until='20" in bob and "for good" in carol and "incident 9" in carol
    assert await g.restore(subject="carol")
    assert "was until='for good'" in (events(audit, EventKind.ACCESS_RESTORED)[-1].detail or "")
    restored = len(events(audit, EventKind.ACCESS_RESTORED))
    assert not await g.restore(subject="carol")  # nothing left to lift: nothing recorded
    assert not await g.restore(subject="dave")
    assert len(events(audit, EventKind.ACCESS_RESTORED)) == restored
    await g.revoke(client_id="far", ttl=1e300)
    assert "after 1970" in (events(audit, EventKind.ACCESS_REVOKED)[-1].detail or "")
    clock.advance(61)
    assert not await g.restore(subject="bob")  # it ran out by itself: there was nothing to lift
    assert len(events(audit, EventKind.ACCESS_RESTORED)) == restored


def test_restoring_without_a_time_reads_the_clock() -> None:
    revocations = Revocations()
    revocations.revoke_subject("alice")
    revocations.revoke_subject("bob", until=5.0)
    with pytest.raises(TypeError):  # an end time taken for an issuer would have revoked nothing
        revocations.revoke_token("jti-1", 5.0)  # type: ignore[misc]
    assert revocations.restore(subject="alice") == math.inf
    assert revocations.restore(subject="bob") is None  # it ran out in 1970


def test_revocations_lapse_in_order_of_their_ends_lengthened_or_lifted() -> None:
    revocations = Revocations()
    alice = Principal("https://i", "alice", "c", token_id="jti-a")
    revocations.revoke_subject("alice", until=10.0)
    revocations.revoke_subject("alice", until=20.0)  # lengthened: its first end no longer applies
    revocations.revoke_token("jti-a", until=12.0)
    assert revocations.restore(now=0.0, token_id="jti-a") == 12.0
    revocations.revoke_token("jti-a", until=11.0)  # revoked again, for less time
    assert revocations.check(alice, 10.5) == ReasonCode.TOKEN_REVOKED
    assert revocations.check(alice, 15.0) == ReasonCode.SUBJECT_REVOKED
    assert revocations.check(alice, 20.0) is None and not revocations.active
    revocations.revoke_token("abc", until=30.0)
    revocations.revoke_token("abc", issuer="https://as", until=30.0)  # the same end: keys never compared
    assert revocations.check(Principal("https://as", "bob", "c", token_id="abc"), 29.0) == ReasonCode.TOKEN_REVOKED
    assert revocations.check(alice, 30.0) is None and not revocations.active
    revocations.revoke_session("s1", until=5.0)
    revocations.revoke_session("s2", now=6.0)  # for good; lets go of s1
    assert not revocations.session_revoked("s1") and revocations.session_revoked("s2")
    for _ in range(3):  # the same end again: one entry waits for it
        revocations.revoke_subject("carol", until=50.0)
    assert len(revocations._ends) == 1
    for index in range(10_000):  # many distinct ends: each lapse drops its own, not a scan of all
        revocations.revoke_token(f"t{index}", until=100.0 + index)
    for index in range(10_000):
        assert revocations.check(alice, 100.5 + index) is None
    assert not revocations.active


async def test_a_session_revocation_takes_no_ttl_or_issuer(g: Guard, audit: MemoryAuditSink) -> None:
    assert (await g.authorize("read_note", {}, token(sid="s"))).allowed
    session_id = events(audit, EventKind.SESSION_OPENED)[0].session_id
    with pytest.raises(ValueError, match="revoked for good"):
        await g.revoke(session_id=session_id, ttl=60)
    with pytest.raises(ValueError, match="revoked for good"):
        await g.revoke(session_id=session_id, issuer="https://auth.example.test")
    assert (await g.authorize("read_note", {}, token(sid="s"))).allowed  # neither call revoked it


async def test_revoking_a_session(g: Guard, audit: MemoryAuditSink) -> None:
    t = token(sid="s")
    assert (await g.authorize("read_note", {}, t)).allowed
    session_id = events(audit, EventKind.SESSION_OPENED)[0].session_id
    await g.revoke(session_id=session_id, reason="suspicious")
    assert (await g.authorize("read_note", {}, t)).decision.reason.code == ReasonCode.SESSION_REVOKED
    assert events(audit, EventKind.SESSION_REVOKED)[0].session_id == session_id
    with pytest.raises(LookupError):
        await g.revoke(session_id="nope")
    with pytest.raises(ValueError, match="exactly one"):
        await g.revoke(subject="a", client_id="b")
    with pytest.raises(ValueError, match="exactly one"):
        await g.revoke()


class ExplodingStore(MemorySessionStore):
    async def get(self, session_id: str) -> None:
        raise ConnectionError("store down")


class ExplodingSink:
    def emit(self, event: object) -> None:
        raise OSError("disk full")


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"policy": ExplodingPolicy()}, ReasonCode.POLICY_ERROR),
        ({"sessions": ExplodingStore()}, ReasonCode.GUARD_ERROR),
    ],
)
async def test_a_failing_stage_denies_and_is_recorded(
    audit: MemoryAuditSink, clock: Clock, options: dict[str, Any], code: str, caplog: pytest.LogCaptureFixture
) -> None:
    g = Guard(audit=[audit], clock=clock, **options)
    g.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    result = await g.authorize("read_note", {}, token())
    assert not result.allowed and result.decision.reason.code == code
    assert events(audit, EventKind.CALL_DECIDED)[-1].reasons == (code,)
    assert "denying" in caplog.text
    assert await g.visible_tools(token()) == frozenset()


async def test_a_failing_audit_sink_denies(clock: Clock) -> None:
    g = Guard(audit=[ExplodingSink()], clock=clock)
    g.declare(ToolSpec("read_note"))
    result = await g.authorize("read_note", {}, token())
    assert not result.allowed and result.decision.reason.code == ReasonCode.GUARD_ERROR


async def test_visible_tools_follow_scopes_and_session_state(g: Guard) -> None:
    reader = token(scopes="notes:read", sid="v")
    assert await g.visible_tools(reader) == {"read_note"}
    assert await g.visible_tools(token(scopes="notes:write notes:admin")) == {"read_note", "write_note", "purge"}
    assert await g.visible_tools(None) == frozenset()
    assert await g.visible_tools(token(expires_at=NOW - 3600)) == frozenset()
    await g.authorize("read_note", {}, reader)
    assert await g.visible_tools(token("mallory", sid="v")) == frozenset()  # someone else's session
    await g.revoke(subject="alice")
    assert await g.visible_tools(reader) == frozenset()


def test_declarations_are_validated() -> None:
    g = Guard()
    g.declare(ToolSpec("a"))
    with pytest.raises(ValueError, match="already declared"):
        g.declare(ToolSpec("a"))
    for bad in ("", "has space", "re\u0430d", "x" * 129, "tab\t"):
        with pytest.raises(ValueError, match="tool name"):
            ToolSpec(bad)
    with pytest.raises(ValueError, match="contains ' '"):
        ToolSpec("b", scopes=frozenset({"bad scope"}))
    with pytest.raises(ValueError, match="scope_hierarchy"):
        Guard(policy=ExplodingPolicy(), scope_hierarchy={"a": "b"})


@pytest.mark.parametrize("setting", ["tags", "redact", "actors", "data_classes"])
def test_one_string_where_a_set_of_names_is_meant_is_refused(setting: str) -> None:
    """``tags="payments"`` would tag the tool with letters, so a rule on the tag ``payments``
    would miss it, and ``redact="password"`` would record the password in clear."""
    with pytest.raises(ValueError, match=f"{setting} must be a collection of values, not one string"):
        ToolSpec("pay", **{setting: "payments"})

    def pay(password: str) -> str:
        return "paid"

    with pytest.raises(ValueError, match=f"tool 'pay': {setting} must be a collection"):
        Guard().tool(**{setting: "payments"})(pay)
    guard = Guard()
    guard.tool(**{setting: ["payments"]})(pay)
    assert getattr(guard.tools["pay"], setting) >= {"payments"}  # redact adds the field's other names


async def test_a_revoked_session_stays_revoked_after_its_record_is_evicted(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    g = make_guard(audit, clock, sessions=MemorySessionStore(max_sessions=2))
    victim = token(sid="victim", expires_at=NOW + 60)
    assert (await g.authorize("read_note", {}, victim)).allowed
    session_id = events(audit, EventKind.SESSION_OPENED)[0].session_id
    await g.revoke(session_id=session_id)
    clock.advance(4 * 3600 + 1)  # past retention: the store may now forget the record
    fresh = token(sid="victim", expires_at=clock.now + 600)
    for index in range(3):  # press the store to evict
        await g.authorize("read_note", {}, token(f"filler-{index}", expires_at=clock.now + 600))
    assert await g.sessions.get(session_id) is None
    assert (await g.authorize("read_note", {}, fresh)).decision.reason.code == ReasonCode.SESSION_REVOKED


async def test_a_full_store_refuses_new_sessions_rather_than_forget_live_ones(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    store = MemorySessionStore(max_sessions=2)
    g = make_guard(audit, clock, sessions=store)
    alice, bob = token("alice", sid="a"), token("bob", sid="b")
    assert (await g.authorize("read_note", {}, alice)).allowed
    assert (await g.authorize("read_note", {}, bob)).allowed
    assert len(store) == 2
    carol = await g.authorize("read_note", {}, token("carol", sid="c"))
    assert carol.decision.reason.code == ReasonCode.SESSION_UNAVAILABLE
    assert "retry later" in carol.decision.reason.message
    mallory = token("mallory", sid="a")  # alice's session is still bound to alice
    assert (await g.authorize("read_note", {}, mallory)).decision.reason.code == ReasonCode.SESSION_BINDING_MISMATCH
    clock.advance(4 * 3600 + 1)  # both sessions are past their retention now
    assert (await g.authorize("read_note", {}, token("carol", sid="c", expires_at=clock.now + 600))).allowed
    with pytest.raises(ValueError, match="max_sessions"):
        MemorySessionStore(max_sessions=0)


async def test_one_principal_cannot_fill_the_store_for_everyone(audit: MemoryAuditSink, clock: Clock) -> None:
    store = MemorySessionStore(max_sessions=10, max_sessions_per_subject=2)
    g = make_guard(audit, clock, sessions=store)
    assert (await g.authorize("read_note", {}, token(sid="a1"))).allowed
    assert (await g.authorize("read_note", {}, token(sid="a2"))).allowed
    third = (await g.authorize("read_note", {}, token(sid="a3"))).decision
    assert third.reason.code == ReasonCode.SESSION_UNAVAILABLE and "This identity" in third.reason.message
    assert (await g.authorize("read_note", {}, token("bob", sid="b1"))).allowed
    assert (await g.authorize("read_note", {}, token(sid="a1"))).allowed  # its open sessions still serve it
    clock.advance(4 * 3600 + 1)  # alice's sessions are past their retention: sweeping them makes room
    assert (await g.authorize("read_note", {}, token(sid="a3", expires_at=clock.now + 600))).allowed
    assert len(store) == 1 and MemorySessionStore(max_sessions=100).max_sessions_per_subject == 10
    with pytest.raises(ValueError, match="max_sessions_per_subject"):
        MemorySessionStore(max_sessions_per_subject=0)


async def test_one_subject_cannot_fill_the_store_with_many_client_ids(audit: MemoryAuditSink, clock: Clock) -> None:
    store = MemorySessionStore(max_sessions=10, max_sessions_per_subject=3)
    g = make_guard(audit, clock, sessions=store)
    for client in range(3):
        assert (await g.authorize("read_note", {}, token(sid=f"m{client}", client_id=f"dcr-{client}"))).allowed
    for client in range(3, 10):  # each a fresh dynamic client registration
        denied = (await g.authorize("read_note", {}, token(sid=f"m{client}", client_id=f"dcr-{client}"))).decision
        assert denied.reason.code == ReasonCode.SESSION_UNAVAILABLE
    assert (await g.authorize("read_note", {}, token("bob", sid="b1"))).allowed
    other_issuer = token(sid="m-elsewhere", issuer="https://other.example.test")
    assert (await g.authorize("read_note", {}, other_issuer)).allowed  # a subject is an issuer's subject
    assert len(store) == 5


async def test_sessions_opened_after_a_fruitless_sweep_are_swept_when_they_end(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    store = MemorySessionStore(max_sessions=4, max_sessions_per_subject=1)
    g = make_guard(audit, clock, sessions=store)
    day = clock.now + 24 * 3600
    assert (await g.authorize("read_note", {}, token(expires_at=day), transport_session="a1")).allowed
    second = await g.authorize("read_note", {}, token(expires_at=day), transport_session="a2")
    assert second.decision.reason.code == ReasonCode.SESSION_UNAVAILABLE  # a sweep that freed nothing
    for name in ("bob", "carol", "dave"):  # retained to their absolute deadline, 4 h from now
        assert (await g.authorize("read_note", {}, token(name), transport_session=name)).allowed
    clock.advance(5 * 3600)
    late = await g.authorize("read_note", {}, token("eve", expires_at=clock.now + 600), transport_session="eve")
    assert late.allowed and len(store) == 2


async def test_a_session_keyed_by_a_token_that_never_expires_is_never_forgotten(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    """Swept, its key would open a fresh session and the token would outlive every session
    lifetime; a transport's key is the transport's, and a legacy client reconnects anyway."""
    settings = SessionSettings(absolute_ttl=60, idle_ttl=60)
    store = MemorySessionStore(max_sessions=2, max_sessions_per_subject=2)
    g = make_guard(audit, clock, sessions=store, session_settings=settings)
    forever = access_token("alice", "notes:read", expires_in=None)
    assert (await g.authorize("read_note", {}, forever)).allowed
    assert (await g.authorize("read_note", {}, forever, transport_session="legacy-1")).allowed
    clock.advance(120)
    bob = await g.authorize("read_note", {}, token("bob", expires_at=clock.now + 600))
    carol = await g.authorize("read_note", {}, token("carol", expires_at=clock.now + 600))
    assert bob.allowed  # the legacy session was swept to make room
    assert carol.decision.reason.code == ReasonCode.SESSION_UNAVAILABLE and len(store) == 2
    assert (await g.authorize("read_note", {}, forever)).decision.reason.code == ReasonCode.SESSION_EXPIRED


async def test_sessions_are_retained_while_their_token_can_still_be_presented(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    settings = SessionSettings(absolute_ttl=60, idle_ttl=30)
    g = make_guard(audit, clock, sessions=MemorySessionStore(max_sessions=1), session_settings=settings)
    long_token = token(expires_at=NOW + 3600)
    assert (await g.authorize("read_note", {}, long_token)).allowed
    clock.advance(120)  # the session expired, but its token is valid for another hour
    assert (await g.authorize("read_note", {}, long_token)).decision.reason.code == ReasonCode.SESSION_EXPIRED
    other = await g.authorize("read_note", {}, token("bob", expires_at=clock.now + 600))
    assert other.decision.reason.code == ReasonCode.SESSION_UNAVAILABLE  # nothing could be evicted
    assert (await g.authorize("read_note", {}, long_token)).decision.reason.code == ReasonCode.SESSION_EXPIRED


class FailsOnDecisions:
    def emit(self, event: Any) -> None:
        if event.kind == EventKind.CALL_DECIDED:
            raise OSError("disk full")


async def test_a_sink_failing_after_another_recorded_the_call_denies_and_records_the_denial(clock: Clock) -> None:
    first = MemoryAuditSink()
    g = Guard(audit=[first, FailsOnDecisions()], clock=clock)
    g.declare(ToolSpec("read_note"))
    t = token(sid="s")
    result = await g.authorize("read_note", {}, t)
    assert not result.allowed
    assert result.decision.reason.code == ReasonCode.GUARD_ERROR
    decided = [e for e in first.events if e.kind == EventKind.CALL_DECIDED]
    assert [(e.outcome, e.reasons) for e in decided] == [("trimmed", ("allowed",)), ("denied", ("guard_error",))]
    session = await g.sessions.get(decided[0].session_id or "")
    assert session is not None
    assert session.call_count == 0  # the call never ran, so it does not count


async def test_nothing_escapes_authorize(audit: MemoryAuditSink, caplog: pytest.LogCaptureFixture) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock broke")

    g = Guard(audit=[audit], clock=broken_clock)
    result = await g.authorize("read_note", {}, token())
    assert result.decision.reason.code == ReasonCode.GUARD_ERROR
    assert "outside any stage" in caplog.text

    class NamelessPolicy(ExplodingPolicy):
        broken = False  # its names read when it is installed, and fail later

        def __getattribute__(self, name: str) -> Any:
            if name in ("id", "version") and object.__getattribute__(self, "broken"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    nameless = NamelessPolicy()
    g = Guard(audit=[audit], policy=nameless)
    g.declare(ToolSpec("read_note"))
    nameless.broken = True
    assert (await g.authorize("read_note", {}, token())).decision.reason.code == ReasonCode.GUARD_ERROR


@pytest.mark.parametrize(
    "arguments",
    [
        {"subject": ""},
        {"token_id": ""},
        {"client_id": "c", "issuer": ""},
        {"subject": "a", "ttl": 0},
        {"subject": "a", "ttl": -5},
        {"subject": "a", "ttl": float("nan")},
        {"subject": "a", "ttl": float("inf")},
    ],
)
async def test_revocations_that_would_do_nothing_are_refused(g: Guard, arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"non-empty|ttl"):
        await g.revoke(**arguments)


async def test_revoking_a_jti_spares_tokens_without_one(g: Guard) -> None:
    await g.revoke(token_id="jti-1")
    assert (await g.authorize("read_note", {}, token())).allowed
    assert (await g.authorize("read_note", {}, token(jti="jti-1"))).decision.reason.code == ReasonCode.TOKEN_REVOKED


def test_the_policy_hierarchy_cannot_change_under_its_memo() -> None:
    policy = ScopePolicy({"a": "b"})
    with pytest.raises(AttributeError):
        policy.hierarchy = ScopeHierarchy()  # type: ignore[misc]


async def test_tools_can_forbid_require_or_restrict_delegation(audit: MemoryAuditSink, clock: Clock) -> None:
    g = make_guard(audit, clock)
    g.declare(ToolSpec("transfer", delegation="forbid"))
    g.declare(ToolSpec("summarize", delegation="require", actors=frozenset({"summarizer"})))
    g.declare(ToolSpec("lookup", actors=frozenset({"summarizer", "planner"})))
    own = token("alice")
    via_summarizer = token("alice", act={"sub": "summarizer", "act": {"sub": "planner"}})
    via_rogue = token("alice", act={"sub": "rogue"})

    async def code(tool: str, credential: AccessToken) -> str:
        return (await g.authorize(tool, {}, credential)).decision.reason.code

    assert await code("transfer", own) == "allowed"
    assert await code("transfer", via_summarizer) == "delegation_forbidden"
    assert await code("summarize", own) == "delegation_required"
    assert await code("summarize", via_summarizer) == "allowed"  # only the current actor counts
    assert await code("summarize", via_rogue) == "actor_not_allowed"
    assert await code("lookup", via_rogue) == "actor_not_allowed"
    assert await code("lookup", own) == "allowed"
    assert await g.visible_tools(via_rogue) == {"read_note"}
    assert "transfer" not in await g.visible_tools(via_summarizer)
    with pytest.raises(ValueError, match="delegation"):
        ToolSpec("x", delegation="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="forbids delegation"):
        ToolSpec("y", delegation="forbid", actors=frozenset({"a"}))


async def test_a_token_naming_no_client_binds_with_an_empty_client_id(g: Guard) -> None:
    result = await g.authorize("read_note", {}, token(client_id=""))
    assert result.allowed
    assert result.request is not None
    assert result.request.session.binding == ("https://auth.example.test", "alice", "")


async def test_a_session_remembers_a_bounded_number_of_bound_tokens(g: Guard, audit: MemoryAuditSink) -> None:
    """Tokens of one identity sharing a session (``sid``) are each recorded once as bound; past
    `MAX_SESSION_TOKENS` the oldest is forgotten, so memory per session stays bounded."""
    tokens = [token(sid="shared", jti=f"t-{index}") for index in range(MAX_SESSION_TOKENS + 1)]
    for credential in tokens + tokens[-3:]:
        assert (await g.authorize("read_note", {}, credential)).allowed
    bound = events(audit, EventKind.SESSION_BOUND)
    assert [e.token_id for e in bound] == [f"t-{index}" for index in range(MAX_SESSION_TOKENS + 1)]
    [session_id] = {e.session_id for e in bound}
    session = await g.sessions.get(session_id)
    assert session is not None and len(session.tokens) == MAX_SESSION_TOKENS and "t-0" not in session.tokens
    assert (await g.authorize("read_note", {}, tokens[0])).allowed  # forgotten, so bound again
    assert events(audit, EventKind.SESSION_BOUND)[-1].token_id == "t-0"


async def test_a_refreshed_token_keeps_its_session_retained(audit: MemoryAuditSink, clock: Clock) -> None:
    """A later token bound to a session extends its retention: sweeping the store past the
    opening token's end must not let the later token open the session afresh."""
    g = make_guard(audit, clock, sessions=MemorySessionStore(max_sessions=2))
    assert (await g.authorize("read_note", {}, token(sid="s", jti="first", expires_at=NOW + 60))).allowed
    refreshed = token(sid="s", jti="refreshed", expires_at=NOW + 8 * 3600)
    assert (await g.authorize("read_note", {}, refreshed)).allowed
    clock.advance(4 * 3600 + 1)  # past the session's absolute lifetime and the first token's end
    for index in range(3):  # press the store to sweep
        await g.authorize("read_note", {}, token(f"filler-{index}", expires_at=clock.now + 600))
    again = await g.authorize("read_note", {}, refreshed)
    assert again.decision.reason.code == ReasonCode.SESSION_EXPIRED
    reopened = [e for e in events(audit, EventKind.SESSION_OPENED) if e.token_id in ("first", "refreshed")]
    assert len(reopened) == 1  # opened once, never afresh


@pytest.mark.parametrize(("aud", "code"), [([7], "claim_invalid"), ([], "claim_invalid"), (7, "claim_invalid")])
async def test_a_malformed_audience_on_a_verified_token_is_refused(g: Guard, aud: Any, code: str) -> None:
    result = await g.authorize("read_note", {}, token(aud=aud))
    assert result.decision.reason.code == code


async def test_lapsed_revocations_are_dropped(audit: MemoryAuditSink, clock: Clock) -> None:
    """A revocation with a ttl ends on time, and once every one has ended the per-call check
    is skipped again and nothing of them is kept."""
    g = make_guard(audit, clock)
    await g.revoke(subject="alice", ttl=60)
    await g.revoke(client_id="test-client", ttl=120)
    assert (await g.authorize("read_note", {}, token())).decision.reason.code == ReasonCode.SUBJECT_REVOKED
    clock.advance(61)
    assert (await g.authorize("read_note", {}, token())).decision.reason.code == ReasonCode.CLIENT_REVOKED
    assert g.revocations.active
    clock.advance(60)
    assert (await g.authorize("read_note", {}, token())).allowed
    assert not g.revocations.active


class SharedStore(MemorySessionStore):
    """A store other replicas share, as Redis would be: each read is a copy, and recording a
    call waits on the network (``during_record`` runs meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.during_record: Any = None

    async def get(self, session_id: str) -> Any:
        import copy

        found = await super().get(session_id)
        return copy.deepcopy(found) if found is not None else None

    async def record_call(self, session: Any, at: float, **details: Any) -> float:
        if self.during_record is not None:
            waiting, self.during_record = self.during_record, None
            await waiting()
        return await super().record_call(self._sessions[session.id], at, **details)


async def test_a_session_another_replica_ends_meanwhile_refuses_the_call() -> None:
    store = SharedStore()
    here, there = Guard(sessions=store), Guard(sessions=store)
    for replica in (here, there):
        replica.declare(ToolSpec("act"))
    credential = token(sid="s1")
    first = await here.authorize("act", {}, credential)
    assert first.request is not None
    session_id = first.request.session.id

    async def revoke_there() -> None:
        await there.revoke(session_id=session_id)

    store.during_record = revoke_there
    assert (await here.authorize("act", {}, credential)).decision.reason.code == ReasonCode.SESSION_REVOKED


@pytest.mark.parametrize(
    ("fault", "code"), [("raise", ReasonCode.GUARD_ERROR), ("none", ReasonCode.SESSION_UNAVAILABLE)]
)
async def test_a_session_that_cannot_be_read_again_refuses_the_call_and_says_so(
    audit: MemoryAuditSink, fault: str, code: str
) -> None:
    class Flaky(SharedStore):
        async def get(self, session_id: str) -> Any:
            if self.during_record == "failing":
                self.during_record = None
                if fault == "raise":
                    raise ConnectionError("the store went away")
                return None
            return await super().get(session_id)

        async def record_call(self, session: Any, at: float, **details: Any) -> float:
            score = await super().record_call(session, at, **details)
            self.during_record = "failing"  # the next read, the check after recording, fails
            return score

    g = Guard(sessions=Flaky(), audit=[audit])
    g.declare(ToolSpec("act"))
    assert (await g.authorize("act", {}, token(sid="s1"))).decision.reason.code == code
    decided = [event.outcome for event in audit.events if event.kind == EventKind.CALL_DECIDED]
    assert decided == ["trimmed", "denied"]  # the refusal is on the record after the allowance


@pytest.mark.parametrize("reading", [math.nan, math.inf, -math.inf, 65_227.0, 0.0])  # also seconds since boot, 1970
async def test_a_clock_without_a_usable_time_denies_everything_and_lifts_no_revocation(
    g: Guard, clock: Clock, reading: float
) -> None:
    await g.revoke(subject="mallory", reason="for good")
    assert (await g.authorize("read_note", {}, token())).allowed
    clock.now = reading  # NaN passes no check, +inf outlasts every revocation, 1970 finds no token expired
    for caller in (token(), token("mallory"), token(expires_at=NOW - 3600)):
        assert (await g.authorize("read_note", {}, caller)).decision.reason.code == ReasonCode.GUARD_ERROR
    assert await g.visible_tools(token()) == frozenset()
    with pytest.raises(Refused, match="clock"):
        await g.revoke(subject="bob")
    clock.now = NOW + 1
    assert (await g.authorize("read_note", {}, token("mallory"))).decision.reason.code == ReasonCode.SUBJECT_REVOKED


async def test_a_policy_without_a_string_id_and_version_is_refused_when_installed() -> None:
    class Unnamed:
        version = "1"

        def decide(self, request: Any) -> None:
            return None

        def visible(self, principal: Any, tool: Any) -> bool:
            return True

    with pytest.raises(TypeError, match="'id'"):
        Guard(policy=Unnamed())  # type: ignore[arg-type]
    guard = Guard()
    unversioned = ScopePolicy()
    unversioned.version = 2  # type: ignore[assignment]
    with pytest.raises(TypeError, match="'version'"):
        guard.policy = unversioned
    assert guard.policy.id == "mcp-guard/scopes"  # the guard keeps the policy it had


@pytest.mark.parametrize("answer", ["allows", "abstains", "allows, then the caller is revoked"])
async def test_a_decision_is_recorded_under_the_policy_that_made_it(audit: MemoryAuditSink, answer: str) -> None:
    """Another policy installed while an async one decides does not take its decision's name,
    nor that of a refusal after it (a revocation found by the second look)."""
    gate = anyio.Event()

    async def old_remote(request: Any) -> Decision | None:
        await gate.wait()
        scopes = request.principal.scopes
        allowed = Decision(allowed=True, requested_scopes=scopes, approved_scopes=scopes, rule_ids=("old",))
        return None if answer == "abstains" else allowed

    g = Guard(policy=old_remote, audit=[audit])
    g.declare(ToolSpec("read_note"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(g.authorize, "read_note", {}, token())
        await anyio.wait_all_tasks_blocked()
        g.policy = ScopePolicy(id="strict", version="2")
        if "revoked" in answer:
            await g.revoke(subject="alice")
        gate.set()
    decided = events(audit, EventKind.CALL_DECIDED)[-1]
    assert decided.outcome == ("allowed" if answer == "allows" else "denied")
    assert (decided.policy_id, decided.policy_version) == ("old_remote", "1")


async def test_revoked_ids_of_sessions_keyed_by_one_token_are_let_go_once_it_has_expired(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    """A risk threshold or an operator revoking sessions one token each opened (MCP 2026-07-28
    without a ``sid``) piled their ids up for good; an id something else can present again (a
    transport's session id, a claim) stays revoked."""
    g = make_guard(audit, clock)
    short_lived = token("alice", expires_at=NOW + 600)
    assert (await g.authorize("read_note", {}, short_lived)).allowed
    assert (await g.authorize("read_note", {}, token("bob"), transport_session="abc")).allowed
    by_token, by_transport = (event.session_id for event in events(audit, EventKind.SESSION_OPENED))
    await g.revoke(session_id=by_token)
    await g.revoke(session_id=by_transport)
    clock.advance(5 * 3600)  # past the first session's retention
    later = token("carol", expires_at=clock.now + 600)
    assert (await g.authorize("read_note", {}, later)).allowed
    await g.revoke(session_id=events(audit, EventKind.SESSION_OPENED)[-1].session_id)  # lets go of lapsed ids
    assert not g.revocations.session_revoked(by_token)
    assert g.revocations.session_revoked(by_transport)
    assert (await g.authorize("read_note", {}, short_lived)).decision.reason.code == ReasonCode.TOKEN_EXPIRED


async def test_a_call_sees_the_tool_as_the_policy_deciding_it_declares_it(audit: MemoryAuditSink) -> None:
    """A policy installed while a call waits on its session store decides the next call; this
    one is decided on the tool as the policy that decides it declares it, not the new one."""
    gate = anyio.Event()
    seen: list[tuple[str, frozenset[str]]] = []

    class SlowStore(MemorySessionStore):  # a store over the network: its reads wait
        async def get(self, session_id: str) -> Any:
            await gate.wait()
            return await super().get(session_id)

    class Declaring:
        version = "1"

        def __init__(self, name: str, scope: str) -> None:
            self.id, self.scope = name, scope

        def merged(self, spec: ToolSpec) -> ToolSpec:
            return replace(spec, scopes=frozenset({self.scope}))

        def visible(self, principal: Principal, spec: ToolSpec) -> bool:
            return True

        def decide(self, request: Any) -> Decision:
            seen.append((self.id, request.tool.scopes))
            return Decision.deny(ReasonCode.INSUFFICIENT_SCOPE, None)

    g = Guard(policy=Declaring("old", "notes:admin"), sessions=SlowStore(), audit=[audit])
    g.declare(ToolSpec("wipe"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(g.authorize, "wipe", {}, token())
        await anyio.wait_all_tasks_blocked()
        g.policy = Declaring("new", "notes:other")
        gate.set()
    assert seen == [("old", frozenset({"notes:admin"}))]


async def test_a_policy_failing_to_say_its_revision_denies_the_call_on_the_record(audit: MemoryAuditSink) -> None:
    class Unreachable(ScopePolicy):
        def in_force(self) -> ScopePolicy:
            raise OSError("the policy store is unreachable")

    g = Guard(policy=Unreachable(), audit=[audit])
    g.declare(ToolSpec("read_note"))
    refused = (await g.authorize("read_note", {}, token())).decision
    assert refused.reason.code == ReasonCode.GUARD_ERROR
    assert [event.outcome for event in events(audit, EventKind.CALL_DECIDED)] == ["denied"]


async def test_a_revoked_session_the_store_let_go_of_reads_no_resource(audit: MemoryAuditSink, clock: Clock) -> None:
    """A store forgets a session past its retention (or a shared one its TTL); its id stays
    revoked, for a resource read as for a tool call."""
    g = make_guard(audit, clock, sessions=MemorySessionStore(max_sessions=1))
    assert (await g.authorize("read_note", {}, token(), transport_session="abc")).allowed
    session_id = events(audit, EventKind.SESSION_OPENED)[0].session_id
    await g.revoke(session_id=session_id)
    clock.advance(5 * 3600)  # past the session's retention
    refreshed = token(expires_at=clock.now + 600)
    assert (await g.authorize("read_note", {}, refreshed, transport_session="other")).allowed  # sweeps it out
    assert await g.sessions.get(session_id) is None
    denied = await g.admit_request("resources/read", refreshed, "abc")
    assert denied is not None and denied.reason.code == ReasonCode.SESSION_REVOKED
    called = await g.authorize("read_note", {}, refreshed, transport_session="abc")
    assert called.decision.reason.code == ReasonCode.SESSION_REVOKED


async def test_a_plain_function_is_the_guards_policy_and_its_decisions_name_it(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    def reads_only(request: Any) -> Decision | None:
        if request.tool.name == "read_note":
            scopes = request.principal.scopes
            return Decision(allowed=True, requested_scopes=scopes, approved_scopes=scopes, rule_ids=("reads-only",))
        return None  # no opinion is a denial when nothing else decides

    g = Guard(policy=reads_only, audit=[audit], clock=clock)
    g.declare(ToolSpec("read_note"))
    g.declare(ToolSpec("write_note"))
    assert g.policy.id == "reads_only"
    assert (await g.authorize("read_note", {}, token())).allowed
    denied = await g.authorize("write_note", {}, token())
    assert denied.decision.reason.code == ReasonCode.NO_APPLICABLE_RULE
    decided = events(audit, EventKind.CALL_DECIDED)
    assert [(e.policy_id, e.policy_version) for e in decided] == [("reads_only", "1")] * 2  # named by the guard
    g.policy = reads_only  # and when replaced
    assert g.policy.id == "reads_only"


async def test_revoking_a_session_that_already_ended_is_recorded(
    g: Guard, audit: MemoryAuditSink, clock: Clock
) -> None:
    caller = token(sid="idle", expires_at=NOW + 3600)
    assert (await g.authorize("read_note", {}, caller)).allowed
    session_id = events(audit, EventKind.SESSION_OPENED)[0].session_id
    clock.advance(16 * 60)  # idle past its 15 minutes
    assert (await g.authorize("read_note", {}, caller)).decision.reason.code == ReasonCode.SESSION_IDLE_EXPIRED
    await g.revoke(session_id=session_id, reason="incident 7")
    [revoked] = events(audit, EventKind.SESSION_REVOKED)
    assert revoked.session_id == session_id and revoked.detail == "the session had already ended; incident 7"
    await g.revoke(session_id=session_id)  # already revoked: nothing new to record
    assert len(events(audit, EventKind.SESSION_REVOKED)) == 1


async def test_a_credential_narrowed_in_place_is_judged_as_it_now_reads(g: Guard) -> None:
    """A verifier may narrow the very object it handed over (fewer scopes, an earlier expiry, a
    claim changed deep inside): the principal remembered for that object is not served again."""
    credential = token(scopes="notes:write", act={"sub": "planner"})
    assert (await g.authorize("write_note", {}, credential)).allowed
    credential.scopes = ["notes:read"]
    credential.claims = {**(credential.claims or {}), "scope": "notes:read"}
    assert (await g.authorize("write_note", {}, credential)).decision.reason.code == ReasonCode.INSUFFICIENT_SCOPE
    assert (await g.authorize("read_note", {}, credential)).allowed
    assert credential.claims is not None
    credential.claims["act"]["sub"] = "mailer"  # the same dict, changed within
    assert (await g.authorize("read_note", {}, credential)).request.principal.actor_chain == ("mailer",)  # type: ignore[union-attr]
    credential.subject = "mallory"  # another identity now: not the session's
    assert (await g.authorize("read_note", {}, credential)).decision.reason.code == (
        ReasonCode.SESSION_BINDING_MISMATCH
    )
    credential.subject = "alice"
    credential.expires_at = int(NOW - 3600)
    assert (await g.authorize("read_note", {}, credential)).decision.reason.code == ReasonCode.TOKEN_EXPIRED


async def test_a_token_the_guard_cannot_read_is_named_by_its_fingerprint(g: Guard, audit: MemoryAuditSink) -> None:
    credential = token(issuer=None)
    assert (await g.authorize("read_note", {}, credential)).decision.reason.code == ReasonCode.ISSUER_MISSING
    [rejected] = events(audit, EventKind.TOKEN_REJECTED)
    assert rejected.detail == f"token {token_fingerprint(credential.token)}"
    await g.authorize("read_note", {}, None)  # no token at all: nothing to name
    assert events(audit, EventKind.TOKEN_REJECTED)[-1].detail is None


async def test_claims_that_cannot_be_copied_all_the_way_down_are_kept_at_the_top(g: Guard) -> None:
    """A verifier's own object among the claims (a lock, say) is no reason to refuse every call."""
    import threading

    credential = token(scopes="notes:read", handle=threading.Lock())
    for _ in range(2):
        assert (await g.authorize("read_note", {}, credential)).allowed


def test_a_guarded_function_run_inside_another_tools_call_is_refused_with_the_cause() -> None:
    from mcp_guard.context import ADMITTED, Admission
    from mcp_guard.errors import UnguardedCallError
    from mcp_guard.testing import call_request

    guard = Guard()

    @guard.tool(scopes="files:read")
    def read_file(path: str) -> str:
        return path

    with pytest.raises(UnguardedCallError, match="add GuardMiddleware"):
        read_file("a")  # outside any admitted call
    admitted = ADMITTED.set(Admission(call_request("append_file", {"path": "a"})))
    try:
        with pytest.raises(UnguardedCallError, match="inside the call mcp-guard admitted for tool 'append_file'"):
            read_file("a")
    finally:
        ADMITTED.reset(admitted)


async def test_the_wait_for_an_approval_is_the_call_under_way_not_idleness(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    class HumanApproval:
        id, version = "approval", "1"

        def visible(self, principal: Principal, tool: ToolSpec) -> bool:
            return True

        async def decide(self, request: Any) -> Decision:
            clock.advance(16 * 60)  # a reviewer approves sixteen minutes later
            return Decision(allowed=True)

    g = Guard(policy=HumanApproval(), audit=[audit], clock=clock, session_settings=SessionSettings(idle_ttl=900))
    g.declare(ToolSpec("deploy"))
    t = token(expires_at=NOW + 10_000, sid="s")
    assert [(await g.authorize("deploy", {}, t)).allowed for _ in range(2)] == [True, True]
    clock.advance(901)  # and then nothing
    assert (await g.authorize("deploy", {}, t)).decision.reason.code == ReasonCode.SESSION_IDLE_EXPIRED


async def test_a_revoked_callers_refusals_name_its_session_and_owners(audit: MemoryAuditSink, clock: Clock) -> None:
    owners = SessionOwners(operator="ops")
    g = make_guard(audit, clock, session_settings=SessionSettings(owners=owners))
    t = token(sid="s-1")
    assert (await g.authorize("read_note", {}, t)).allowed
    opened = audit.events[-1].session_id
    await g.revoke(subject="alice", reason="incident 42")
    refused = await g.authorize("read_note", {}, t)
    assert refused.decision.reason.code == ReasonCode.SUBJECT_REVOKED
    assert (audit.events[-1].session_id, audit.events[-1].owners) == (opened, owners)
    assert await g.admit_request("resources/read", t) is not None
    assert (audit.events[-1].session_id, audit.events[-1].owners, audit.events[-1].detail) == (
        opened,
        owners,
        "resources/read request",
    )


@pytest.mark.parametrize("target", ["subject", "token_id", "session_id"])
def test_a_call_decided_on_another_thread_while_a_revocation_is_made_is_refused(target: str) -> None:
    import threading

    deciding, revoked = threading.Event(), threading.Event()

    def decide(request: Any) -> Decision:  # a policy that takes its time, on the caller's thread
        if request.tool.name == "deploy":
            deciding.set()
            revoked.wait(5)
        return Decision(allowed=True)

    g = Guard(policy=decide)
    g.declare(ToolSpec("warm"))
    g.declare(ToolSpec("deploy"))
    t = access_token("alice", "", jti="J1", sid="s")
    calls: dict[str, Any] = {}

    async def calling() -> None:
        assert (await g.authorize("warm", {}, t)).allowed
        calls["deploy"] = await g.authorize("deploy", {}, t)

    async def revoking() -> None:
        deciding.wait(5)
        named = {"subject": "alice", "token_id": "J1", "session_id": next(iter(g.sessions._sessions))}  # type: ignore[attr-defined]
        await g.revoke(**{target: named[target]})
        revoked.set()

    threads = [threading.Thread(target=anyio.run, args=(side,)) for side in (calling, revoking)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not calls["deploy"].allowed  # revoke() returned before the call was allowed


def test_revoking_one_target_over_and_over_keeps_the_heap_of_ends_small() -> None:
    revocations = Revocations()
    for n in range(10_000):  # automation re-revoking with a ttl, and lifting it
        revocations.revoke_subject("alice", until=NOW + 3600 + n)
        if n % 2:
            revocations.restore(subject="alice")
    assert len(revocations._ends) < 200  # type: ignore[attr-defined]
    revocations.revoke_subject("alice", until=NOW + 3600)
    alice = Principal("https://i", "alice", "c")
    assert revocations.check(alice, NOW) == ReasonCode.SUBJECT_REVOKED
    assert revocations.check(alice, NOW + 3600 + 10_000) is None and not revocations.active


async def test_a_credential_naming_no_usable_session_key_is_refused_for_that_reason(
    g: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    t = token(sid="")  # the sid claim must be a non-empty string
    assert (await g.authorize("read_note", {}, t)).decision.reason.code == ReasonCode.SESSION_UNAVAILABLE
    refused = await g.admit_request("resources/read", t)
    assert refused is not None and refused.reason.code == ReasonCode.SESSION_UNAVAILABLE
    assert not [record for record in caplog.records if record.exc_info]  # a refusal, not a failure


class RefusesOnce:
    """A sink that refuses the first record of each kind it is told to (a log failing for a moment)."""

    def __init__(self, *kinds: EventKind) -> None:
        self.events: list[Any] = []
        self.refuse = set(kinds)

    def emit(self, event: Any) -> None:
        if event.kind in self.refuse:
            self.refuse.discard(event.kind)
            raise OSError("disk full")
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [str(event.kind) for event in self.events]


async def test_a_session_opened_while_the_log_failed_is_recorded_before_anything_after_it(clock: Clock) -> None:
    """The store opened the session before its record was refused: the record is owed, and
    written ahead of the next one, with the session's binding of its first token after it."""
    sink = RefusesOnce(EventKind.SESSION_OPENED)
    g = Guard(audit=[sink], clock=clock)
    g.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    caller = token()
    first = await g.authorize("read_note", {}, caller)
    assert first.decision.reason.code == ReasonCode.GUARD_ERROR  # the change stands; its record is owed
    assert sink.kinds() == ["session.opened", "session.bound", "call.decided"]  # paid before the next record
    assert (await g.authorize("read_note", {}, caller)).allowed
    assert sink.kinds()[-1] == "call.decided" and sink.events[0].session_id == sink.events[-1].session_id


async def test_a_revocation_whose_record_is_refused_stands_and_its_record_is_owed(clock: Clock) -> None:
    sink = RefusesOnce(EventKind.SESSION_REVOKED)
    g = Guard(audit=[sink], clock=clock)
    g.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    caller = token()
    assert (await g.authorize("read_note", {}, caller)).allowed
    session_id = sink.events[-1].session_id
    with pytest.raises(OSError, match="disk full"):
        await g.revoke(session_id=session_id)
    refused = await g.authorize("read_note", {}, caller)
    assert refused.decision.reason.code == ReasonCode.SESSION_REVOKED
    assert sink.kinds()[-2:] == ["session.revoked", "call.decided"]
    await g.revoke(session_id=session_id)  # made again: nothing new to record
    assert sink.kinds().count("session.revoked") == 1


async def test_an_idle_session_ended_while_the_log_failed_is_recorded_once_it_takes_records(clock: Clock) -> None:
    sink = RefusesOnce(EventKind.SESSION_EXPIRED)
    g = Guard(audit=[sink], clock=clock, session_settings=SessionSettings(idle_ttl=30))
    g.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    caller = token()
    assert (await g.authorize("read_note", {}, caller)).allowed
    clock.advance(31)
    assert (await g.authorize("read_note", {}, caller)).decision.reason.code == ReasonCode.GUARD_ERROR
    assert sink.kinds()[-2:] == ["session.expired", "call.decided"]  # owed, and written ahead of the denial
    again = await g.authorize("read_note", {}, caller)
    assert again.decision.reason.code == ReasonCode.SESSION_IDLE_EXPIRED
    assert sink.kinds().count("session.expired") == 1


async def test_a_failing_log_stops_none_of_the_revocations_a_risk_threshold_makes(clock: Clock) -> None:
    """Every token of a session that reached its threshold is revoked, though the record of the
    first revocation is refused; the records all follow, in order."""
    sink = RefusesOnce(EventKind.ACCESS_REVOKED)
    g = Guard(audit=[sink], clock=clock, risk=RiskSettings(threshold=10, write=6))
    g.declare(ToolSpec("write_note", scopes=frozenset({"notes:write"}), risk=Risk.WRITE))
    first, second = token(scopes="notes:write", sid="s1"), token(scopes="notes:write", sid="s1", jti="t2")
    assert (await g.authorize("write_note", {}, first)).allowed
    assert not (await g.authorize("write_note", {}, second)).allowed  # the threshold reached
    for each in (first, second):
        assert (await g.authorize("write_note", {}, each)).decision.reason.code in (
            ReasonCode.TOKEN_REVOKED,
            ReasonCode.SESSION_REVOKED,
        )
    assert sink.kinds().count("access.revoked") == 2 and "session.revoked" in sink.kinds()


async def test_a_store_failing_to_end_a_risky_session_loses_no_record_of_its_revocations(clock: Clock) -> None:
    class FailingEnd(MemorySessionStore):
        async def end(self, *args: Any) -> Any:
            raise ConnectionError("store unreachable")

    audit = MemoryAuditSink()
    g = Guard(audit=[audit], clock=clock, sessions=FailingEnd(), risk=RiskSettings(threshold=10, write=6))
    g.declare(ToolSpec("write_note", scopes=frozenset({"notes:write"}), risk=Risk.WRITE))
    caller = token(scopes="notes:write", sid="s1")
    for _ in range(2):
        await g.authorize("write_note", {}, caller)
    assert (await g.authorize("write_note", {}, caller)).decision.reason.code == ReasonCode.TOKEN_REVOKED
    assert len(events(audit, EventKind.ACCESS_REVOKED)) == 1


class Down:
    """A sink that refuses everything while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        if self.down:
            raise OSError("disk full")
        self.events.append(event)


async def test_while_a_sink_is_owed_records_the_others_take_every_record_and_it_gets_them_in_order(
    clock: Clock,
) -> None:
    healthy, failing = MemoryAuditSink(), Down()
    g = Guard(audit=[healthy, failing], clock=clock)
    g.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    g.declare(ToolSpec("admin", scopes=frozenset({"notes:admin"})))
    with pytest.raises(OSError, match="disk full"):
        await g.revoke(subject="mallory")
    denied = await g.authorize("admin", {}, token())  # no session opens meanwhile: denied
    assert not denied.allowed and events(healthy, EventKind.CALL_DECIDED)[-1].tool == "admin"  # heard of it
    failing.down = False
    await g.admit_request("resources/read", token("mallory"))  # refused, recorded best-effort
    kinds = [str(event.kind) for event in failing.events]
    assert kinds == ["access.revoked", "token.rejected"]  # the revocation first, then the refusal citing it
    assert failing.events[1].reasons == (ReasonCode.SUBJECT_REVOKED,)


async def test_no_session_is_opened_while_a_sink_cannot_take_the_records_it_is_owed(clock: Clock) -> None:
    """A flood of new sessions during an outage piled up owed records, each call walking them all."""
    failing = Down()
    g = Guard(audit=[MemoryAuditSink(), failing], clock=clock)
    g.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    with pytest.raises(OSError, match="disk full"):
        await g.revoke(subject="mallory")
    for index in range(200):
        result = await g.authorize("read_note", {}, token(), transport_session=f"conn-{index}")
        assert result.decision.reason.code == ReasonCode.GUARD_ERROR
    assert sum(len(backlog) for _, backlog in g._owed.entries.values()) == 1
    failing.down = False
    assert (await g.authorize("read_note", {}, token(), transport_session="conn-new")).allowed
    assert [str(event.kind) for event in failing.events][:3] == ["access.revoked", "session.opened", "session.bound"]


@pytest.mark.parametrize("expires_at", [math.nan, math.inf, -math.inf, True, "1900000000"])
def test_a_principal_expiring_at_no_real_time_is_refused(expires_at: Any) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        Principal("https://issuer.test", "alice", "app", expires_at=expires_at)


async def test_a_custom_identifier_giving_a_nan_expiry_is_denied(audit: MemoryAuditSink, clock: Clock) -> None:
    class NotANumber:  # as one doing float(claims["exp"]) on "NaN" would: it passed every expiry check
        def identify(self, credential: AccessToken | None) -> Principal:
            return Principal("https://issuer.test", "alice", "app", frozenset({"notes:read"}), expires_at=math.nan)

    guard = make_guard(audit, clock, identifier=NotANumber())
    clock.advance(10 * 365 * 86400)
    result = await guard.authorize("read_note", {}, None)
    assert not result.allowed and result.decision.reason.code == ReasonCode.GUARD_ERROR


async def test_decimal_weights_adding_up_to_the_threshold_reach_it(audit: MemoryAuditSink, clock: Clock) -> None:
    g = Guard(audit=[audit], clock=clock, risk=RiskSettings(threshold=1.0, write=0.1))
    g.declare(ToolSpec("write_note", scopes=frozenset({"notes:write"}), risk=Risk.WRITE))
    caller = token(scopes="notes:write", sid="s1")
    allowed = [(await g.authorize("write_note", {}, caller)).allowed for _ in range(10)]
    assert allowed == [True] * 9 + [False]  # ten weights of 0.1 sum to 0.9999999999999999, which is 1.0
    assert RiskSettings(threshold=1.0).reached(sum([0.1] * 10)) and not RiskSettings(threshold=1.0).reached(0.999)


async def test_a_token_refused_on_a_request_that_is_no_tool_call_is_recorded_as_a_rejected_token(
    g: Guard, audit: MemoryAuditSink
) -> None:
    """As for a tool call: `token.rejected` with the identity tags, the unreadable token named
    by its fingerprint; a caller refused for its session (not its token) is `call.decided`."""
    from mcp_guard.identity.access_token import refused_token_fingerprint

    expired = token(expires_at=NOW - 600)
    await g.authorize("read_note", {}, expired)
    on_a_call = audit.events[-1]
    assert await g.admit_request("resources/read", expired) is not None
    on_a_read = audit.events[-1]
    assert on_a_read.kind == on_a_call.kind == EventKind.TOKEN_REJECTED
    assert on_a_read.owasp == on_a_call.owasp and "ASI03" in on_a_read.owasp
    unreadable = access_token(None, "notes:read")  # no subject
    assert await g.admit_request("prompts/get", unreadable) is not None
    recorded = audit.events[-1]
    assert recorded.kind == EventKind.TOKEN_REJECTED
    assert recorded.detail == f"prompts/get request; token {refused_token_fingerprint(unreadable.token)}"
    alice = token(sid="s-1")
    assert (await g.authorize("read_note", {}, alice)).allowed
    await g.revoke(session_id=audit.events[-1].session_id)
    assert await g.admit_request("resources/read", alice) is not None
    assert (audit.events[-1].kind, audit.events[-1].reasons) == (EventKind.CALL_DECIDED, ("session_revoked",))


async def test_a_store_failing_to_count_an_allowed_call_is_named_as_such(audit: MemoryAuditSink, clock: Clock) -> None:
    """The record of the allowed call was written: the refusal says the session could not be
    updated (not that the record could not be written), and its own record explains itself."""

    class Unreachable(MemorySessionStore):
        async def record_call(self, *args: Any, **kwargs: Any) -> float:
            raise ConnectionError("connection reset")

    g = make_guard(audit, clock, sessions=Unreachable())
    decision = (await g.authorize("read_note", {}, token())).decision
    assert not decision.allowed and decision.reason.code == ReasonCode.GUARD_ERROR
    assert decision.reason.message == "The call was refused because its session could not be updated."
    allowed, refused = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED]
    assert (allowed.outcome, refused.outcome) == ("allowed", "denied")
    assert refused.detail == "refused after it was allowed and recorded: counting it on its session failed"


async def test_a_risky_session_revokes_each_bound_token_for_as_long_as_it_can_be_presented(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    """A token that never expires, bound on a legacy connection, was revoked only until the
    session's deadline when another token drove the session over its threshold: after that
    it started a fresh budget on a new connection."""
    g = make_guard(audit, clock, risk=RiskSettings(threshold=20, denial=10))
    forever = access_token("mallory", "notes:read", jti="A", expires_in=None)
    expiring = token("mallory", "notes:read", jti="B")
    assert (await g.authorize("read_note", {}, forever, transport_session="conn-1")).allowed
    await g.authorize("write_note", {}, forever, transport_session="conn-1")  # denied: 10
    await g.authorize("write_note", {}, expiring, transport_session="conn-1")  # denied: 20, the threshold
    clock.advance(SessionSettings().absolute_ttl + 1)
    again = await g.authorize("read_note", {}, forever, transport_session="conn-2")
    assert again.decision.reason.code == ReasonCode.TOKEN_REVOKED


async def test_calls_crossing_the_risk_threshold_together_revoke_the_session_once(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    """Each call decided at the same time saw the score past the threshold, and each revoked
    and recorded every token again."""
    gate = anyio.Event()

    class Slow(ScopePolicy):
        async def decide(self, request: Any) -> Any:  # type: ignore[override]
            await gate.wait()
            return super().decide(request)

    g = Guard(policy=Slow(), audit=[audit], clock=clock, risk=RiskSettings(threshold=10, denial=10))
    g.declare(ToolSpec("write_note", scopes=frozenset({"notes:write"})))
    caller = token("mallory", "", sid="s1", jti="J")
    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(g.authorize, "write_note", {}, caller)
        await anyio.sleep(0.01)
        gate.set()
    assert [e.kind for e in audit.events].count(EventKind.ACCESS_REVOKED) == 1
    assert [e.kind for e in audit.events].count(EventKind.SESSION_REVOKED) == 1


async def test_a_risky_session_revokes_the_driving_token_until_its_expiry_as_verified_now(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    """The same token verified again with a later expiry (introspection answering anew) was
    revoked only until the expiry it had when first bound."""
    g = make_guard(audit, clock, risk=RiskSettings(threshold=20, denial=10))
    first = token("mallory", "notes:read", jti="A", expires_at=NOW + 600, token="same-bearer")
    later = token("mallory", "notes:read", jti="A", expires_at=NOW + 36_000, token="same-bearer")
    assert (await g.authorize("read_note", {}, first, transport_session="conn-1")).allowed
    await g.authorize("write_note", {}, later, transport_session="conn-1")
    await g.authorize("write_note", {}, later, transport_session="conn-1")  # the threshold
    clock.advance(SessionSettings().absolute_ttl + 1)
    again = await g.authorize("read_note", {}, later, transport_session="conn-2")
    assert again.decision.reason.code == ReasonCode.TOKEN_REVOKED


async def test_a_store_failing_on_a_request_that_is_no_tool_call_is_no_rejected_token(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    class Unreachable(MemorySessionStore):
        async def get(self, session_id: str) -> Any:
            raise ConnectionError("connection reset")

    g = make_guard(audit, clock, sessions=Unreachable())
    assert await g.admit_request("resources/read", token()) is not None
    assert (audit.events[-1].kind, audit.events[-1].reasons) == (EventKind.CALL_DECIDED, ("guard_error",))


def test_a_token_field_without_value_equality_keeps_its_principal() -> None:
    """A field no copy of which equals it (a handle) made every call build the principal anew."""
    from mcp_guard.identity.access_token import AccessTokenIdentifier

    class HandleToken(AccessToken):
        handle: Any = None

    credential = HandleToken(**dict(token()), handle=object())
    identifier = AccessTokenIdentifier()
    assert identifier.identify(credential) is identifier.identify(credential)
    again = HandleToken(**dict(credential))  # another object saying the same
    assert identifier.identify(again) is identifier.identify(credential)
