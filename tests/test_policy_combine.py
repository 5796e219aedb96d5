"""The policy protocol's answers (allow, deny, abstain; sync or async) and the combinators."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard import (
    AllOf,
    AnyOf,
    DenyOverrides,
    EventKind,
    FirstApplicable,
    Guard,
    MemoryAuditSink,
    Principal,
    ReasonCode,
    RulePolicy,
    ScopePolicy,
    ToolSpec,
    as_policy,
)
from mcp_guard.model import CallRequest, Decision, Reason
from mcp_guard.policy import Verdict
from mcp_guard.testing import access_token, call_request

pytestmark = pytest.mark.anyio

TOOL = ToolSpec("send", scopes=frozenset({"mail:send"}), optional_scopes=frozenset({"mail:read"}))


def allow(rule: str, *approved: str) -> Any:
    def policy(request: CallRequest) -> Verdict:
        return Decision(
            allowed=True,
            requested_scopes=request.principal.scopes,
            approved_scopes=frozenset(approved),
            rule_ids=(rule,),
            policy_id=rule,
        )

    policy.__name__ = rule
    return policy


def deny(rule: str, code: str = ReasonCode.POLICY_DENIED, missing: str = "") -> Any:
    def policy(request: CallRequest) -> Verdict:
        return Decision(
            allowed=False,
            requested_scopes=request.principal.scopes,
            missing_scopes=frozenset(missing.split()),
            reasons=(Reason.of(code, f"{rule} says no"),),
            rule_ids=(rule,),
            policy_id=rule,
        )

    policy.__name__ = rule
    return policy


def abstain(request: CallRequest) -> Verdict:
    return None


def later(policy: Any) -> Any:
    """The same answer, given asynchronously (as a remote engine would)."""

    async def remote(request: CallRequest) -> Verdict:
        result: Verdict = policy(request)
        return result

    remote.__name__ = f"remote-{policy.__name__}"
    return remote


def request() -> CallRequest:
    return call_request(TOOL, scopes="mail:send mail:read admin")


async def settle(verdict: Any) -> Verdict:
    return await verdict if hasattr(verdict, "__await__") else verdict  # type: ignore[no-any-return]


@pytest.mark.parametrize("wrap", [lambda p: p, later], ids=["sync", "async"])
async def test_all_of_needs_every_member_and_approves_the_intersection(wrap: Any) -> None:
    both = AllOf(wrap(allow("a", "mail:send", "mail:read")), wrap(allow("b", "mail:send")))
    decision = await settle(both.decide(request()))
    assert decision is not None and decision.allowed
    assert decision.approved_scopes == {"mail:send"}
    assert decision.rule_ids == ("a", "b") and decision.policy_id.startswith("all_of(")
    refused = await settle(AllOf(wrap(allow("a", "mail:send")), wrap(deny("no")), allow("never")).decide(request()))
    assert refused is not None and not refused.allowed and refused.rule_ids == ("no",)
    silent = await settle(AllOf(allow("a"), abstain).decide(request()))
    assert silent is not None and silent.reason.code == ReasonCode.NO_APPLICABLE_RULE
    assert "abstain" in silent.reason.message


async def test_any_of_takes_the_first_allow_or_reports_every_denial() -> None:
    first = AnyOf(deny("x"), allow("y", "mail:send"), allow("z", "mail:read")).decide(request())
    assert isinstance(first, Decision) and first.allowed and first.rule_ids == ("y",)
    assert first.approved_scopes == {"mail:send"}
    none = AnyOf(deny("x", missing="a"), abstain, deny("w", ReasonCode.RATE_LIMITED, missing="b")).decide(request())
    assert isinstance(none, Decision) and not none.allowed
    assert [reason.code for reason in none.reasons] == [ReasonCode.POLICY_DENIED, ReasonCode.RATE_LIMITED]
    assert none.rule_ids == ("x", "w") and none.missing_scopes == {"a", "b"}
    assert AnyOf(abstain, abstain).decide(request()) is None


async def test_first_applicable_passes_over_abstentions() -> None:
    decision = FirstApplicable(abstain, deny("d"), allow("a")).decide(request())
    assert isinstance(decision, Decision) and not decision.allowed and decision.rule_ids == ("d",)
    assert FirstApplicable(abstain, allow("a", "mail:send")).decide(request()).allowed  # type: ignore[union-attr]
    assert FirstApplicable(abstain).decide(request()) is None


@pytest.mark.parametrize("combine", [AllOf, AnyOf, FirstApplicable, DenyOverrides])
async def test_a_combination_keeps_the_obligations_of_the_members_that_allow(combine: Any) -> None:
    def approval(request: CallRequest) -> Verdict:
        return Decision(True, request.principal.scopes, frozenset({"mail:send"}), obligations=("needs_approval",))

    decision = await settle(combine(approval, allow("a", "mail:send")).decide(request()))
    assert decision is not None and decision.allowed and decision.obligations == ("needs_approval",)


@pytest.mark.parametrize("wrap", [lambda p: p, later], ids=["sync", "async"])
async def test_deny_overrides_asks_everyone_and_any_denial_wins(wrap: Any) -> None:
    asked: list[str] = []

    def spy(request: CallRequest) -> Verdict:
        asked.append("spy")
        return None

    decision = await settle(
        DenyOverrides(wrap(deny("d1")), wrap(allow("a", "mail:send")), spy, wrap(deny("d2"))).decide(request())
    )
    assert decision is not None and not decision.allowed
    assert decision.rule_ids == ("d1", "d2") and asked == ["spy"]
    allowed = await settle(DenyOverrides(abstain, wrap(allow("a", "mail:send"))).decide(request()))
    assert allowed is not None and allowed.allowed and allowed.approved_scopes == {"mail:send"}
    assert await settle(DenyOverrides(abstain, wrap(abstain)).decide(request())) is None


def test_combinations_nest_and_list_tools_sensibly() -> None:
    scopes = ScopePolicy()
    nested = AllOf(scopes, AnyOf(allow("a", "mail:send", "mail:read"), deny("b")))
    decision = nested.decide(request())
    assert isinstance(decision, Decision) and decision.allowed
    assert decision.approved_scopes == {"mail:send", "mail:read"}  # the scope policy trimmed "admin"
    assert decision.rule_ids == ("scopes.required", "a")
    principal = request().principal
    assert nested.visible(principal, TOOL)
    assert not AllOf(scopes, allow("a")).visible(Principal("i", "s", "c"), TOOL)
    assert AnyOf(scopes, allow("a")).visible(Principal("i", "s", "c"), TOOL)  # functions list every tool


async def test_first_applicable_lists_a_tool_only_as_the_member_that_decides_it_would() -> None:
    """A member that never abstains settles every call: a tool it refuses is not listed, and a
    concealed one stays concealed, though a later member would allow it."""
    strict = RulePolicy(tools=[ToolSpec("admin_reset", scopes=frozenset({"admin"}))], unlisted="allow")
    guard = Guard(policy=FirstApplicable(strict, allow("lenient")))
    guard.declare(ToolSpec("admin_reset"))
    guard.declare(ToolSpec("hidden", conceal=True, scopes=frozenset({"admin"})))
    guard.declare(ToolSpec("ping"))
    caller = access_token("bob", "notes:read")
    assert await guard.visible_tools(caller) == {"ping"}
    assert (await guard.authorize("admin_reset", {}, caller)).decision.reason.code == ReasonCode.INSUFFICIENT_SCOPE
    assert (await guard.authorize("hidden", {}, caller)).decision.reason.code == ReasonCode.TOOL_NOT_FOUND
    assert FirstApplicable(allow("a"), AnyOf(allow("b"))).abstains  # every member may abstain
    assert not FirstApplicable(allow("a"), strict).abstains and not AllOf(allow("a")).abstains


def test_a_combination_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AllOf()
    with pytest.raises(TypeError, match="not 42"):
        as_policy(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned str"):
        AllOf(lambda request: "yes").decide(request())  # type: ignore[arg-type, return-value]


async def guarded(policy: Any, audit: MemoryAuditSink) -> Guard:
    guard = Guard(policy=policy, audit=[audit])
    guard.declare(TOOL)
    return guard


async def test_the_guard_awaits_async_policies_and_denies_abstentions(audit: MemoryAuditSink) -> None:
    token = access_token("alice", "mail:send")
    guard = await guarded(AllOf(ScopePolicy(), later(allow("remote", "mail:send"))), audit)
    assert (await guard.authorize("send", {}, token)).allowed
    guard = await guarded(as_policy(abstain), audit)
    decision = (await guard.authorize("send", {}, token)).decision
    assert decision.reason.code == ReasonCode.NO_APPLICABLE_RULE and decision.policy_id == "abstain"

    async def confused(request: CallRequest) -> Any:
        return "allow"

    guard = await guarded(as_policy(confused), audit)
    decision = (await guard.authorize("send", {}, token)).decision
    assert decision.reason.code == ReasonCode.POLICY_ERROR
    last = [event for event in audit.events if event.kind == EventKind.CALL_DECIDED][-1]
    assert last.detail == "TypeError: policy 'confused' returned str, not a Decision"


async def test_every_member_of_a_nested_all_of_requires_the_members_scopes() -> None:
    """An AllOf inside an alternative still shares its members' scopes: the tool keeps every
    scope the policy file lets it use."""
    from mcp_guard import RulePolicy

    file = RulePolicy(
        tools=[
            ToolSpec("send", scopes=frozenset({"mail:send", "mail:audit"}), optional_scopes=frozenset({"mail:attach"}))
        ],
        id="file",
    )
    guard = Guard(policy=AnyOf(AllOf(file, ScopePolicy(id="scopes")), as_policy(deny("never"))))
    guard.declare(ToolSpec("send", scopes=frozenset({"mail:send"})))
    token = access_token("alice", "mail:send mail:audit mail:attach")
    decision = (await guard.authorize("send", {}, token)).decision
    assert decision.allowed and decision.approved_scopes == {"mail:send", "mail:audit", "mail:attach"}
    assert await guard.visible_tools(token) == {"send"}
    assert not (await guard.authorize("send", {}, access_token("bob", "mail:send"))).allowed


async def test_a_rule_reached_through_two_members_counts_a_call_once() -> None:
    from mcp_guard import RulePolicy
    from mcp_guard.policy import LimitRule

    limit = LimitRule("four", per="principal", calls=4, window=60)
    rules = RulePolicy([limit], id="rules")
    for policy in (AllOf(rules, AnyOf(rules, ScopePolicy())), DenyOverrides(rules, AllOf(rules))):
        guard = Guard(policy=policy)
        guard.declare(TOOL)
        token = access_token(f"user-{id(policy)}", "mail:send")
        outcomes = [(await guard.authorize("send", {}, token)).allowed for _ in range(6)]
        assert outcomes == [True] * 4 + [False] * 2
