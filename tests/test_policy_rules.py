"""The built-in rules and the engine that indexes them, alone and through the guard."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_guard import EventKind, Guard, MemoryAuditSink, ReasonCode, RiskSettings, RulePolicy, ScopePolicy, ToolSpec
from mcp_guard.model import Decision, Risk
from mcp_guard.policy import (
    AllOf,
    AnyOf,
    ArgumentConstraint,
    ArgumentRule,
    DelegationRule,
    LimitRule,
    PrincipalRule,
    SequenceRule,
    TargetsRule,
    TimeWindowRule,
)
from mcp_guard.testing import access_token, call_request
from support import Clock

pytestmark = pytest.mark.anyio

READ = ToolSpec("read_secret", scopes=frozenset({"secrets:read"}), risk=Risk.ADMIN, tags=frozenset({"secrets"}))
MAIL = ToolSpec("send_mail", scopes=frozenset({"mail:send"}), risk=Risk.WRITE, tags=frozenset({"egress"}))
FETCH = ToolSpec("fetch", tags=frozenset({"egress"}))
MONDAY_NOON = datetime(2026, 11, 23, 11, 0, tzinfo=UTC).timestamp()  # 12:00 in Berlin


def decide(policy: RulePolicy, tool: ToolSpec, arguments: dict[str, Any] | None = None, **kw: Any) -> Decision:
    """The policy's decision, counted (as the guard counts it) when it allows."""
    kw.setdefault("scopes", " ".join(sorted(tool.scopes)) or "")
    request = call_request(tool, arguments, **kw)
    decision = policy.decide(request)
    for hook in decision.on_allow if decision.allowed else ():
        hook.on_allow(request)
    return decision


def test_principal_rules_allow_or_deny_by_issuer_subject_client_and_claims() -> None:
    policy = RulePolicy(
        [
            PrincipalRule("ops-only", tools=frozenset({"read_secret"}), claims={"groups": frozenset({"ops"})}),
            PrincipalRule("no-bots", effect="deny", client_ids=frozenset({"bot"})),
        ]
    )
    allowed = decide(policy, READ, claims={"groups": ["dev", "ops"]})
    assert allowed.allowed and allowed.rule_ids == ("scopes.required", "ops-only", "no-bots")
    for claims in ({"groups": ["dev"]}, {"groups": "dev"}, {}, {"groups": [1, None]}):
        refused = decide(policy, READ, claims=claims)
        assert refused.reason.code == ReasonCode.PRINCIPAL_NOT_ALLOWED and refused.rule_ids == ("ops-only",)
    assert decide(policy, READ, claims={"groups": "ops"}).allowed
    bot = decide(policy, MAIL, client_id="bot")
    assert bot.rule_ids == ("no-bots",) and "send_mail" in bot.reason.message
    assert not policy.visible(call_request(MAIL, client_id="bot", scopes="mail:send").principal, MAIL)
    assert policy.visible(call_request(MAIL, scopes="mail:send").principal, MAIL)


def test_a_principal_rule_that_names_no_caller_is_refused() -> None:
    """An allow rule with nothing to match would admit every caller, and a claim with no value
    would match none: both are mistakes (a list that came out empty), refused when built."""
    with pytest.raises(ValueError, match="names none: it would admit every caller"):
        PrincipalRule("admins", subjects=frozenset())
    with pytest.raises(ValueError, match="claim 'groups' lists no value"):
        PrincipalRule("no-suspended", effect="deny", claims={"groups": frozenset()})
    everyone = RulePolicy([PrincipalRule("closed", effect="deny")])
    assert not everyone.decide(call_request(FETCH, subject="alice")).allowed


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda: PrincipalRule("r", subjects="alice-admin"), "subjects"),  # would admit "alice"
        (lambda: PrincipalRule("r", issuers="https://idp"), "issuers"),
        (lambda: PrincipalRule("r", client_ids="bot"), "client_ids"),
        (lambda: PrincipalRule("r", claims={"groups": "platform-admins"}), "claim 'groups'"),
        (lambda: PrincipalRule("r", effect="deny", tools="send_mail"), "tools"),  # would select no tool
        (lambda: SequenceRule("r", tags="egress", after_tools=["read_secret"]), "tags"),
        (lambda: SequenceRule("r", after_tags="secrets"), "after_tags"),
        (lambda: SequenceRule("r", after_tools="read_secret"), "after_tools"),
        (lambda: DelegationRule("r", mode="require", actors="trusted-bot"), "actors"),
        (lambda: TimeWindowRule("r", days="mon"), "days"),
    ],
)
def test_one_string_where_a_set_is_meant_is_refused(build: Any, setting: str) -> None:
    """A string would be read as its characters or tested by substring, widening or voiding the rule."""
    with pytest.raises(ValueError, match=f"rule 'r': {setting} must be a collection of values, not one string"):
        build()


def test_rules_hold_the_collections_they_are_given_as_sets() -> None:
    rule = PrincipalRule("r", subjects=["alice", "bob"], claims={"groups": ("ops",)}, tools=["fetch"])
    assert rule.subjects == frozenset({"alice", "bob"}) and rule.tools == frozenset({"fetch"})
    assert rule.claims == {"groups": frozenset({"ops"})}
    assert SequenceRule("s", after_tags=["secrets"]).after_tags == frozenset({"secrets"})
    assert DelegationRule("d", actors=("bot",)).actors == frozenset({"bot"})
    policy = RulePolicy([rule])
    assert policy.decide(call_request(FETCH, subject="bob", claims={"groups": "ops"})).allowed
    assert not policy.decide(call_request(FETCH, subject="ali", claims={"groups": "ops"})).allowed


def test_required_scopes_come_first_and_trim_the_grant() -> None:
    policy = RulePolicy([PrincipalRule("anyone", effect="deny", subjects=frozenset({"mallory"}))])
    missing = decide(policy, MAIL, scopes="mail:read")
    assert missing.reason.code == ReasonCode.INSUFFICIENT_SCOPE and missing.missing_scopes == {"mail:send"}
    trimmed = decide(policy, MAIL, scopes="mail:send admin")
    assert trimmed.outcome == "trimmed" and trimmed.approved_scopes == {"mail:send"}


def test_argument_rules_check_every_constraint(tmp_path: Path) -> None:
    inside = tmp_path / "work"
    inside.mkdir()
    (inside / "link").symlink_to(tmp_path)
    rule = ArgumentRule(
        "paths",
        constraints=(
            ArgumentConstraint("path", type="string", required=True, path_roots=(str(inside),)),
            ArgumentConstraint("limit", type="integer", minimum=1, maximum=100),
        ),
    )
    policy = RulePolicy([rule])
    tool = ToolSpec("read_file")
    assert decide(policy, tool, {"path": str(inside / "a.txt"), "limit": 5}).allowed
    for arguments in (
        {"path": str(inside / ".." / "escape")},
        {"path": str(inside / "link" / "x")},
        {"path": str(inside / "a\x00b")},
        {"path": str(inside).replace("/", "%2f")},
        {"path": str(inside / "a"), "limit": 1000},
        {"path": str(inside / "a"), "limit": True},
        {},
        {"path": "x" * 10_000_000},
    ):
        refused = decide(policy, tool, arguments)
        assert refused.reason.code == ReasonCode.ARGUMENT_REJECTED, arguments
        assert refused.rule_ids == ("paths",) and len(refused.reason.message) < 400


def test_sequence_rules_refuse_egress_after_secrets() -> None:
    policy = RulePolicy([SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tags={"secrets"})])
    assert decide(policy, MAIL).allowed
    refused = decide(policy, MAIL, earlier=[READ])
    assert refused.reason.code == ReasonCode.SEQUENCE_FORBIDDEN and "secrets" in refused.reason.message
    assert decide(policy, READ, earlier=[READ]).allowed  # the rule selects egress tools only
    by_name = RulePolicy([SequenceRule("after-read", tools=frozenset({"fetch"}), after_tools={"read_secret"})])
    assert not decide(by_name, FETCH, earlier=[READ]).allowed


def test_delegation_rules_bound_actors_and_depth() -> None:
    policy = RulePolicy([DelegationRule("agents", mode="require", actors=frozenset({"agent-a"}), max_depth=2)])
    assert decide(policy, FETCH).reason.code == ReasonCode.DELEGATION_REQUIRED
    assert decide(policy, FETCH, actor_chain=["agent-a", "agent-b"]).allowed
    assert decide(policy, FETCH, actor_chain=["agent-b"]).reason.code == ReasonCode.ACTOR_NOT_ALLOWED
    deep = decide(policy, FETCH, actor_chain=["agent-a", "x", "y"])
    assert deep.reason.code == ReasonCode.DELEGATION_TOO_DEEP
    forbid = RulePolicy([DelegationRule("own", mode="forbid")])
    assert decide(forbid, FETCH, actor_chain=["a"]).reason.code == ReasonCode.DELEGATION_FORBIDDEN
    with pytest.raises(ValueError, match="contradictory"):
        DelegationRule("x", mode="forbid", actors=frozenset({"a"}))


def test_time_windows_follow_the_local_clock() -> None:
    rule = TimeWindowRule(
        "office", days=frozenset({"mon", "tue", "wed", "thu", "fri"}), start=_t("08:00"), end=_t("18:00")
    )
    policy = RulePolicy([rule])
    berlin = RulePolicy([TimeWindowRule("office", start=_t("08:00"), end=_t("12:30"), timezone="Europe/Berlin")])
    assert decide(policy, FETCH, at=MONDAY_NOON).allowed
    assert decide(berlin, FETCH, at=MONDAY_NOON).allowed
    assert decide(berlin, FETCH, at=MONDAY_NOON + 3600).reason.code == ReasonCode.OUTSIDE_TIME_WINDOW
    saturday = decide(policy, FETCH, at=MONDAY_NOON - 2 * 86400)
    assert saturday.reason.code == ReasonCode.OUTSIDE_TIME_WINDOW and "mon,tue,wed,thu,fri 08:00-18:00" in (
        saturday.reason.message
    )
    night = RulePolicy([TimeWindowRule("night", days=frozenset({"fri"}), start=_t("22:00"), end=_t("02:00"))])
    friday_late = datetime(2026, 11, 27, 23, 0, tzinfo=UTC).timestamp()
    assert decide(night, FETCH, at=friday_late).allowed
    assert decide(night, FETCH, at=friday_late + 2 * 3600).allowed  # Saturday 01:00 still counts for Friday
    assert not decide(night, FETCH, at=friday_late + 4 * 3600).allowed
    assert not decide(night, FETCH, at=friday_late - 86400).allowed
    weekdays = RulePolicy([TimeWindowRule("weekdays", days=frozenset({"mon"}))])  # the whole of each day
    assert decide(weekdays, FETCH, at=MONDAY_NOON + 13 * 3600 - 0.5).allowed  # Monday 23:59:59.5 UTC
    last_moment = datetime(2026, 11, 23, 23, 59, 59, 999999, tzinfo=UTC).timestamp()
    assert datetime.fromtimestamp(last_moment, UTC).microsecond == 999999
    assert decide(weekdays, FETCH, at=last_moment).allowed  # the window runs to midnight
    tuesday = decide(weekdays, FETCH, at=MONDAY_NOON + 13 * 3600)
    assert "mon 00:00-24:00 UTC" in tuesday.reason.message
    with pytest.raises(ValueError, match="empty"):
        TimeWindowRule("x", start=_t("09:00"), end=_t("09:00"))
    with pytest.raises(ValueError, match="unknown timezone"):
        TimeWindowRule("x", start=_t("09:00"), end=_t("10:00"), timezone="Mars/Olympus")


def _t(text: str) -> Any:
    from datetime import time

    return time.fromisoformat(text)


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())  # the test tokens expire an hour from now


def guarded(policy: Any, audit: MemoryAuditSink, clock: Clock, **options: Any) -> Guard:
    guard = Guard(policy=policy, audit=[audit], clock=clock, **options)
    for spec in (READ, MAIL, FETCH):
        guard.declare(spec)
    return guard


async def test_sequence_history_comes_from_the_session(audit: MemoryAuditSink, clock: Clock) -> None:
    guard = guarded(
        RulePolicy([SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tags={"secrets"})]),
        audit,
        clock,
    )
    token = access_token("alice", "secrets:read mail:send", sid="s1")
    assert (await guard.authorize("send_mail", {}, token)).allowed
    assert (await guard.authorize("read_secret", {}, token)).allowed
    refused = (await guard.authorize("fetch", {}, token)).decision
    assert refused.reason.code == ReasonCode.SEQUENCE_FORBIDDEN
    other = access_token("alice", "secrets:read mail:send", sid="s2")  # another session starts clean
    assert (await guard.authorize("fetch", {}, other)).allowed


async def test_a_tag_one_member_declares_counts_for_every_member(audit: MemoryAuditSink, clock: Clock) -> None:
    """The session's history records a tool as the whole policy declares it, so a sequence
    rule in one member follows the tags another member gives the tool."""
    plain = ToolSpec("lookup")
    tagging = RulePolicy(tools=[ToolSpec("lookup", tags=frozenset({"secrets"})), MAIL], id="tags")
    sequence = RulePolicy(
        [SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tags={"secrets"})], id="rules"
    )
    guard = Guard(policy=AllOf(tagging, sequence), audit=[audit], clock=clock)
    guard.declare(plain)
    guard.declare(MAIL)
    assert guard.as_policy_sees(plain).tags == {"secrets"}
    assert guard.as_policy_sees(plain) is guard.as_policy_sees(plain)  # worked out once
    token = access_token("alice", "mail:send", sid="s1")
    assert (await guard.authorize("send_mail", {}, token)).allowed
    assert (await guard.authorize("lookup", {}, token)).allowed
    refused = (await guard.authorize("send_mail", {}, token)).decision
    assert refused.reason.code == ReasonCode.SEQUENCE_FORBIDDEN and refused.rule_ids == ("no-egress-after-secrets",)


async def test_a_sequence_follows_the_tools_its_policy_tags_even_where_the_guard_cannot_see_them(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    """Wrapped in a policy without ``merged``, the rule policy's own tags never reach the
    session's history; its sequence rule follows those tools by name all the same."""

    class Logged:
        def __init__(self, inner: RulePolicy) -> None:
            self.inner, self.id, self.version = inner, inner.id, inner.version

        def decide(self, request: Any) -> Decision:
            return self.inner.decide(request)

        def visible(self, principal: Any, tool: ToolSpec) -> bool:
            return self.inner.visible(principal, tool)

    tagging = [ToolSpec("read_secret", tags=frozenset({"secrets"})), ToolSpec("send_mail")]
    rule = SequenceRule("no-egress-after-secrets", tools=frozenset({"send_mail"}), after_tags={"secrets"})
    guard = Guard(policy=Logged(RulePolicy([rule], tools=tagging)), audit=[audit], clock=clock)
    guard.declare(ToolSpec("read_secret"))
    guard.declare(ToolSpec("send_mail"))
    token = access_token("alice", "", sid="s1")
    assert (await guard.authorize("read_secret", {}, token)).allowed
    refused = (await guard.authorize("send_mail", {}, token)).decision
    assert refused.reason.code == ReasonCode.SEQUENCE_FORBIDDEN


async def test_alternatives_share_what_describes_a_tool_but_not_what_it_requires(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    strict = RulePolicy(tools=[ToolSpec("report", scopes=frozenset({"reports:admin"}), risk=Risk.ADMIN)], id="strict")
    report = ToolSpec("report", scopes=frozenset({"reports:read"}))
    guard = Guard(policy=AnyOf(strict, ScopePolicy(id="lenient")), audit=[audit], clock=clock)
    guard.declare(report)
    seen = guard.as_policy_sees(report)
    assert (seen.scopes, seen.risk) == ({"reports:read"}, Risk.ADMIN) and guard.as_policy_sees(report) is seen
    token = access_token("alice", "reports:read", sid="s1")
    assert await guard.visible_tools(token) == {"report"}
    allowed = (await guard.authorize("report", {}, token)).decision
    assert allowed.allowed and allowed.policy_id == "any_of(strict, lenient)"
    both = Guard(policy=AllOf(strict, ScopePolicy(id="lenient")), audit=[audit], clock=clock)
    both.declare(report)
    assert both.as_policy_sees(report).scopes == {"reports:read", "reports:admin"}  # every member must allow
    assert (await both.authorize("report", {}, token)).decision.missing_scopes == {"reports:admin"}


def test_a_declaration_that_adds_nothing_gives_back_the_tool_itself() -> None:
    report = ToolSpec("report", scopes=frozenset({"reports:read"}))
    policy = RulePolicy(tools=[ToolSpec("report", scopes=frozenset({"reports:read"}))])
    assert policy.merged(report) is report
    wider = RulePolicy(tools=[ToolSpec("report", tags=frozenset({"finance"}))])
    merged = wider.merged(report)
    assert merged.tags == {"finance"} and wider.merged(report) is merged and wider.merged(merged) is merged


async def test_the_guards_risk_weighs_a_tool_at_the_level_its_policy_declares(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    lookup = ToolSpec("lookup")  # read, by its decorator
    policy = RulePolicy(tools=[ToolSpec("lookup", risk=Risk.ADMIN)])
    guard = Guard(policy=policy, audit=[audit], clock=clock, risk=RiskSettings(threshold=50, admin=20))
    guard.declare(lookup)
    token = access_token("alice", "", sid="s1")
    codes = [(await guard.authorize("lookup", {}, token)).decision.reason.code for _ in range(3)]
    assert codes == ["allowed", "allowed", ReasonCode.SESSION_RISK_EXCEEDED]


async def test_denied_calls_do_not_enter_the_history(audit: MemoryAuditSink, clock: Clock) -> None:
    guard = guarded(
        RulePolicy([SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tags={"secrets"})]),
        audit,
        clock,
    )
    token = access_token("alice", "mail:send", sid="s1")
    assert not (await guard.authorize("read_secret", {}, token)).allowed  # lacks secrets:read
    assert (await guard.authorize("send_mail", {}, token)).allowed


async def test_targets_are_counted_across_the_session(audit: MemoryAuditSink, clock: Clock) -> None:
    guard = guarded(
        RulePolicy([TargetsRule("recipients", tools=frozenset({"send_mail"}), argument="to", max_targets=2)]),
        audit,
        clock,
    )
    token = access_token("alice", "mail:send", sid="s1")
    for to in ("a@x.test", ["a@x.test", "b@x.test"], "b@x.test"):
        assert (await guard.authorize("send_mail", {"to": to}, token)).allowed, to
    refused = (await guard.authorize("send_mail", {"to": "c@x.test"}, token)).decision
    assert refused.reason.code == ReasonCode.TOO_MANY_TARGETS
    assert (await guard.authorize("send_mail", {"to": "a@x.test"}, token)).allowed
    for bad in (5, ["a@x.test", 5], [""], ["x" * 600]):
        assert (await guard.authorize("send_mail", {"to": bad}, token)).decision.reason.code == (
            ReasonCode.ARGUMENT_REJECTED
        )
    lots = [f"{n}@x.test" for n in range(5000)]
    assert not (await guard.authorize("send_mail", {"to": lots}, token)).allowed


async def test_targets_can_sit_inside_an_object_argument(audit: MemoryAuditSink, clock: Clock) -> None:
    rule = TargetsRule("recipients", tools=frozenset({"send_mail"}), argument="message.to", max_targets=1)
    guard = guarded(RulePolicy([rule]), audit, clock)
    token = access_token("alice", "mail:send", sid="nested")
    assert (await guard.authorize("send_mail", {"message": {"to": "a@x.test"}}, token)).allowed
    many = {"message": {"to": ["a@x.test", "b@x.test", "c@x.test"]}}
    assert (await guard.authorize("send_mail", many, token)).decision.reason.code == ReasonCode.TOO_MANY_TARGETS
    through_text = {"message": "to everyone"}  # a path through a string is refused, never taken as absent
    assert (await guard.authorize("send_mail", through_text, token)).decision.reason.code == (
        ReasonCode.ARGUMENT_REJECTED
    )
    assert (await guard.authorize("send_mail", {}, token)).allowed  # no message names no target
    with pytest.raises(ValueError, match="empty segment"):
        TargetsRule("bad", argument="message..to")


async def test_rate_limits_and_budgets_count_only_allowed_calls(audit: MemoryAuditSink, clock: Clock) -> None:
    policy = RulePolicy(
        [
            PrincipalRule("no-mallory", effect="deny", subjects=frozenset({"mallory"})),
            LimitRule("mail-rate", tools=frozenset({"send_mail"}), per="principal", calls=2, window=60),
            LimitRule("fetch-budget", tools=frozenset({"fetch"}), per="session", calls=3),
        ]
    )
    guard = guarded(policy, audit, clock)
    alice = access_token("alice", "mail:send", sid="s1")
    assert (await guard.authorize("send_mail", {}, alice)).allowed
    assert (await guard.authorize("send_mail", {}, access_token("alice", "mail:send", sid="s2"))).allowed
    limited = (await guard.authorize("send_mail", {}, alice)).decision
    assert limited.reason.code == ReasonCode.RATE_LIMITED and "2 calls per 60 s per principal" in limited.reason.message
    assert (await guard.authorize("send_mail", {}, access_token("bob", "mail:send"))).allowed
    for _ in range(3):
        assert not (await guard.authorize("send_mail", {}, access_token("mallory", "mail:send"))).allowed
    clock.advance(61)
    assert (await guard.authorize("send_mail", {}, alice)).allowed
    for _ in range(3):
        assert (await guard.authorize("fetch", {}, alice)).allowed
    assert (await guard.authorize("fetch", {}, alice)).decision.reason.code == ReasonCode.BUDGET_EXHAUSTED
    with pytest.raises(ValueError, match="needs a window"):
        LimitRule("x", per="principal", calls=1)
    with pytest.raises(ValueError, match="at least 1"):
        LimitRule("x", calls=0)


async def test_a_limit_per_subject_counts_a_user_across_every_client(audit: MemoryAuditSink, clock: Clock) -> None:
    per = {
        per: LimitRule(f"{per}-rate", tools=frozenset({"send_mail"}), per=per, calls=2, window=60)
        for per in ("subject", "principal")
    }
    counts = {}
    for name, rule in per.items():
        guard = guarded(RulePolicy([rule]), audit, clock)
        calls = [access_token("mallory", "mail:send", client_id=f"registered-{n}") for n in range(5)]
        counts[name] = [(await guard.authorize("send_mail", {}, token)).allowed for token in calls].count(True)
    assert counts == {"subject": 2, "principal": 5}  # each client registration its own count, per principal


@pytest.mark.parametrize(
    "window", [True, False, 0, -1, float("inf"), float("nan"), pytest.param(10**400, id="huge"), "60"]
)
def test_a_limit_window_must_be_a_positive_number_of_seconds(window: Any) -> None:
    """``True`` would otherwise be a one-second window, since Python counts it as 1."""
    with pytest.raises(ValueError, match="window must be a positive number of seconds"):
        LimitRule("r", per="tool", calls=1, window=window)


def test_a_full_counter_refuses_new_callers_rather_than_forgetting() -> None:
    from mcp_guard.policy import Counters

    counters = Counters(max_keys=2)
    policy = RulePolicy([LimitRule("rate", per="principal", calls=5, window=60, counters=counters)])
    assert decide(policy, FETCH, subject="a", at=0).allowed
    assert decide(policy, FETCH, subject="b", at=0).allowed
    assert decide(policy, FETCH, subject="c", at=0).reason.code == ReasonCode.RATE_LIMITED
    assert decide(policy, FETCH, subject="a", at=1).allowed
    assert decide(policy, FETCH, subject="c", at=61).allowed  # the old windows ended and were swept
    short = Counters(max_keys=2)
    brief = RulePolicy([LimitRule("rate", per="principal", calls=5, window=1, counters=short)])
    assert decide(brief, FETCH, subject="a", at=0).allowed and decide(brief, FETCH, subject="b", at=0).allowed
    assert decide(brief, FETCH, subject="c", at=0.5).reason.code == ReasonCode.RATE_LIMITED
    assert decide(brief, FETCH, subject="c", at=2).allowed  # full, but every window has ended: swept at once


def test_ended_windows_leave_soon_after_without_the_counters_filling_up() -> None:
    """Ordinary traffic (every session or principal ever seen) kept its ended windows until
    the counters were full: a million keys, about 280 MB per rule."""
    from mcp_guard.policy import Counters

    counters = Counters()
    policy = RulePolicy([LimitRule("rate", per="principal", calls=5, window=10, counters=counters)])
    for index in range(1000):
        assert decide(policy, FETCH, subject=f"caller-{index}", at=0).allowed
    assert len(counters) == 1000
    assert decide(policy, FETCH, subject="later", at=70).allowed  # past the next sweep
    assert len(counters) == 1


async def test_crossing_the_risk_threshold_revokes_the_session(audit: MemoryAuditSink, clock: Clock) -> None:
    risk = RiskSettings(threshold=50, denial=15, admin=25)
    guard = guarded(
        RulePolicy(
            [PrincipalRule("ops", tools=frozenset({"read_secret"}), claims={"groups": frozenset({"ops"})})], risk=risk
        ),
        audit,
        clock,
    )
    ops = access_token("alice", "secrets:read", sid="s1", groups=["ops"])
    assert (await guard.authorize("read_secret", {}, ops)).allowed  # 25
    assert not (await guard.authorize("missing", {}, ops)).allowed  # 40: probing for tools counts
    refused = (await guard.authorize("read_secret", {}, ops)).decision  # would be 65
    assert refused.reason.code == ReasonCode.SESSION_RISK_EXCEEDED
    revoked = [event for event in audit.events if event.kind == EventKind.SESSION_REVOKED]
    assert len(revoked) == 1 and "risk score 65 reached threshold 50" in (revoked[0].detail or "")
    assert revoked[0].subject == "alice"
    after = (await guard.authorize("send_mail", {}, ops)).decision
    assert after.reason.code == ReasonCode.TOKEN_REVOKED  # and its token, so no new session starts afresh
    [token_revoked] = [event for event in audit.events if event.kind == EventKind.ACCESS_REVOKED]
    assert "risk threshold" in (token_revoked.detail or "") and token_revoked.subject == "alice"
    assert (
        await guard.authorize("read_secret", {}, access_token("alice", "secrets:read", sid="s2", groups=["ops"]))
    ).allowed


async def test_denials_alone_can_end_a_session(audit: MemoryAuditSink, clock: Clock) -> None:
    guard = guarded(RulePolicy(), audit, clock, risk=RiskSettings(threshold=30, denial=10))
    token = access_token("mallory", "", sid="probe")
    codes = [(await guard.authorize("read_secret", {}, token)).decision.reason.code for _ in range(4)]
    assert codes == [ReasonCode.INSUFFICIENT_SCOPE] * 3 + [ReasonCode.TOKEN_REVOKED]
    assert guard.risk is not None and guard.risk.threshold == 30


async def test_crossing_the_risk_threshold_revokes_every_token_bound_to_the_session(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    guard = guarded(RulePolicy(), audit, clock, risk=RiskSettings(threshold=30, denial=10))
    first, refreshed = access_token("mallory", "", jti="T1"), access_token("mallory", "", jti="T2")
    probe = {"transport_session": "conn-1"}  # legacy: each connection is a session
    codes = [(await guard.authorize("read_secret", {}, token, **probe)).decision.reason.code for token in [first] * 2]
    codes.append((await guard.authorize("read_secret", {}, refreshed, **probe)).decision.reason.code)
    assert codes == [ReasonCode.INSUFFICIENT_SCOPE] * 3  # the third denial reached the threshold
    for token, connection in ((first, "conn-2"), (refreshed, "conn-3")):  # no new connection starts afresh
        again = (await guard.authorize("read_secret", {}, token, transport_session=connection)).decision
        assert again.reason.code == ReasonCode.TOKEN_REVOKED
    revoked = [event.detail or "" for event in audit.events if event.kind == EventKind.ACCESS_REVOKED]
    assert [detail.split()[0] for detail in revoked] == ["token_id='T2'", "token_id='T1'"]


async def test_a_token_revoked_for_risk_stays_revoked_at_the_last_instant_it_is_accepted(
    audit: MemoryAuditSink,
) -> None:
    clock = Clock(1_900_000_000.0)  # a whole-second clock reads that instant for a second
    guard = guarded(RulePolicy(), audit, clock, risk=RiskSettings(threshold=10, denial=10), leeway=30)
    token = access_token("mallory", "")
    token.expires_at = int(clock.now) + 5 * 3600  # outlives the session's 4 h
    denied = await guard.authorize("read_secret", {}, token)
    assert denied.decision.reason.code == ReasonCode.INSUFFICIENT_SCOPE  # and the threshold is reached
    for connection, at in (("conn-2", token.expires_at + 29), ("conn-3", token.expires_at + 30)):
        clock.now = at  # the token is accepted up to exp + leeway, that instant included
        again = await guard.authorize("fetch", {}, token, transport_session=connection)
        assert again.decision.reason.code == ReasonCode.TOKEN_REVOKED
    clock.now = token.expires_at + 31
    expired = await guard.authorize("fetch", {}, token, transport_session="conn-4")
    assert expired.decision.reason.code == ReasonCode.TOKEN_EXPIRED


def test_risk_settings_refuse_nonsense() -> None:
    for bad in ({"threshold": 0}, {"threshold": float("inf")}, {"threshold": 5, "denial": -1}):
        with pytest.raises(ValueError, match="risk"):
            RiskSettings(**bad)
    settings = RiskSettings(threshold=10, tools={"fetch": 7})
    allowed = Decision(allowed=True)
    assert settings.weight(allowed, FETCH) == 7
    assert settings.weight(allowed, READ) == 20  # admin
    assert settings.weight(Decision(allowed=False), None) == 10


def test_rules_are_indexed_by_tool_and_tag() -> None:
    rules = [PrincipalRule(f"r{n}", tools=frozenset({f"tool_{n}"}), subjects=frozenset({"alice"})) for n in range(5000)]
    rules.append(SequenceRule("seq", tags=frozenset({"egress"}), after_tags={"secrets"}))
    rules.append(PrincipalRule("everyone", effect="deny", subjects=frozenset({"mallory"})))
    policy = RulePolicy(rules)
    assert [rule.id for rule in policy.applicable(ToolSpec("tool_42"))] == ["r42", "everyone"]
    assert [rule.id for rule in policy.applicable(MAIL)] == ["seq", "everyone"]
    assert decide(policy, ToolSpec("tool_42"), subject="alice").rule_ids == ("scopes.required", "r42", "everyone")


def test_unlisted_tools_are_denied_when_the_policy_declares_tools() -> None:
    policy = RulePolicy(tools=[ToolSpec("send_mail", scopes=frozenset({"mail:send", "mail:audit"}))])
    assert policy.unlisted == "deny"
    refused = decide(policy, FETCH)
    assert refused.reason.code == ReasonCode.NO_APPLICABLE_RULE and refused.rule_ids == ("tools.listed",)
    assert not policy.visible(call_request(FETCH).principal, FETCH)
    needs_both = decide(policy, MAIL, scopes="mail:send")
    assert needs_both.missing_scopes == {"mail:audit"}  # the policy's declaration adds to the decorator's
    assert decide(policy, MAIL, scopes="mail:send mail:audit").allowed
    assert RulePolicy().unlisted == "allow"


def test_explain_reports_every_rule_without_counting() -> None:
    limit = LimitRule("once", per="session", calls=1)
    policy = RulePolicy(
        [
            PrincipalRule("ops", claims={"groups": frozenset({"ops"})}),
            limit,
            SequenceRule("seq", after_tags={"secrets"}),
        ]
    )
    request = call_request(FETCH, earlier=[READ])
    decision, outcomes = policy.explain(request)
    assert not decision.allowed and decision.rule_ids == ("ops", "seq")
    assert [(o.rule_id, o.kind, o.passed) for o in outcomes] == [
        ("scopes.required", "scopes", True),
        ("ops", "principal", False),
        ("once", "limit", True),
        ("seq", "sequence", False),
    ]
    assert len(limit.counters) == 0
    assert policy.explain(call_request(FETCH, claims={"groups": ["ops"]}))[0].allowed
    assert len(limit.counters) == 0


def test_duplicate_rule_ids_and_tools_are_refused() -> None:
    with pytest.raises(ValueError, match="used twice"):
        RulePolicy([PrincipalRule("a", subjects=frozenset({"x"})), PrincipalRule("a", subjects=frozenset({"y"}))])
    with pytest.raises(ValueError, match="declared twice"):
        RulePolicy(tools=[FETCH, FETCH])


async def test_hostile_arguments_are_refused_without_hanging(audit: MemoryAuditSink, clock: Clock) -> None:
    rule = ArgumentRule(
        "fetch-args",
        tools=frozenset({"fetch"}),
        constraints=(
            ArgumentConstraint("url", type="string", required=True, hosts=("docs.example.com",)),
            ArgumentConstraint("options", type="object", max_bytes=4096),
            ArgumentConstraint("query", pattern="[a-z ]{1,100}"),
        ),
    )
    guard = guarded(RulePolicy([rule]), audit, clock)
    token = access_token("alice", "")
    deep: Any = {}
    for _ in range(100_000):
        deep = {"a": deep}
    ok = "https://docs.example.com/x"
    for arguments in (
        {"url": "https://docs.\u0435xample.com/x"},  # a Cyrillic e
        {"url": "https://docs.example.com.evil.test/x"},
        {"url": "https://docs.example.com@evil.test/x"},
        {"url": "https://docs.example.com\uff0fx"},
        {"url": ok, "options": deep},
        {"url": ok, "options": {"blob": "x" * 10_000_000}},
        {"url": ok, "options": {"items": list(range(1_000_000))}},
        {"url": ok, "query": "a" * 50_000 + "!"},
        {"url": ok, "query": float("nan")},
    ):
        decision = (await guard.authorize("fetch", arguments, token)).decision
        assert decision.reason.code == ReasonCode.ARGUMENT_REJECTED, arguments.keys()
    assert (await guard.authorize("fetch", {"url": ok, "options": {"depth": 2}, "query": "hello"}, token)).allowed


async def test_only_calls_finally_allowed_count_against_limits(audit: MemoryAuditSink, clock: Clock) -> None:
    from mcp_guard import AllOf

    gate = {"open": False}

    def gatekeeper(request: Any) -> Decision:
        return Decision(allowed=gate["open"], requested_scopes=request.principal.scopes, rule_ids=("gate",))

    budget = LimitRule("budget", per="session", calls=3)
    risk = RiskSettings(threshold=40, denial=0, write=15)
    guard = guarded(AllOf(RulePolicy([budget]), gatekeeper), audit, clock, risk=risk)
    token = access_token("alice", "mail:send", sid="s1")
    for _ in range(3):
        assert not (await guard.authorize("send_mail", {}, token)).allowed  # another policy refused
    assert len(budget.counters) == 0
    gate["open"] = True
    assert (await guard.authorize("send_mail", {}, token)).allowed  # risk 15
    assert (await guard.authorize("send_mail", {}, token)).allowed  # risk 30
    refused = (await guard.authorize("send_mail", {}, token)).decision  # the budget allows; risk 45 does not
    assert refused.reason.code == ReasonCode.SESSION_RISK_EXCEEDED
    [opened] = [event for event in audit.events if event.kind == EventKind.SESSION_OPENED]
    assert budget.counters.used(("budget", opened.session_id), clock()) == 2


async def test_calls_decided_at_once_never_pass_a_limit_together(audit: MemoryAuditSink, clock: Clock) -> None:
    from mcp_guard import AllOf, ScopePolicy

    scopes = ScopePolicy()

    async def remote(request: Any) -> Decision:
        await anyio.sleep(0.01)  # every call passes the limit's check before any is counted
        return scopes.decide(request)

    limit = LimitRule("two", per="principal", calls=2, window=60)
    guard = guarded(AllOf(RulePolicy([limit]), remote), audit, clock)
    token = access_token("alice", "mail:send")
    codes: list[str] = []

    async def call() -> None:
        codes.append((await guard.authorize("send_mail", {}, token)).decision.reason.code)

    async with anyio.create_task_group() as tasks:
        for _ in range(6):
            tasks.start_soon(call)
    assert sorted(codes) == ["allowed"] * 2 + [ReasonCode.RATE_LIMITED] * 4
    refused = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED and e.outcome == "denied"]
    assert [e.reasons for e in refused] == [(ReasonCode.RATE_LIMITED,)] * 4  # recorded as the refusals they were
    principal = refused[0].principal
    assert principal is not None and limit.counters.used(("two", principal.binding), clock()) == 2


async def test_calls_decided_at_once_never_pass_a_targets_rule_together(audit: MemoryAuditSink, clock: Clock) -> None:
    from mcp_guard import ScopePolicy

    scopes = ScopePolicy()

    async def remote(request: Any) -> Decision:
        await anyio.sleep(0.01)  # every call passes the rule's check before any is recorded
        return scopes.decide(request)

    recipients = TargetsRule("recipients", tools=frozenset({"send_mail"}), argument="to", max_targets=2)
    guard = guarded(AllOf(RulePolicy([recipients]), remote), audit, clock)
    token = access_token("alice", "mail:send", sid="s1")
    codes: dict[str, str] = {}

    async def call(to: str) -> None:
        codes[to] = (await guard.authorize("send_mail", {"to": to}, token)).decision.reason.code

    async with anyio.create_task_group() as tasks:
        for n in range(5):
            tasks.start_soon(call, f"r{n}@example.com")
    allowed = sorted(to for to, code in codes.items() if code == "allowed")
    assert len(allowed) == 2 and sorted(codes.values()) == ["allowed"] * 2 + [ReasonCode.TOO_MANY_TARGETS] * 3
    session = await guard.sessions.get(audit.events[-1].session_id or "")
    assert session is not None and sorted(session.history.targets["recipients"]) == allowed
    assert (await guard.authorize("send_mail", {"to": allowed[0]}, token)).allowed  # a known target still passes


async def decided_at_once(guard: Guard, token: Any, *recipients: str) -> dict[str, str]:
    """Each recipient's call, all decided at once; what each one's decision said."""
    codes: dict[str, str] = {}

    async def call(to: str) -> None:
        codes[to] = (await guard.authorize("send_mail", {"to": to}, token)).decision.reason.code

    async with anyio.create_task_group() as tasks:
        for to in recipients:
            tasks.start_soon(call, to)
    return codes


def slow_scopes() -> Any:
    from mcp_guard import ScopePolicy

    scopes = ScopePolicy()

    async def remote(request: Any) -> Decision:
        await anyio.sleep(0.01)  # every call passes every check before any is counted
        return scopes.decide(request)

    return remote


async def two_mails_at_once(audit: MemoryAuditSink, clock: Clock, rules: list[Any]) -> tuple[Guard, Any, Any, Any]:
    """A guard with ``rules`` and a slow policy, after two mails to two recipients decided at
    once: the guard, the token, each recipient's reason code, and the session."""
    guard = guarded(AllOf(RulePolicy(rules), slow_scopes()), audit, clock)
    token = access_token("alice", "mail:send", sid="s1")
    codes = await decided_at_once(guard, token, "a@example.com", "b@example.com")
    session = await guard.sessions.get(audit.events[-1].session_id or "")
    assert session is not None
    return guard, token, codes, session


async def test_a_call_a_targets_rule_refuses_is_given_back_to_the_limit(audit: MemoryAuditSink, clock: Clock) -> None:
    budget = LimitRule("budget", tools=frozenset({"send_mail"}), per="session", calls=2)
    recipients = TargetsRule("recipients", tools=frozenset({"send_mail"}), argument="to", max_targets=1)
    guard, token, codes, session = await two_mails_at_once(audit, clock, [budget, recipients])
    assert sorted(codes.values()) == ["allowed", ReasonCode.TOO_MANY_TARGETS]
    [reached] = [to for to, code in codes.items() if code == "allowed"]
    assert budget.counters.used(("budget", session.id), clock()) == 1
    assert (await guard.authorize("send_mail", {"to": reached}, token)).allowed  # the budget's second call
    assert (await guard.authorize("send_mail", {"to": reached}, token)).decision.reason.code == "budget_exhausted"


async def test_a_call_a_limit_refuses_gives_back_its_targets(audit: MemoryAuditSink, clock: Clock) -> None:
    recipients = TargetsRule("recipients", tools=frozenset({"send_mail"}), argument="to", max_targets=2)
    once = LimitRule("once", tools=frozenset({"send_mail"}), per="session", calls=1, window=60)
    guard, token, codes, session = await two_mails_at_once(audit, clock, [recipients, once])
    assert sorted(codes.values()) == ["allowed", ReasonCode.RATE_LIMITED]
    assert session.history.targets["recipients"] == {to for to, code in codes.items() if code == "allowed"}
    clock.advance(61)
    assert (await guard.authorize("send_mail", {"to": "c@example.com"}, token)).allowed  # the second target


def test_a_give_back_never_touches_a_window_opened_since(clock: Clock) -> None:
    from mcp_guard.policy import Counters

    counters = Counters()
    first = counters.take("k", clock(), clock() + 10, limit=2)
    assert first is not None
    clock.advance(11)  # another call opens the next window
    assert counters.take("k", clock(), clock() + 10, limit=2) is not None
    counters.give_back("k", first)
    assert counters.used("k", clock()) == 1


def test_giving_back_survives_a_give_back_that_fails(caplog: pytest.LogCaptureFixture) -> None:
    from mcp_guard.errors import Refused
    from mcp_guard.model import tell_allowed

    given_back: list[str] = []

    class Hook:
        def __init__(self, name: str, answer: Any) -> None:
            self.name, self.answer = name, answer

        def on_allow(self, request: Any) -> Any:
            if self.answer == "refuse":
                raise Refused(ReasonCode.RATE_LIMITED)
            return self.answer

    def failing() -> None:
        raise RuntimeError("broken")

    hooks = [Hook("a", lambda: given_back.append("a")), Hook("b", failing), Hook("c", True), Hook("d", "refuse")]
    with pytest.raises(Refused):
        tell_allowed(hooks, call_request(MAIL))  # type: ignore[arg-type]
    assert given_back == ["a"] and "giving back" in caplog.text  # "c" answered no give-back it could run


def test_guards_sharing_a_policy_compile_each_tool_once_each(audit: MemoryAuditSink, clock: Clock) -> None:
    policy = RulePolicy([PrincipalRule("alice-only", subjects=frozenset({"alice"}))], tools=[MAIL])
    compiled = counting_compiles(policy)
    guards = [Guard(policy=policy, audit=[audit], clock=clock) for _ in range(3)]
    for guard in guards:  # each server declares its own spec of the tool
        guard.declare(ToolSpec("send_mail", scopes=frozenset({"mail:send"})))
    call_in_turn(guards, access_token("alice", "mail:send", sid="s1"))
    assert compiled == ["send_mail"] * 3


async def test_a_sequence_is_judged_again_once_the_call_is_finally_allowed(
    audit: MemoryAuditSink, clock: Clock
) -> None:
    from mcp_guard import ScopePolicy

    scopes = ScopePolicy()

    async def remote(request: Any) -> Decision:
        await anyio.sleep(0.2 if request.tool.name == "send_mail" else 0.01)  # the mail is decided last
        return scopes.decide(request)

    rule = SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tags={"secrets"})
    guard = guarded(AllOf(RulePolicy([rule]), remote), audit, clock)
    token = access_token("alice", "secrets:read mail:send", sid="s1")
    codes: dict[str, str] = {}

    async def call(tool: str) -> None:
        codes[tool] = (await guard.authorize(tool, {}, token)).decision.reason.code

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call, "send_mail")  # passes the rule: nothing secret has run yet
        await anyio.sleep(0.05)
        tasks.start_soon(call, "read_secret")  # runs while the mail is still being decided
    assert codes == {"read_secret": "allowed", "send_mail": ReasonCode.SEQUENCE_FORBIDDEN}


def test_guards_sharing_an_alternative_compile_each_tool_once_each(audit: MemoryAuditSink, clock: Clock) -> None:
    from mcp_guard import ScopePolicy

    file = RulePolicy(tools=[ToolSpec("send_mail", scopes=frozenset({"mail:audit"}), tags=frozenset({"egress"}))])
    compiled = counting_compiles(file)
    policy = AnyOf(file, ScopePolicy())
    guards = [Guard(policy=policy, audit=[audit], clock=clock) for _ in range(2)]
    for guard in guards:
        guard.declare(ToolSpec("send_mail", scopes=frozenset({"mail:send"})))
    call_in_turn(guards, access_token("alice", "mail:send mail:audit", sid="s1"))
    assert compiled == ["send_mail"] * 2


def counting_compiles(policy: RulePolicy) -> list[str]:
    """The names of the tools ``policy`` compiles its rules for, from now on."""
    compiled: list[str] = []
    applicable = policy.applicable
    policy.applicable = lambda tool: compiled.append(tool.name) or applicable(tool)  # type: ignore[method-assign]
    return compiled


def call_in_turn(guards: list[Guard], token: Any, rounds: int = 5) -> None:
    """Call ``send_mail`` through each guard in turn, ``rounds`` times over; every call is allowed."""

    async def calls() -> None:
        for _ in range(rounds):
            for guard in guards:
                assert (await guard.authorize("send_mail", {}, token)).allowed

    anyio.run(calls)


def test_rules_hear_of_an_allowed_call_judges_first_and_targets_last() -> None:
    """A target is taken only once every rule that could still refuse has agreed: given back
    later, it could undo a target another call, allowed meanwhile, relies on."""
    targets = TargetsRule("one-recipient", argument="to", max_targets=1)
    limit = LimitRule("twice", per="session", calls=2)
    sequence = SequenceRule("after-secrets", after_tags=frozenset({"secrets"}))
    policy = RulePolicy([targets, limit, sequence])  # written in the worst order
    decision = policy.decide(call_request(MAIL, {"to": "bob@example.test"}, scopes="mail:send"))
    assert decision.allowed and decision.on_allow == (sequence, limit, targets)
    both = AllOf(RulePolicy([targets]), RulePolicy([limit]))
    assert both.decide(call_request(MAIL, {"to": "bob@example.test"}, scopes="mail:send")).on_allow == (limit, targets)


def test_a_refusal_for_missing_scopes_lists_each_scope_on_its_own() -> None:
    tool = ToolSpec("write_file", scopes=frozenset({"files:write", "approval:granted"}))
    several = ScopePolicy().decide(call_request(tool, scopes="files:write"))
    assert several.reason.message == (
        "Tool 'write_file' requires scopes 'approval:granted', 'files:write'; missing 'approval:granted'. "
        "Request a token with these scopes."
    )
    one = ScopePolicy().decide(call_request(ToolSpec("read_file", scopes=frozenset({"files:read"}))))
    assert one.reason.message.startswith("Tool 'read_file' requires scope 'files:read'; missing 'files:read'.")


@pytest.mark.parametrize(
    "declared",
    [
        ToolSpec("wire", delegation="forbid"),
        ToolSpec("wire", delegation="require"),
        ToolSpec("wire", actors=frozenset({"bot"})),
        ToolSpec("wire", conceal=True),
        ToolSpec("wire", redact=frozenset({"iban"})),
    ],
)
def test_a_declaration_setting_what_a_policy_cannot_add_is_refused(declared: ToolSpec) -> None:
    with pytest.raises(ValueError, match="'wire'"):  # it was accepted, and a delegated call still allowed
        RulePolicy(tools=[declared])
