"""Combinators: several policies judged as one, with the semantics spelled out.

Each member answers allow, deny or abstain (None). How the answers combine:

- `AllOf` — allowed only when every member allows; the first denial or abstention decides
  (an abstaining member counts as a denial: "all of" means all of them said yes).
- `AnyOf` — allowed when some member allows (the first one decides); otherwise denied with
  every member's reasons, or abstains when every member abstained.
- `FirstApplicable` — the first member that does not abstain decides; abstains when all do.
- `DenyOverrides` — every member is asked; any denial denies (with all the denials' reasons);
  otherwise any allow allows; abstains when all abstain.

An allowed decision approves only the scopes every allowing member approved (the intersection),
so a combination can never widen what one member trimmed. Its ``rule_ids`` name the rules of
every member that allowed; a denial names the rules that denied. A member may answer
asynchronously; the combination then does too, and asks the remaining members in order.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import replace
from typing import TypeVar

from mcp_guard.memo import remember
from mcp_guard.model import CallRequest, Decision, Principal, ToolSpec, in_allow_order
from mcp_guard.policy.base import Policy, PolicyFunction, Verdict, as_policy, in_force, may_abstain
from mcp_guard.policy.risk import CombinedRisk, RiskScoring
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeHierarchy

__all__ = ["AllOf", "AnyOf", "DenyOverrides", "FirstApplicable"]

T = TypeVar("T")

_DESCRIBED_LIMIT = 16_384
"""Described specs remembered, by the spec they describe (one per tool and guard sharing the policy)."""


class _Combination:
    """The members, the walk over them (sync until one answers asynchronously), and the merge."""

    name = "combination"
    binds_every_member = True
    """Whether every member must allow (`AllOf`, `DenyOverrides`), so the scopes one member
    requires bind the others too; alternatives (`AnyOf`, `FirstApplicable`) share only what
    describes a tool."""

    def __init__(self, *policies: Policy | PolicyFunction, id: str | None = None, version: str = "1") -> None:
        if not policies:
            raise ValueError(f"{type(self).__name__} needs at least one policy")
        self.policies: tuple[Policy, ...] = tuple(as_policy(policy) for policy in policies)
        self.id = id or f"{self.name}({', '.join(policy.id for policy in self.policies)})"
        self.version = version
        self._described: dict[int, tuple[ToolSpec, ToolSpec, ToolSpec]] = {}
        self._pinned: tuple[tuple[Policy, ...], Policy] = (self.policies, self)
        """The members last held, and the combination of them (a copy is made per revision)."""
        self._risk: tuple[tuple[RiskScoring, ...], RiskScoring | None] = ((), None)
        """The members' risk settings last read, and the scoring they make together."""

    def in_force(self) -> Policy:
        """This combination with each member that reloads (a `PolicyFile`) held to its revision
        in force now, for one call; itself when none does. The same revisions give the same
        copy, so a call pays for a copy only after a reload."""
        held = tuple(in_force(policy) for policy in self.policies)
        known, pinned = self._pinned
        if all(now is before for now, before in zip(held, known, strict=True)):
            return pinned
        pinned = copy.copy(self)
        pinned.policies = held
        self._pinned = (held, pinned)
        return pinned

    @property
    def abstains(self) -> bool:
        """Whether the combination may answer None: only when every member may."""
        return all(may_abstain(policy) for policy in self.policies)

    def decide(self, request: CallRequest) -> Verdict | Awaitable[Verdict]:
        if self.binds_every_member:  # nested in an alternative, the tool comes without the members' scopes
            tool = self.merged(request.tool)
            if tool is not request.tool:
                request = request._replace(tool=tool)
        verdicts: list[Verdict] = []
        for index, policy in enumerate(self.policies):
            verdict = policy.decide(request)
            if inspect.isawaitable(verdict):
                return self._decide_async(request, verdicts, verdict, index)
            if self._settled(_checked(verdict, policy), verdicts):
                break
        return self._merge(request, verdicts)

    async def _decide_async(
        self, request: CallRequest, verdicts: list[Verdict], pending: Awaitable[Verdict], index: int
    ) -> Verdict:
        if not self._settled(_checked(await pending, self.policies[index]), verdicts):
            for policy in self.policies[index + 1 :]:
                verdict = policy.decide(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if self._settled(_checked(verdict, policy), verdicts):
                    break
        return self._merge(request, verdicts)

    def _settled(self, verdict: Verdict, verdicts: list[Verdict]) -> bool:
        """Add ``verdict``; say whether the combination is decided without asking further members."""
        verdicts.append(verdict)
        return False

    def _merge(self, request: CallRequest, verdicts: Sequence[Verdict]) -> Verdict:
        raise NotImplementedError

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        tool = self.merged(tool)
        return all(policy.visible(principal, tool) for policy in self.policies)

    @property
    def hierarchy(self) -> ScopeHierarchy | None:
        """The scope hierarchy of the first member that has one (for HTTP step-up challenges)."""
        for policy in self.policies:
            hierarchy = getattr(policy, "hierarchy", None)
            if isinstance(hierarchy, ScopeHierarchy):
                return hierarchy
        return None

    def merged(self, tool: ToolSpec) -> ToolSpec:
        """``tool`` with what each member's own declaration of it adds: its tags, risk level and
        data classes always, its required scopes only when every member must allow.

        The same ``tool`` gives back the same object while the members' declarations stay.
        """
        merged = tool
        for policy in self.policies:
            merge = getattr(policy, "merged", None)
            if callable(merge):
                merged = merge(merged)
        if merged is tool or self.binds_every_member:
            return merged
        known = self._described.get(id(tool))
        if known is not None and known[0] is tool and known[1] is merged:
            return known[2]
        described = replace(merged, scopes=tool.scopes, optional_scopes=tool.optional_scopes)
        if described == tool:
            described = tool
        return remember(self._described, id(tool), (tool, merged, described), _DESCRIBED_LIMIT)[2]

    @property
    def risk(self) -> RiskScoring | None:
        """The risk settings of every member that carries any (a policy file's), combined, so
        combining a policy never drops its risk threshold: the session ends as soon as any of
        them would end it. Worked out again only when a member's settings change (a reload)."""
        settings = tuple(risk for policy in self.policies if (risk := getattr(policy, "risk", None)) is not None)
        known, combined = self._risk
        if len(settings) != len(known) or any(now is not before for now, before in zip(settings, known, strict=False)):
            combined = CombinedRisk.of(settings)
            self._risk = (settings, combined)
        return combined

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.policies))})"

    # -- merging ------------------------------------------------------------------------------

    def _allowed(self, request: CallRequest, allows: Sequence[Decision]) -> Decision:
        approved = allows[0].approved_scopes
        for decision in allows[1:]:
            approved &= decision.approved_scopes
        return Decision(
            allowed=True,
            requested_scopes=request.principal.scopes,
            approved_scopes=approved,
            reasons=allows[0].reasons,
            rule_ids=_joined(decision.rule_ids for decision in allows),
            obligations=_joined(decision.obligations for decision in allows),  # each allowing member's stand
            policy_id=self.id,
            policy_version=self.version,
            targets=tuple(target for decision in allows for target in decision.targets),
            on_allow=allows[0].on_allow  # one decision's hooks are in order already
            if len(allows) == 1
            else in_allow_order({id(hook): hook for decision in allows for hook in decision.on_allow}.values()),
        )

    def _denied(self, request: CallRequest, denials: Sequence[Decision]) -> Decision:
        if len(denials) == 1 and denials[0].policy_id == self.id:
            return denials[0]
        missing: frozenset[str] = frozenset()
        for decision in denials:
            missing |= decision.missing_scopes
        return Decision(
            allowed=False,
            requested_scopes=request.principal.scopes,
            missing_scopes=missing,
            reasons=_joined(decision.reasons for decision in denials),
            rule_ids=_joined(decision.rule_ids for decision in denials),
            policy_id=self.id,
            policy_version=self.version,
        )

    def _abstained(self, request: CallRequest, policy: Policy) -> Decision:
        return Decision.deny(
            ReasonCode.NO_APPLICABLE_RULE,
            f"Policy {policy.id!r} has no rule for this call.",
            requested=request.principal.scopes,
            policy_id=self.id,
            policy_version=self.version,
        )


class AllOf(_Combination):
    """Allowed only when every member allows; the first denial or abstention decides."""

    name = "all_of"
    abstains = False  # a member's abstention is its denial

    def _settled(self, verdict: Verdict, verdicts: list[Verdict]) -> bool:
        verdicts.append(verdict)
        return verdict is None or not verdict.allowed

    def _merge(self, request: CallRequest, verdicts: Sequence[Verdict]) -> Verdict:
        last = verdicts[-1]
        if last is None:
            return self._abstained(request, self.policies[len(verdicts) - 1])
        if not last.allowed:
            return self._denied(request, [last])
        return self._allowed(request, [verdict for verdict in verdicts if verdict is not None])


class AnyOf(_Combination):
    """Allowed when some member allows (the first that does decides); else every denial's reasons."""

    name = "any_of"
    binds_every_member = False

    def _settled(self, verdict: Verdict, verdicts: list[Verdict]) -> bool:
        verdicts.append(verdict)
        return verdict is not None and verdict.allowed

    def _merge(self, request: CallRequest, verdicts: Sequence[Verdict]) -> Verdict:
        last = verdicts[-1]
        if last is not None and last.allowed:
            return self._allowed(request, [last])
        denials = [verdict for verdict in verdicts if verdict is not None]
        return self._denied(request, denials) if denials else None

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        return any(policy.visible(principal, tool) for policy in self.policies)


class FirstApplicable(_Combination):
    """The first member that does not abstain decides; abstains when all do."""

    name = "first_applicable"
    binds_every_member = False

    def _settled(self, verdict: Verdict, verdicts: list[Verdict]) -> bool:
        verdicts.append(verdict)
        return verdict is not None

    def _merge(self, request: CallRequest, verdicts: Sequence[Verdict]) -> Verdict:
        last = verdicts[-1]
        if last is None:
            return None
        return self._allowed(request, [last]) if last.allowed else self._denied(request, [last])

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        """Listed when a member that may decide the call would list it: members are passed over
        only while earlier ones may abstain, so one that always decides and refuses every call
        to the tool hides it (a concealed tool stays concealed)."""
        for policy in self.policies:
            if policy.visible(principal, tool):
                return True
            if not may_abstain(policy):
                return False
        return False


class DenyOverrides(_Combination):
    """Every member is asked; any denial denies; otherwise any allow allows; abstains if all abstain."""

    name = "deny_overrides"

    def _merge(self, request: CallRequest, verdicts: Sequence[Verdict]) -> Verdict:
        denials = [verdict for verdict in verdicts if verdict is not None and not verdict.allowed]
        if denials:
            return self._denied(request, denials)
        allows = [verdict for verdict in verdicts if verdict is not None]
        return self._allowed(request, allows) if allows else None


def _checked(verdict: object, policy: Policy) -> Verdict:
    """``verdict`` when it is a decision or None; a policy answering anything else is broken."""
    if verdict is None or isinstance(verdict, Decision):
        return verdict
    raise TypeError(f"policy {policy.id!r} returned {type(verdict).__name__}, not a Decision or None")


def _joined(groups: Iterable[tuple[T, ...]]) -> tuple[T, ...]:
    """The items of ``groups`` in order, each once."""
    return tuple(dict.fromkeys(item for group in groups for item in group))
