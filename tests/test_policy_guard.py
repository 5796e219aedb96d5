"""Policies through a real MCP server and client, in both protocol generations; shadow mode."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from mcp.client import Client
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import BaseModel

from mcp_guard import (
    EventKind,
    Guard,
    GuardMiddleware,
    MemoryAuditSink,
    PolicyFile,
    ReasonCode,
    ScopePolicy,
    SessionSettings,
)
from mcp_guard.audit.file import FileAuditSink
from mcp_guard.cli import main
from mcp_guard.model import CallRequest, Decision, Session, ToolSpec
from mcp_guard.policy import LimitRule, Verdict, as_policy
from mcp_guard.policy.engine import RulePolicy
from mcp_guard.policy.shadow import Shadow
from mcp_guard.session.memory import MemorySessionStore
from mcp_guard.testing import access_token, acting_as
from support import Clock

pytestmark = pytest.mark.anyio

POLICY = """
version = 1
id = "mail"
revision = "7"

[tools.read_secret]
scopes = ["secrets:read"]
risk = "admin"
tags = ["secrets"]

[tools.send_mail]
scopes = ["mail:send"]
risk = "write"
tags = ["egress"]

[[rules]]
id = "no-egress-after-secrets"
tags = ["egress"]
sequence = { after_tags = ["secrets"] }

[[rules]]
id = "internal-recipients"
tools = ["send_mail"]
arguments = [{ argument = "to", type = "string", pattern = "[a-z.]{1,40}@example\\\\.com" }]

[risk]
threshold = 60
denial = 20
write = 0
admin = 10
"""


def mail_server(guard: Guard) -> Any:
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("mail", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool(scopes="secrets:read")
    async def read_secret(name: str) -> str:
        return f"secret {name}"

    @mcp.tool()
    @guard.tool(scopes="mail:send")
    def send_mail(to: str, body: str) -> str:
        return f"sent to {to}"

    return mcp


async def error_of(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    from mcp.shared.exceptions import MCPError

    with pytest.raises(MCPError) as caught:
        await client.call_tool(tool, arguments)
    return caught.value.error


async def test_a_policy_file_governs_a_real_server(tmp_path: Path, mode: str, audit: MemoryAuditSink) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    guard = Guard(policy=PolicyFile(path), audit=[audit])
    server = mail_server(guard)
    token = access_token("alice", "secrets:read mail:send", sid="one")
    with acting_as(token):
        async with Client(server, mode=mode) as client:
            assert (await client.call_tool("send_mail", {"to": "bob@example.com", "body": "hi"})).content
            outside = await error_of(client, "send_mail", {"to": "eve@evil.test", "body": "hi"})
            assert outside.data["reason"] == ReasonCode.ARGUMENT_REJECTED
            assert "internal-recipients" in outside.message
            assert (await client.call_tool("read_secret", {"name": "db"})).content
            after = await error_of(client, "send_mail", {"to": "bob@example.com", "body": "the secret"})
            assert after.data["reason"] == ReasonCode.SEQUENCE_FORBIDDEN
            ended = await error_of(client, "read_secret", {"name": "db"})  # 0 + 20 + 10 + 20, and 10 more is 60
            assert ended.data["reason"] == ReasonCode.SESSION_RISK_EXCEEDED
        async with Client(server, mode=mode) as client:  # a new connection does not start a fresh budget
            again = await error_of(client, "send_mail", {"to": "bob@example.com", "body": "hi"})
            assert again.data["reason"] in (ReasonCode.TOKEN_REVOKED, ReasonCode.SESSION_RISK_EXCEEDED)
    decided = [event for event in audit.events if event.kind == EventKind.CALL_DECIDED]
    assert {(event.policy_id, event.policy_version) for event in decided} == {("mail", "7")}
    assert decided[1].rule_ids == ("internal-recipients",)
    assert [event.detail for event in audit.events if event.kind == EventKind.SESSION_REVOKED] == [
        "session_risk_exceeded: risk score 60 reached threshold 60"
    ]


def strict_candidate(request: CallRequest) -> Verdict:
    """A candidate that would stop all mail, and grant nothing but what mail needs."""
    if request.tool.name == "send_mail":
        return Decision.deny(ReasonCode.POLICY_DENIED, "no mail", requested=request.principal.scopes, rule_id="stop")
    return None


async def test_shadow_mode_records_disagreements_and_never_decides(
    tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit.jsonl"
    sink = FileAuditSink(log)
    guard = Guard(policy=ScopePolicy(), shadow=strict_candidate, audit=[sink])
    server = mail_server(guard)
    with acting_as(access_token("alice", "secrets:read mail:send")):
        async with Client(server, mode=mode) as client:
            assert (await client.call_tool("send_mail", {"to": "bob@example.com", "body": "hi"})).content
            assert (await client.call_tool("send_mail", {"to": "bob@example.com", "body": "hi"})).content
            assert (await client.call_tool("read_secret", {"name": "db"})).content
    sink.close()
    assert guard.shadow is not None
    assert guard.shadow.disagreements == {"trimmed -> denied": 3}
    assert main(["policy", "diff", str(log), "--format", "json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["disagreements"] == 3
    assert summary["by_tool"] == {"send_mail": 2, "read_secret": 1}
    assert summary["by_candidate_rule"] == {"stop": 2, "-": 1}
    assert summary["candidates"] == {"strict_candidate 1": 3}
    assert main(["policy", "diff", str(log)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("3 disagreements") and "mcp-guard audit show" in text


async def test_a_failing_candidate_counts_as_a_denial_and_never_breaks_the_call(audit: MemoryAuditSink) -> None:
    def broken(request: CallRequest) -> Verdict:
        raise RuntimeError("candidate bug")

    guard = Guard(shadow=broken, audit=[audit])
    from mcp_guard import ToolSpec

    guard.declare(ToolSpec("ping"))
    assert (await guard.authorize("ping", {}, access_token("alice"))).allowed
    disagreed = [event for event in audit.events if event.kind == EventKind.POLICY_DISAGREED]
    assert len(disagreed) == 1 and disagreed[0].detail == "RuntimeError: candidate bug"
    assert disagreed[0].facts is not None and disagreed[0].facts["candidate_reasons"] == ["policy_error"]


async def test_policies_judge_arguments_as_the_tool_will_receive_them(mode: str, audit: MemoryAuditSink) -> None:
    """The SDK parses JSON text sent for a non-string parameter; the rule must count what it parses."""
    from mcp.server.mcpserver import MCPServer

    from mcp_guard import RulePolicy
    from mcp_guard.policy import TargetsRule

    guard = Guard(policy=RulePolicy([TargetsRule("few", argument="to", max_targets=2)]), audit=[audit])
    mcp = MCPServer("mail", middleware=[GuardMiddleware(guard)])
    reached: list[str] = []

    @mcp.tool()
    @guard.tool()
    def send_mail(to: list[str], body: str) -> str:
        reached.extend(to)
        return "sent"

    many = json.dumps([f"u{n}@example.com" for n in range(50)])
    with acting_as(access_token("alice", "")):
        async with Client(mcp, mode=mode) as client:
            refused = await error_of(client, "send_mail", {"to": many, "body": "hi"})
            assert refused.data["reason"] == ReasonCode.TOO_MANY_TARGETS
            assert (await client.call_tool("send_mail", {"to": '["a@example.com"]', "body": "[1, 2]"})).content
    assert reached == ["a@example.com"]
    assert audit.events[-1].kind == EventKind.CALL_COMPLETED


async def test_the_candidate_sees_the_session_as_the_enforcing_policy_did(audit: MemoryAuditSink) -> None:
    from mcp_guard import RulePolicy, ToolSpec
    from mcp_guard.policy import SequenceRule

    once = RulePolicy([SequenceRule("one-secret", tools=frozenset({"read_secret"}), after_tools={"read_secret"})])
    guard = Guard(policy=once, shadow=once, audit=[audit])
    guard.declare(ToolSpec("read_secret"))
    token = access_token("alice", "", sid="s")
    assert (await guard.authorize("read_secret", {}, token)).allowed
    assert not (await guard.authorize("read_secret", {}, token)).allowed
    assert guard.shadow is not None and not guard.shadow.disagreements  # the same policy always agrees


async def never_answers(request: CallRequest) -> Verdict:
    """A policy waiting on a remote engine that never answers."""
    await anyio.sleep(3600)
    return None


async def test_a_slow_candidate_is_cut_off_and_counts_as_a_denial(audit: MemoryAuditSink) -> None:
    guard = Guard(shadow=never_answers, shadow_timeout=0.05, audit=[audit])
    guard.declare(ToolSpec("ping"))
    with anyio.fail_after(5):
        assert (await guard.authorize("ping", {}, access_token("alice"))).allowed
    [disagreed] = [event for event in audit.events if event.kind == EventKind.POLICY_DISAGREED]
    assert disagreed.detail == "no answer within 0.05 s"
    with pytest.raises(ValueError, match="shadow timeout"):
        Guard(shadow=never_answers, shadow_timeout=0)


async def test_a_rate_limit_holds_under_concurrent_calls_while_a_shadow_candidate_waits(audit: MemoryAuditSink) -> None:
    import anyio

    from mcp_guard import RulePolicy, ToolSpec
    from mcp_guard.policy import LimitRule

    async def thoughtful(request: CallRequest) -> Verdict:
        await anyio.sleep(0.01)
        return None

    once = RulePolicy([LimitRule("once", per="client", calls=1, window=60)])
    guard = Guard(policy=once, shadow=thoughtful, audit=[audit])
    guard.declare(ToolSpec("ping"))
    token = access_token("alice", "")
    allowed: list[bool] = []

    async def call() -> None:
        allowed.append((await guard.authorize("ping", {}, token)).allowed)

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(call)
    assert sorted(allowed) == [False, False, False, False, True]


async def test_a_combined_policy_keeps_its_risk_threshold(audit: MemoryAuditSink) -> None:
    from mcp_guard import AllOf, RiskSettings, RulePolicy, ScopePolicy, ToolSpec

    scored = RulePolicy(risk=RiskSettings(threshold=10, write=6))
    guard = Guard(policy=AllOf(scored, ScopePolicy()), audit=[audit])
    guard.declare(ToolSpec("write", risk="write"))
    token = access_token("alice", "", sid="s")
    assert guard.risk is scored.risk
    assert [(await guard.authorize("write", {}, token)).allowed for _ in range(3)] == [True, False, False]


@pytest.mark.parametrize("strict_first", [True, False])
async def test_a_combination_ends_a_session_as_soon_as_any_member_would(
    audit: MemoryAuditSink, strict_first: bool
) -> None:
    from mcp_guard import AllOf, RiskSettings, ToolSpec
    from mcp_guard.policy import CombinedRisk

    lenient = RulePolicy(risk=RiskSettings(threshold=1000, write=100), id="ops")  # would refuse the tenth write
    strict = RulePolicy(risk=RiskSettings(threshold=10, write=4), id="security")  # refuses the third
    members = (strict, lenient) if strict_first else (lenient, strict)
    guard = Guard(policy=AllOf(*members), audit=[audit])
    guard.declare(ToolSpec("write", risk="write"))
    assert isinstance(guard.risk, CombinedRisk) and guard.risk.threshold == 10  # in the strictest member's units
    assert guard.risk is guard.risk  # worked out once while the members' settings stay
    token = access_token("alice", "", sid="s")
    assert [(await guard.authorize("write", {}, token)).allowed for _ in range(3)] == [True, True, False]
    assert "risk score 12 reached threshold 10" in str([e.detail for e in audit.events if e.kind == "session.revoked"])


def test_combined_risk_weighs_a_call_as_its_heaviest_member_would() -> None:
    from mcp_guard import RiskSettings
    from mcp_guard.policy import CombinedRisk

    one, other = RiskSettings(threshold=10, denial=1, write=3), RiskSettings(threshold=100, denial=50, write=10)
    combined = CombinedRisk.of([one, other])
    assert isinstance(combined, CombinedRisk)
    write, denied = ToolSpec("w", risk="write"), Decision.deny(ReasonCode.TOOL_NOT_FOUND)
    assert combined.weight(Decision(allowed=True), write) == 3  # 3 of 10, against 10 of 100
    assert combined.weight(denied, write) == 5  # 50 of 100 is 5 of 10
    assert CombinedRisk.of([one]) is one and CombinedRisk.of([]) is None
    assert CombinedRisk.of([combined, one]) == CombinedRisk((one, other, one))  # nested combinations flattened


def test_a_call_on_another_thread_while_one_is_recorded_cannot_pass_the_risk_threshold() -> None:
    """Threads sharing a guard, a sink that blocks: a second call decided while the first is
    recorded saw the score before it. Whichever call's weight reaches the threshold is refused."""
    from mcp_guard import RiskSettings

    outcomes: list[str] = []

    class Slow:
        def emit(self, event: Any) -> None:
            if event.kind == EventKind.CALL_DECIDED and not outcomes:  # another thread's call, decided meanwhile
                outcomes.append("")
                worker = threading.Thread(target=lambda: outcomes.append(run("write")))
                worker.start()
                worker.join()

    guard = Guard(audit=[Slow()], risk=RiskSettings(threshold=10, write=6))
    guard.declare(ToolSpec("write", risk="write"))
    token = access_token("alice", "", sid="s")

    def run(tool: str) -> str:
        return str(asyncio.run(guard.authorize(tool, {}, token)).decision.reason.code)

    first = run("write")
    assert sorted([first, outcomes[1]]) == ["allowed", "token_revoked"]  # one of them reached the threshold


class RemotePolicy:
    """An external decision point: it answers, by the scope rules, once ``answer`` returns."""

    id, version = "remote", "1"

    def __init__(self, answer: Callable[[], Awaitable[object]]) -> None:
        self.answer = answer
        self.scopes = ScopePolicy()

    def visible(self, principal: Any, tool: Any) -> bool:
        return True

    async def decide(self, request: CallRequest) -> Decision:
        await self.answer()
        return self.scopes.decide(request)


@pytest.mark.parametrize("revoke", ["subject", "session"])
async def test_a_revocation_while_a_remote_policy_decides_stops_that_call(revoke: str) -> None:
    gate = anyio.Event()
    guard = Guard(policy=RemotePolicy(gate.wait), audit=[MemoryAuditSink()])  # answers once the gate opens
    guard.declare(ToolSpec("wire_money", scopes=frozenset({"pay"})))
    token = access_token("mallory", "pay")
    outcome: list[str] = []

    async def call() -> None:
        outcome.append((await guard.authorize("wire_money", {}, token, transport_session="s")).decision.reason.code)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call)
        await anyio.sleep(0.01)
        if revoke == "subject":
            await guard.revoke(subject="mallory")
        else:
            await guard.revoke(session_id="mcp:s")
        gate.set()
    assert outcome == ["subject_revoked" if revoke == "subject" else "session_revoked"]


@pytest.mark.parametrize(("expires_in", "code"), [(60, "token_expired"), (5 * 3600, "session_expired")])
async def test_a_token_or_session_that_runs_out_while_a_remote_policy_decides_stops_that_call(
    expires_in: float, code: str
) -> None:
    clock = Clock()

    async def hours_later() -> None:
        await anyio.sleep(0)
        clock.advance(3 * 3600)

    settings = SessionSettings(absolute_ttl=3600, idle_ttl=600)
    guard = Guard(policy=RemotePolicy(hours_later), clock=clock, session_settings=settings)
    guard.declare(ToolSpec("wire_money", scopes=frozenset({"pay"})))
    token = access_token("mallory", "pay").model_copy(update={"expires_at": int(clock.now + expires_in)})
    assert (await guard.authorize("wire_money", {}, token)).decision.reason.code == code


@pytest.mark.parametrize("candidate", ["the enforcing policy", "it plus a rule"])
async def test_a_shadow_that_shares_the_enforcing_rules_neither_counts_again_nor_disagrees(
    audit: MemoryAuditSink, candidate: str
) -> None:
    from mcp_guard import AllOf, RulePolicy
    from mcp_guard.policy import LimitRule

    enforcing = RulePolicy([LimitRule("four", per="principal", calls=4, window=60)])
    shadow = enforcing if candidate == "the enforcing policy" else AllOf(enforcing, RulePolicy())
    guard = Guard(policy=enforcing, shadow=shadow, audit=[audit])
    guard.declare(ToolSpec("send"))
    token = access_token("alice", "")
    outcomes = [(await guard.authorize("send", {}, token)).allowed for _ in range(6)]
    assert outcomes == [True] * 4 + [False] * 2  # the limit, as if there were no shadow
    assert guard.shadow is not None and not guard.shadow.disagreements


@pytest.mark.parametrize("target", ["session", "subject", "token"])
async def test_a_revocation_while_the_shadow_deliberates_refuses_the_call(audit: MemoryAuditSink, target: str) -> None:
    async def slow_candidate(request: CallRequest) -> Verdict:
        await anyio.sleep(0.2)  # within the shadow timeout
        return None

    guard = Guard(policy=ScopePolicy(), shadow=slow_candidate, audit=[audit])
    guard.declare(ToolSpec("act"))
    token = access_token("alice", "", jti="jti-1", sid="s1")
    assert (await guard.authorize("act", {}, token)).allowed
    session_id = audit.events[0].session_id
    decisions: list[Decision] = []

    async def call() -> None:
        decisions.append((await guard.authorize("act", {}, token)).decision)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call)
        await anyio.sleep(0.05)
        arguments = {"session": {"session_id": session_id}, "subject": {"subject": "alice"}}
        await guard.revoke(**arguments.get(target, {"token_id": "jti-1"}))
    assert not decisions[0].allowed
    late = [e for e in audit.events if e.kind == EventKind.CALL_DECIDED][-1]
    assert late.outcome == "denied" and "while the call was being recorded" in (late.detail or "")


async def test_a_shadow_candidates_own_targets_rule_counts_across_calls(audit: MemoryAuditSink) -> None:
    """The real history holds what the enforcing policy took; the candidate's own cap on
    distinct targets must still see the targets it would have taken before."""
    from mcp_guard.policy import TargetsRule

    one_recipient = RulePolicy([TargetsRule("one-recipient", tools=frozenset({"send"}), argument="to")])
    guard = Guard(policy=ScopePolicy(), shadow=one_recipient, audit=[audit])
    guard.declare(ToolSpec("send"))
    token = access_token("alice", "", sid="s")
    outcomes = [(await guard.authorize("send", {"to": to}, token)).allowed for to in ("a", "a", "b", "c")]
    assert outcomes == [True] * 4  # the enforcing policy has no cap
    assert guard.shadow is not None and guard.shadow.disagreements == {"allowed -> denied": 2}


async def test_a_shadow_candidates_sequence_rule_sees_the_tags_it_declares(audit: MemoryAuditSink) -> None:
    """The history holds the tags the enforcing policy saw; a candidate that declares more
    (in one member of a combination, its rules in another) judges with those too."""
    from mcp_guard import AllOf
    from mcp_guard.policy import SequenceRule

    declarations = RulePolicy(
        tools=[ToolSpec("read_secret", tags=frozenset({"secrets"})), ToolSpec("send_mail", tags=frozenset({"egress"}))]
    )
    rules = RulePolicy([SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tags={"secrets"})])
    guard = Guard(policy=ScopePolicy(), shadow=AllOf(declarations, rules), audit=[audit])
    guard.declare(ToolSpec("read_secret"))
    guard.declare(ToolSpec("send_mail"))
    token = access_token("alice", "", sid="s")
    assert [(await guard.authorize(tool, {}, token)).allowed for tool in ("read_secret", "send_mail")] == [True] * 2
    assert guard.shadow is not None and guard.shadow.disagreements == {"allowed -> denied": 1}


async def test_a_shadow_keeps_the_targets_of_overlapping_calls_and_not_those_of_a_session_gone() -> None:
    """Calls that overlap (an asynchronous candidate) each add their targets; a session opened
    anew under an old key starts with none of the old one's."""
    from mcp_guard import SessionSettings
    from mcp_guard.policy import TargetsRule

    two = RulePolicy([TargetsRule("two", tools=frozenset({"send"}), argument="to", max_targets=2)])
    clock = Clock()
    guard = Guard(
        policy=ScopePolicy(),
        shadow=RemotePolicyOf(two),
        clock=clock,
        session_settings=SessionSettings(absolute_ttl=60, idle_ttl=60),
    )
    guard.declare(ToolSpec("send"))
    token = access_token("alice", "", expires_in=None)

    async def send(to: str) -> None:
        await guard.authorize("send", {"to": to}, token, transport_session="T")

    async with anyio.create_task_group() as calls:
        for to in ("x", "y"):
            calls.start_soon(send, to)
    assert (await guard.authorize("send", {"to": "z"}, token, transport_session="T")).allowed
    assert guard.shadow is not None and guard.shadow.disagreements == {"allowed -> denied": 1}
    clock.advance(3600)  # the session is past its deadline and retention: gone from the store
    guard.sessions = type(guard.sessions)()  # swept
    for to in ("p", "q"):  # a new session under the same key: two targets of its own
        assert (await guard.authorize("send", {"to": to}, token, transport_session="T")).allowed
    assert guard.shadow.disagreements == {"allowed -> denied": 1}


class RemotePolicyOf:
    """``policy``, answering asynchronously after a pause, so calls overlap."""

    def __init__(self, policy: RulePolicy) -> None:
        self.policy, self.policies = policy, (policy,)
        self.id, self.version = "remote", "1"

    def visible(self, principal: Any, tool: Any) -> bool:
        return True

    async def decide(self, request: CallRequest) -> Verdict:
        await anyio.sleep(0.01)
        return self.policy.decide(request)


def test_a_shadow_never_reads_one_policys_rules_with_anothers() -> None:
    """Another thread asking while a shadow takes in a reloaded policy must get that policy's
    shared rules, never an empty set that would count the enforcing limits twice."""
    limit = LimitRule("per-session", calls=5)
    nested: list[frozenset[int]] = []
    asked = [True]  # armed below, once the policy is built

    class Reloaded(RulePolicy):
        @property  # type: ignore[override]
        def rules(self) -> tuple[Any, ...]:  # read while the shadow takes this policy in
            if not asked[0]:
                asked[0] = True
                nested.append(shadow._shared(self))
            return (limit,)

        @rules.setter
        def rules(self, value: tuple[Any, ...]) -> None:
            pass

    shadow = Shadow(RulePolicy([limit]), [])
    enforcing = Reloaded([limit])
    asked[0] = False
    shared = frozenset({id(limit)})  # the limit is the enforcing policy's
    assert shadow._shared(enforcing) == shared and nested == [shared]


async def cancels_itself(request: CallRequest) -> Decision:
    """A remote decision point whose client cancelled its inner request (a pooled connection dropped, say)."""
    inner: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
    inner.cancel()
    return await inner


def raises_cancelled(request: CallRequest) -> Decision:
    raise asyncio.CancelledError("inner request cancelled")


@pytest.mark.parametrize("decide", [cancels_itself, raises_cancelled])
async def test_a_policy_that_cancels_itself_denies_the_call(audit: MemoryAuditSink, decide: Any) -> None:
    from mcp_guard.policy import as_policy

    guard = Guard(policy=as_policy(decide, id="remote"), audit=[audit])
    guard.declare(ToolSpec("ping"))
    decision = (await guard.authorize("ping", {}, access_token("alice"))).decision
    assert decision.reason.code == ReasonCode.POLICY_ERROR
    assert (audit.events[-1].detail or "").startswith("CancelledError")


@pytest.mark.parametrize(
    ("deliberating", "unrecorded"),
    [
        ({"policy": as_policy(never_answers)}, EventKind.CALL_DECIDED),
        ({"shadow": never_answers, "shadow_timeout": 60}, EventKind.POLICY_DISAGREED),
    ],
    ids=["enforcing", "shadow"],
)
async def test_cancelling_a_call_while_a_policy_deliberates_cancels_it(
    audit: MemoryAuditSink, deliberating: dict[str, Any], unrecorded: EventKind
) -> None:
    """A cancellation of the task awaiting `authorize` is no policy failure: it propagates."""
    guard = Guard(audit=[audit], **deliberating)
    guard.declare(ToolSpec("ping"))
    answered: list[bool] = []
    with anyio.move_on_after(0.05) as waiting:
        answered.append((await guard.authorize("ping", {}, access_token("alice"))).allowed)
    assert waiting.cancelled_caught and answered == []
    assert not [event for event in audit.events if event.kind == unrecorded]


class MissesOnce(MemorySessionStore):
    """A store outside process memory (the guard reads the session again once the call is
    recorded) whose read after recording misses when ``miss`` is set."""

    miss = False
    _missing = False

    async def record_call(self, *args: Any, **kwargs: Any) -> float:
        score = await super().record_call(*args, **kwargs)
        self._missing, self.miss = self.miss, False
        return score

    async def get(self, session_id: str) -> Session | None:
        if self._missing:
            self._missing = False
            return None
        return await super().get(session_id)


async def test_a_call_refused_after_it_was_counted_gives_its_count_back(audit: MemoryAuditSink) -> None:
    limit = LimitRule("two", per="client", calls=2, window=60)
    store = MissesOnce()
    guard = Guard(policy=RulePolicy([limit]), sessions=store, audit=[audit])
    guard.declare(ToolSpec("ping"))
    token = access_token("alice", "")
    store.miss = True
    assert (await guard.authorize("ping", {}, token)).decision.reason.code == ReasonCode.SESSION_UNAVAILABLE
    assert [(await guard.authorize("ping", {}, token)).allowed for _ in range(3)] == [True, True, False]


async def test_a_call_refused_because_its_record_failed_gives_back_its_count_and_keeps_its_targets() -> None:
    """A rate count goes back; a target stays taken, since another call may rely on it (strict)."""
    from mcp_guard.policy import TargetsRule

    class FailsOnce:
        fail = True

        def emit(self, event: Any) -> None:
            if self.fail and event.kind == EventKind.CALL_DECIDED and event.outcome != "denied":
                self.fail = False
                raise OSError("disk full")

    budget = LimitRule("budget", per="session", calls=2)
    recipients = TargetsRule("recipients", argument="to", max_targets=1)
    guard = Guard(policy=RulePolicy([budget, recipients]), audit=[FailsOnce()])
    guard.declare(ToolSpec("send_mail"))
    token = access_token("alice", "", sid="s")
    first = await guard.authorize("send_mail", {"to": "a@example.com"}, token)
    assert first.decision.reason.code == ReasonCode.GUARD_ERROR
    other = await guard.authorize("send_mail", {"to": "b@example.com"}, token)
    assert other.decision.reason.code == ReasonCode.TOO_MANY_TARGETS  # a@example.com is still held
    codes = [
        (await guard.authorize("send_mail", {"to": "a@example.com"}, token)).decision.reason.code for _ in range(3)
    ]
    assert codes == ["allowed", "allowed", "budget_exhausted"]  # the refused call took no budget


async def test_a_target_another_call_relies_on_is_not_given_back_by_a_late_refusal() -> None:
    """Two calls to one recipient decided together; the first is refused once both are recorded.
    The second ran to that recipient, so the cap of one still holds against a new one."""
    from mcp_guard.policy import TargetsRule

    class Yields(MemorySessionStore):
        """Recording is I/O (the other call goes on meanwhile); the third read, the first call's
        read after recording, misses once."""

        reads = 0

        async def record_call(self, *args: Any, **kwargs: Any) -> float:
            score = await super().record_call(*args, **kwargs)
            await anyio.sleep(0)
            return score

        async def get(self, session_id: str) -> Session | None:
            self.reads += 1
            return None if self.reads == 3 else await super().get(session_id)

    guard = Guard(policy=RulePolicy([TargetsRule("recipients", argument="to", max_targets=1)]), sessions=Yields())
    guard.declare(ToolSpec("send_mail"))
    token = access_token("alice", "", sid="s")
    codes: list[str] = []

    async def send() -> None:
        codes.append((await guard.authorize("send_mail", {"to": "x@example.com"}, token)).decision.reason.code)

    async with anyio.create_task_group() as both:
        both.start_soon(send)
        both.start_soon(send)
    assert sorted(codes) == ["allowed", "session_unavailable"]
    later = await guard.authorize("send_mail", {"to": "y@example.com"}, token)
    assert later.decision.reason.code == ReasonCode.TOO_MANY_TARGETS


async def test_a_policy_error_quoting_a_redacted_argument_keeps_it_out_of_the_trail_and_the_log(
    audit: MemoryAuditSink, caplog: pytest.LogCaptureFixture
) -> None:
    """A policy that fails on a value quotes it, cut short or re-encoded as it likes (``int()``
    quotes 200 characters): for a tool that redacts arguments the error's text is withheld from
    the audit ``detail``, a shadow disagreement and the log, which keeps where it happened."""

    def pin_format(request: CallRequest) -> Verdict:
        int(request.arguments["pin"])  # raises, quoting the value
        return None

    enforcing = Guard(policy=as_policy(pin_format), audit=[audit])
    shadowing = Guard(shadow=pin_format, audit=[audit])  # allows; its candidate fails
    for guard in (enforcing, shadowing):
        guard.declare(ToolSpec("pay", redact=frozenset({"pin"})))
        await guard.authorize("pay", {"pin": "pin-HUNTER2-" + "x" * 300}, access_token("alice"))
    details = [event.detail for event in audit.events if event.kind in ("call.decided", "policy.disagreed")]
    withheld = "ValueError (its text is withheld: the tool redacts arguments it may quote)"
    assert details == [withheld, None, withheld]  # the refusal, the allowed call, the candidate's failure
    assert "HUNTER2" not in caplog.text and "in pin_format" in caplog.text  # the frame, not the value


async def test_a_policy_error_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """An error's text comes from the call: logged escaped, with the stack's frames and never the
    traceback's raw last line, it cannot forge a log line."""

    def failing(request: CallRequest) -> Verdict:
        raise ValueError(f"bad value {request.arguments['note']}")

    guard = Guard(policy=as_policy(failing))
    guard.declare(ToolSpec("save"))
    await guard.authorize("save", {"note": "x\n2026-01-01 INFO admin login accepted"}, access_token("alice"))
    assert "\\n2026" in caplog.text and "in failing" in caplog.text  # the escaped detail, and where
    assert [line for line in caplog.text.splitlines() if line.startswith("2026-01-01")] == []


async def test_a_custom_hook_failing_on_a_redacted_argument_keeps_it_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Counting:
        """A rule that counts allowed calls and fails on the value it counts."""

        id = "counting"

        def on_allow(self, request: CallRequest) -> None:
            raise ValueError(f"cannot count {request.arguments['pin']}")

    def allowing(request: CallRequest) -> Verdict:
        return Decision(True, request.principal.scopes, frozenset(), on_allow=(Counting(),))

    guard = Guard(policy=as_policy(allowing))
    guard.declare(ToolSpec("pay", redact=frozenset({"pin"})))
    refused = await guard.authorize("pay", {"pin": "pin-HUNTER2"}, access_token("alice"))
    assert refused.decision.reason.code == ReasonCode.GUARD_ERROR
    assert "HUNTER2" not in caplog.text and "in on_allow" in caplog.text


async def test_a_call_cancelled_while_it_is_checked_again_gives_back_its_counts() -> None:
    class SlowOnce(MemorySessionStore):
        """The first call's second look at the session hangs (its client went away)."""

        reads = 0

        async def get(self, session_id: str) -> Session | None:
            self.reads += 1
            if self.reads == 2:
                await anyio.sleep(3600)
            return await super().get(session_id)

    limit = LimitRule("one", per="client", calls=1, window=60)
    guard = Guard(policy=RulePolicy([limit]), sessions=SlowOnce())
    guard.declare(ToolSpec("ping"))
    token = access_token("alice", "")
    with anyio.move_on_after(0.1):
        await guard.authorize("ping", {}, token)
    assert (await guard.authorize("ping", {}, token)).allowed  # the cancelled call never ran


class Confirmation(BaseModel):
    ok: bool


def confirm(path: str) -> Elicit[Confirmation]:
    """Ask the user before a deletion (a multi-round-trip request on MCP 2026-07-28)."""
    return Elicit(f"Really delete {path}?", Confirmation)


async def test_a_call_that_asks_for_input_counts_each_round(mode: str, audit: MemoryAuditSink) -> None:
    """On MCP 2026-07-28 a call that asks for input takes a round to ask and one to run, and
    server code (the resolver) runs in both: each counts. A legacy session asks within one call."""
    from mcp import MCPError
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ElicitResult

    from mcp_guard import GuardMiddleware, Risk

    twice = RulePolicy([LimitRule("two-deletes", per="session", calls=2, window=3600)])
    guard = Guard(policy=twice, audit=[audit])
    mcp = MCPServer("files", middleware=[GuardMiddleware(guard)])
    deleted: list[str] = []

    @mcp.tool()
    @guard.tool(risk=Risk.WRITE)
    async def delete_file(path: str, confirmed: Annotated[Confirmation, Resolve(confirm)]) -> str:
        deleted.append(path)
        return "deleted"

    async def answer(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept", content={"ok": True})

    with acting_as(access_token("alice", "")):
        async with Client(mcp, mode=mode, elicitation_callback=answer) as client:
            allowed = 2 if mode == "legacy" else 1
            for path in ("a", "b")[:allowed]:
                assert not (await client.call_tool("delete_file", {"path": path})).is_error
            with pytest.raises(MCPError, match="at most 2 calls"):
                await client.call_tool("delete_file", {"path": "c"})
    assert deleted == ["a", "b"][:allowed]
    results = [event.facts["result"] for event in audit.events if event.kind == "call.completed"]
    assert results == (["ok", "ok"] if mode == "legacy" else ["input_required", "ok"])


async def test_a_round_that_asks_for_input_counts_though_never_answered(audit: MemoryAuditSink) -> None:
    """Server code runs in an asking round (the resolver, which may show what the tool will
    touch): a client that never answers must not run it past the limit."""
    from mcp import MCPError
    from mcp.server.mcpserver import MCPServer

    from mcp_guard import GuardMiddleware

    guard = Guard(policy=RulePolicy([LimitRule("two-deletes", per="session", calls=2, window=3600)]), audit=[audit])
    mcp = MCPServer("files", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool()
    async def delete_file(path: str, confirmed: Annotated[Confirmation, Resolve(confirm)]) -> str:
        return "deleted"

    async def never_asked(context: Any, params: Any) -> Any:
        raise AssertionError("the client answers nothing")

    with acting_as(access_token("alice", "")):
        async with Client(mcp, elicitation_callback=never_asked) as client:  # MCP 2026-07-28
            for path in ("a", "b"):  # asked, never answered
                asked = await client.session.call_tool("delete_file", {"path": path}, allow_input_required=True)
                assert asked.result_type == "input_required"
            with pytest.raises(MCPError, match="at most 2 calls"):
                await client.session.call_tool("delete_file", {"path": "c"}, allow_input_required=True)


def answers_false_as_text(request: CallRequest) -> Decision:
    return Decision(allowed="false")  # type: ignore[arg-type]  # a remote answer passed through


def approves_a_string(request: CallRequest) -> Decision:
    return Decision(allowed=True, approved_scopes="notes:read")  # type: ignore[arg-type]


def gives_text_reasons(request: CallRequest) -> Decision:
    return Decision(allowed=False, reasons=("not on weekends",))  # type: ignore[arg-type]


def approves_a_mapping(request: CallRequest) -> Decision:  # read by its keys, a scope mapped to False was approved
    return Decision(allowed=True, approved_scopes={"notes:read": True, "notes:admin": False})  # type: ignore[arg-type]


def reaches_a_string_target(request: CallRequest) -> Decision:  # recorded allowed, then failed the call
    return Decision(allowed=True, approved_scopes=frozenset({"notes:read"}), targets="ab")  # type: ignore[arg-type]


def approves_more_than_granted(request: CallRequest) -> Decision:
    return Decision(allowed=True, approved_scopes=frozenset({"notes:read", "notes:admin"}))


@pytest.mark.parametrize(
    "decide",
    [
        answers_false_as_text,
        approves_a_string,
        gives_text_reasons,
        approves_more_than_granted,
        approves_a_mapping,
        reaches_a_string_target,
    ],
)
@pytest.mark.parametrize("combine", ["alone", "all_of", "deny_overrides", "any_of"])
async def test_a_decision_a_policy_could_not_mean_denies_the_call(
    audit: MemoryAuditSink, decide: Any, combine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A decision whose ``allowed`` is not a bool (truthy text would allow), whose scopes are a
    string or beyond the grant, or whose reasons are not `Reason` values is a broken policy:
    denied with ``policy_error``, alone or inside any combination."""
    from mcp_guard.policy import AllOf, AnyOf, DenyOverrides

    combined = {
        "alone": decide,
        "all_of": AllOf(ScopePolicy(), as_policy(decide)),
        "deny_overrides": DenyOverrides(ScopePolicy(), as_policy(decide)),
        "any_of": AnyOf(as_policy(decide), as_policy(lambda request: None)),
    }[combine]
    guard = Guard(policy=combined, audit=[audit])
    guard.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    decision = (await guard.authorize("read_note", {}, access_token("alice", "notes:read"))).decision
    if decide is approves_more_than_granted and combine in ("all_of", "deny_overrides"):
        assert decision.approved_scopes == {"notes:read"}  # the scope policy's answer narrows it
        return
    assert not decision.allowed and decision.reason.code == ReasonCode.POLICY_ERROR
    assert [event for event in audit.events if event.kind == EventKind.CALL_DECIDED][-1].outcome == "denied"
    assert "Decision." in caplog.text or "not granted: 'notes:admin'" in caplog.text


async def test_a_policy_may_approve_what_its_hierarchy_implies_and_scopes_in_any_collection(
    audit: MemoryAuditSink,
) -> None:
    """Approving a scope the grant implies (``notes:write`` implies ``notes:read``) is narrowing
    it; a set or list of scope names is taken as the frozenset it stands for."""
    from mcp_guard.policy import AllOf

    def approves_read_as_a_list(request: CallRequest) -> Decision:
        return Decision(allowed=True, approved_scopes=["notes:read"])  # type: ignore[arg-type]

    guard = Guard(policy=AllOf(ScopePolicy({"notes:write": "notes:read"}), as_policy(approves_read_as_a_list)))
    guard.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    decision = (await guard.authorize("read_note", {}, access_token("alice", "notes:write"))).decision
    assert decision.allowed and decision.approved_scopes == frozenset({"notes:read"})
    solo = Guard(policy=approves_read_as_a_list)
    solo.declare(ToolSpec("read_note"))
    assert not (await solo.authorize("read_note", {}, access_token("alice", "notes:write"))).allowed  # no hierarchy


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_policy_approving_a_set_serves_the_call_with_exactly_those_scopes(mode: str) -> None:
    """A plain ``set`` of approved scopes once broke the trimmed token (unhashable) after the call
    was recorded as allowed."""
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.mcpserver import MCPServer

    def approves_a_set(request: CallRequest) -> Decision:
        return Decision(allowed=True, requested_scopes=request.principal.scopes, approved_scopes={"notes:read"})  # type: ignore[arg-type]

    guard = Guard(policy=approves_a_set)
    mcp = MCPServer("notes", middleware=[GuardMiddleware(guard)])

    @mcp.tool()
    @guard.tool(scopes="notes:read")
    async def read_note() -> str:
        token = get_access_token()
        return " ".join(token.scopes) if token is not None else "no token"

    with acting_as(access_token("alice", "notes:read notes:write")):
        async with Client(mcp, mode=mode) as client:
            result = await client.call_tool("read_note", {})
    assert result.content[0].text == "notes:read"  # type: ignore[union-attr]


async def test_each_members_hierarchy_widens_the_grant_a_combination_approves_from() -> None:
    """Two policy files with hierarchies of their own, combined: the second's implied scopes are
    within the grant too."""
    from mcp_guard.policy import AnyOf

    files = ScopePolicy({"files:write": "files:read"}, id="files")
    notes = ScopePolicy({"notes:write": "notes:read"}, id="notes")
    guard = Guard(policy=AnyOf(files, notes))
    guard.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
    decision = (await guard.authorize("read_note", {}, access_token("alice", "notes:write"))).decision
    assert decision.allowed and decision.approved_scopes == {"notes:read"}


def test_a_decision_takes_lists_of_the_right_values_and_refuses_text_for_a_list() -> None:
    from mcp_guard.model import Reason

    listed = Decision(allowed=True, reasons=[Reason.of("allowed", "ok")], rule_ids=["a"], obligations=["log"])  # type: ignore[arg-type]
    assert (
        listed.reasons == (Reason.of("allowed", "ok"),) and listed.rule_ids == ("a",) and listed.obligations == ("log",)
    )
    for broken in ({"rule_ids": "abc"}, {"obligations": "log"}, {"approved_scopes": frozenset({1})}):
        with pytest.raises(TypeError, match="Decision"):
            Decision(allowed=True, **broken)


def test_a_decision_takes_targets_as_pairs_and_hooks_that_hear_of_allowed_calls() -> None:
    assert Decision(allowed=True, targets=[["rule", "a"], ("rule", "b")]).targets == (("rule", "a"), ("rule", "b"))  # type: ignore[arg-type]
    for targets in ("ab", ["ab"], [("rule", "a", "b")], [("rule", 1)], {"rule": "a"}):
        with pytest.raises(TypeError, match="targets"):
            Decision(allowed=True, targets=targets)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_allow"):
        Decision(allowed=True, on_allow=(lambda request: None,))  # type: ignore[arg-type]
    limit = LimitRule("limit", calls=1)
    assert Decision(allowed=True, on_allow=[limit]).on_allow == (limit,)  # type: ignore[arg-type]
