"""Shadow mode: what the candidate sees and counts, and how its failures are told apart."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import anyio
import pytest

from mcp_guard import AllOf, EventKind, Guard, MemoryAuditSink, PolicyFile, ReasonCode, RulePolicy, ScopePolicy
from mcp_guard.model import CallRequest, Decision, Session, ToolSpec
from mcp_guard.policy import LimitRule, PolicyFunction, Verdict
from mcp_guard.policy.base import cancelled_itself
from mcp_guard.session.memory import MemorySessionStore
from mcp_guard.testing import access_token

pytestmark = pytest.mark.anyio

LIMITED = """
version = 1
id = "limited"
revision = "{revision}"

[[rules]]
id = "three"
limit = {{ per = "principal", calls = 3, window = 600 }}
"""


async def test_a_candidate_that_relaxes_the_declaration_of_a_tool_is_reported(audit: MemoryAuditSink) -> None:
    """A candidate revision that drops a scope the enforcing one requires would allow the call:
    it judges the tool as registered with its own declaration, as it would if it enforced."""
    current = RulePolicy(tools=[ToolSpec("send", scopes=frozenset({"mail:send", "mail:admin"}))], id="v1")
    relaxed = RulePolicy(tools=[ToolSpec("send", scopes=frozenset({"mail:send"}))], id="v2")
    guard = Guard(policy=current, shadow=relaxed, audit=[audit])
    guard.declare(ToolSpec("send"))
    decision = (await guard.authorize("send", {}, access_token("alice", "mail:send"))).decision
    assert decision.reason.code == ReasonCode.INSUFFICIENT_SCOPE
    assert guard.shadow is not None and guard.shadow.disagreements == {"denied -> allowed": 1}


async def test_a_candidate_that_declares_nothing_sees_the_tool_as_registered(audit: MemoryAuditSink) -> None:
    seen: list[ToolSpec] = []

    def candidate(request: CallRequest) -> Verdict:
        seen.append(request.tool)
        return None

    current = RulePolicy(tools=[ToolSpec("send", scopes=frozenset({"mail:send"}), tags=frozenset({"egress"}))])
    guard = Guard(policy=current, shadow=candidate, audit=[audit])
    registered = guard.declare(ToolSpec("send"))
    assert (await guard.authorize("send", {}, access_token("alice", "mail:send"))).allowed
    assert seen == [registered]


async def test_an_asynchronous_candidate_sees_a_shared_limit_as_the_enforcing_policy_did(
    audit: MemoryAuditSink,
) -> None:
    """Its answer is settled before the enforcing policy counts the call, so the limit it shares
    is one call short of full on the last call both allow, as the enforcing policy saw it."""
    enforcing = RulePolicy([LimitRule("two", per="principal", calls=2, window=60)])
    scopes = ScopePolicy()

    async def remote_check(request: CallRequest) -> Verdict:
        await anyio.sleep(0)
        return scopes.decide(request)

    guard = Guard(policy=enforcing, shadow=AllOf(remote_check, enforcing), audit=[audit])
    guard.declare(ToolSpec("ping"))
    token = access_token("alice", "")
    assert [(await guard.authorize("ping", {}, token)).allowed for _ in range(3)] == [True, True, False]
    assert guard.shadow is not None and not guard.shadow.disagreements


@pytest.mark.parametrize("reload_first", [False, True])
async def test_a_reload_while_the_candidate_deliberates_never_counts_the_real_limit_twice(
    tmp_path: Path, audit: MemoryAuditSink, reload_first: bool
) -> None:
    """The candidate holds the enforcing file's rules from before the reload (it read them
    first) or after it; counts carry over a reload, so either set counting again would fill
    the real limit."""
    path = tmp_path / "limited.toml"
    path.write_text(LIMITED.format(revision=0))
    enforcing = PolicyFile(path)
    revisions = itertools.count(1)

    async def reloading(request: CallRequest) -> Verdict:
        path.write_text(LIMITED.format(revision=next(revisions)))
        enforcing.reload()  # a timer or SIGHUP reload, landing while the candidate deliberates
        await anyio.sleep(0)
        return Decision(True, request.principal.scopes, request.principal.scopes)

    members = (reloading, enforcing) if reload_first else (enforcing, reloading)
    guard = Guard(policy=enforcing, shadow=AllOf(*members), audit=[audit])
    guard.declare(ToolSpec("ping"))
    token = access_token("alice", "")
    assert [(await guard.authorize("ping", {}, token)).allowed for _ in range(4)] == [True] * 3 + [False]
    assert guard.shadow is not None and not guard.shadow.disagreements


@pytest.mark.parametrize("failing_to_say", [False, True])
async def test_the_candidate_is_held_to_its_revision_as_of_the_calls_start(
    tmp_path: Path, audit: MemoryAuditSink, failing_to_say: bool
) -> None:
    """A reload landing while the enforcing policy decides showed as a disagreement: the
    candidate was read after it. A candidate that cannot say its revision fails as the
    candidate, never the call."""
    path = tmp_path / "file.toml"
    revision = 'version = 1\nid = "file"\nrevision = "{rev}"\n[tools.ping]\nscopes = [{scopes}]\n'
    path.write_text(revision.format(rev=1, scopes=""))
    policy_file = PolicyFile(path)

    async def reloading(request: CallRequest) -> Verdict:
        path.write_text(revision.format(rev=2, scopes='"admin"'))
        policy_file.reload()
        return Decision(True, request.principal.scopes, request.principal.scopes)

    candidate = AllOf(policy_file)
    if failing_to_say:

        class Unsure(AllOf):
            def in_force(self) -> AllOf:
                raise OSError("the policy store is unreachable")

        candidate = Unsure(policy_file)
    guard = Guard(policy=AllOf(policy_file, reloading), shadow=candidate, audit=[audit])
    guard.declare(ToolSpec("ping"))
    assert (await guard.authorize("ping", {}, access_token("alice", ""))).allowed
    assert guard.shadow is not None
    assert dict(guard.shadow.disagreements) == ({"allowed -> denied": 1} if failing_to_say else {})


async def test_a_candidate_handing_out_an_odd_revision_fails_as_the_candidate(audit: MemoryAuditSink) -> None:
    """Its refusal could not name it, and the error escaped into the enforcing decision."""

    class Revision:  # decide and visible, and nothing to name it by
        def decide(self, request: CallRequest) -> None:
            return None

        def visible(self, principal: object, tool: ToolSpec) -> bool:
            return True

    class Candidate(ScopePolicy):
        def in_force(self) -> Revision:
            return Revision()

    guard = Guard(policy=ScopePolicy(), shadow=Candidate(), audit=[audit])
    guard.declare(ToolSpec("ping"))
    assert (await guard.authorize("ping", {}, access_token("alice", ""))).allowed
    assert [event.kind for event in audit.events][-2:] == [EventKind.CALL_DECIDED, EventKind.POLICY_DISAGREED]
    with pytest.raises(TypeError, match="'id'"):
        Guard(shadow=Revision())  # type: ignore[arg-type]


async def cancels_itself(request: CallRequest) -> Verdict:
    """A remote client whose inner request was cancelled (a pooled connection dropped, say)."""
    inner = asyncio.get_running_loop().create_future()
    inner.cancel()
    result: Verdict = await inner
    return result


def raises_cancelled(request: CallRequest) -> Verdict:
    raise asyncio.CancelledError("inner request cancelled")


@pytest.mark.parametrize("candidate", [cancels_itself, raises_cancelled])
async def test_a_candidate_that_cancels_itself_fails_and_never_breaks_the_call(
    audit: MemoryAuditSink, candidate: PolicyFunction
) -> None:
    guard = Guard(shadow=candidate, audit=[audit])
    guard.declare(ToolSpec("ping"))
    assert (await guard.authorize("ping", {}, access_token("alice"))).allowed
    [disagreed] = [event for event in audit.events if event.kind == EventKind.POLICY_DISAGREED]
    assert (disagreed.detail or "").startswith("CancelledError")
    assert disagreed.facts is not None and disagreed.facts["candidate_reasons"] == ["policy_error"]


def test_only_asyncio_tells_a_policys_own_cancellation_from_a_real_one() -> None:
    assert not cancelled_itself(asyncio.CancelledError())  # no asyncio loop: taken as real
    assert not cancelled_itself(KeyboardInterrupt())

    async def inside() -> tuple[bool, bool]:
        own = cancelled_itself(asyncio.CancelledError())
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the task itself is cancelled
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as error:
            real = cancelled_itself(error)
            task.uncancel()
        return own, real

    assert asyncio.run(inside()) == (True, False)


async def test_a_call_refused_late_gives_back_what_the_candidate_counted() -> None:
    """The candidate, enforcing, would have been refused as late: the count it took for the call
    goes back with the enforcing one, so the next call finds both limits alike."""

    class MissesOnce(MemorySessionStore):
        """The session cannot be read again once the first call is recorded."""

        reads = 0

        async def get(self, session_id: str) -> Session | None:
            self.reads += 1
            return None if self.reads == 2 else await super().get(session_id)

    enforcing = RulePolicy([LimitRule("real", per="client", calls=1, window=60)])
    candidate = RulePolicy([LimitRule("revised", per="client", calls=1, window=60)])  # the same limit, renamed
    guard = Guard(policy=enforcing, sessions=MissesOnce(), shadow=candidate)
    guard.declare(ToolSpec("ping"))
    token = access_token("alice", "")
    codes = [(await guard.authorize("ping", {}, token)).decision.reason.code for _ in range(2)]
    assert codes == [ReasonCode.SESSION_UNAVAILABLE, ReasonCode.ALLOWED]
    assert guard.shadow is not None and not guard.shadow.disagreements


async def test_a_flood_of_new_sessions_does_not_wipe_what_the_candidate_counted_for_one_in_use() -> None:
    """The candidate's targets per session were kept in a memo emptied when full: one caller
    opening 10,000 sessions reset every other session's distinct-target cap, and the
    candidate's disagreements went unrecorded."""
    from mcp_guard.policy import TargetsRule

    candidate = RulePolicy([TargetsRule("one-recipient", argument="to", max_targets=1, tools={"send"})], id="cand")
    guard = Guard(shadow=candidate)
    guard.declare(ToolSpec("send", scopes=frozenset({"mail:send"})))
    victim = access_token("victim", "mail:send")
    for recipient in ("alice@x", "bob@x"):  # bob is one recipient too many for the candidate
        await guard.authorize("send", {"to": recipient}, victim)
    mallory = access_token("mallory", "mail:send")
    for index in range(10_000):
        await guard.authorize("send", {"to": "z@x"}, mallory, transport_session=f"c{index}")
        if index == 5_000:
            await guard.authorize("send", {"to": "alice@x"}, victim)  # the victim's session stays in use
    await guard.authorize("send", {"to": "carol@x"}, victim)
    assert guard.shadow is not None and guard.shadow.disagreements["allowed -> denied"] == 2  # bob, then carol
