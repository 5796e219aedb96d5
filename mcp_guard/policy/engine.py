"""The rule engine: required scopes, then every rule that applies to the tool, indexed by tool.

`RulePolicy` is what a policy file loads into, and what a server author can build in Python
from the same rules. A call is allowed when the tool's required scopes are granted and no
applicable rule refuses (deny overrides); the approved scopes are the grant trimmed to what the
tool may use. Rules are indexed by tool name and tag when a tool is first seen, so a call runs
only the rules that apply to its tool however many rules the policy holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from mcp_guard.memo import remember
from mcp_guard.model import AllowHook, CallRequest, Decision, Principal, Reason, Risk, ToolSpec, in_allow_order
from mcp_guard.policy.risk import RiskSettings
from mcp_guard.policy.rules import Rule, SequenceRule
from mcp_guard.policy.scopes import RULE_REQUIRED_SCOPES, ScopePolicy
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeHierarchy

__all__ = ["RuleOutcome", "RulePolicy", "rule_policies"]

_RISK_ORDER = {Risk.READ: 0, Risk.WRITE: 1, Risk.ADMIN: 2}
_MEMO_LIMIT = 1024
_MERGES_PER_TOOL = 16
"""Merges remembered per declared tool: each guard's decorator spec, and the specs a combination
or the guard hands back already merged (each gives back itself)."""
_ASIDE_PER_TOOL = 4
"""Compiled entries kept aside per tool for further guards sharing the policy."""


class RuleOutcome(NamedTuple):
    """One rule's answer for one call, as `RulePolicy.explain` reports it."""

    rule_id: str
    kind: str
    passed: bool
    reason: Reason | None


@dataclass(slots=True)
class _ToolRules:
    """What the engine precomputes for one tool: its merged declaration and the rules that apply."""

    spec: ToolSpec
    merged: ToolSpec
    listed: bool
    rules: tuple[Rule, ...]
    reaching: tuple[Any, ...]
    hooks: tuple[AllowHook, ...]
    listing: tuple[Any, ...]
    rule_ids: tuple[str, ...]
    memo: dict[tuple[frozenset[str], str | None], Decision]


class RulePolicy:
    """Required scopes plus rules (deny overrides), indexed by tool.

    ``tools`` declares tools as the policy sees them: a declared tool needs the union of the
    scopes its decorator and this declaration require, and weighs as the higher of the two risk
    levels (a declaration that sets what it cannot add, delegation or concealment, is refused).
    ``unlisted`` says what happens to a tool ``tools`` does not declare: ``"deny"``
    (the default when ``tools`` is given) or ``"allow"`` (the default otherwise; its rules and
    required scopes still apply). ``risk`` scores sessions (see `RiskSettings`).
    """

    abstains = False

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        tools: Iterable[ToolSpec] = (),
        hierarchy: ScopeHierarchy | Mapping[str, str | Iterable[str]] | None = None,
        unlisted: Literal["deny", "allow"] | None = None,
        risk: RiskSettings | None = None,
        id: str = "mcp-guard/rules",
        version: str = "1",
    ) -> None:
        self.id = id
        self.version = version
        self.declared: dict[str, ToolSpec] = {}
        for spec in tools:
            if spec.name in self.declared:
                raise ValueError(f"tool {spec.name!r} is declared twice")
            if spec.delegation != "allow" or spec.actors:
                raise ValueError(
                    f"tool {spec.name!r}: a policy limits delegation with a DelegationRule, not a declaration"
                )
            if spec.conceal or spec.redact:
                raise ValueError(
                    f"tool {spec.name!r}: conceal and redact are the tool's own, declared with @guard.tool"
                )
            self.declared[spec.name] = spec
        self.rules: tuple[Rule, ...] = tuple(self._with_declared_tags(rule) for rule in rules)
        self.unlisted = unlisted or ("deny" if self.declared else "allow")
        if self.unlisted not in ("deny", "allow"):
            raise ValueError(f"unlisted must be 'deny' or 'allow', not {self.unlisted!r}")
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        self.risk = risk
        self.scopes = ScopePolicy(hierarchy, id=id, version=version)
        self._by_tool: dict[str, list[int]] = {}
        self._by_tag: dict[str, list[int]] = {}
        self._everywhere: list[int] = []
        for index, rule in enumerate(self.rules):
            if not (rule.tools or rule.tags):
                self._everywhere.append(index)
            for name in rule.tools:
                self._by_tool.setdefault(name, []).append(index)
            for tag in rule.tags:
                self._by_tag.setdefault(tag, []).append(index)
        self._compiled: dict[str, _ToolRules] = {}
        self._aside: dict[int, _ToolRules] = {}
        self._merged: dict[int, tuple[ToolSpec, ToolSpec]] = {}

    def _with_declared_tags(self, rule: Rule) -> Rule:
        """A sequence rule that also follows the tools this policy tags with its ``after_tags``
        by name: a session's history holds the tags the guard saw a tool with, which miss this
        policy's when the policy is wrapped, reloaded, or judged as a shadow."""
        if not isinstance(rule, SequenceRule):
            return rule
        tagged = {name for name, spec in self.declared.items() if not spec.tags.isdisjoint(rule.after_tags)}
        return replace(rule, after_tools=rule.after_tools | tagged) if tagged - rule.after_tools else rule

    @property
    def hierarchy(self) -> ScopeHierarchy:
        """The scope hierarchy the policy widens grants by."""
        return self.scopes.hierarchy

    # -- deciding -------------------------------------------------------------------------------

    def decide(self, request: CallRequest) -> Decision:
        tool = request.tool
        compiled = self._compiled.get(tool.name)
        if compiled is None or compiled.spec is not tool:
            compiled = self._compile(tool)
        principal = request.principal
        if not compiled.listed:
            return self._unlisted(principal, tool)
        key = (principal.scopes, principal.actor_chain[0] if principal.actor_chain else None)
        base = compiled.memo.get(key)
        if base is None:
            base = self._judge(compiled, key)
        if not base.allowed:
            return base
        for rule in compiled.rules:
            reason = rule.check(request)
            if reason is not None:
                return self._refused(principal, (reason,), (rule.id,))
        if not compiled.reaching:
            return base
        targets: tuple[tuple[str, str], ...] = ()
        for rule in compiled.reaching:
            targets += tuple(rule.reached(request))
        return Decision(
            True,
            base.requested_scopes,
            base.approved_scopes,
            base.missing_scopes,
            base.reasons,
            base.rule_ids,
            base.obligations,
            base.policy_id,
            base.policy_version,
            targets,
            base.on_allow,
        )

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        compiled = self._compiled_for(tool)
        return (
            compiled.listed
            and self.scopes.visible(principal, compiled.merged)
            and all(rule.admits(principal) for rule in compiled.listing)
        )

    def explain(self, request: CallRequest) -> tuple[Decision, list[RuleOutcome]]:
        """The decision for ``request`` and every applicable rule's answer, without counting the call."""
        compiled = self._compiled_for(request.tool)
        principal = request.principal
        if not compiled.listed:
            decision = self._unlisted(principal, request.tool)
            return decision, [RuleOutcome("tools.listed", "tools", False, decision.reason)]
        actor = principal.actor_chain[0] if principal.actor_chain else None
        base = self._judge(compiled, (principal.scopes, actor))
        outcomes = [RuleOutcome(RULE_REQUIRED_SCOPES, "scopes", base.allowed, None if base.allowed else base.reason)]
        for rule in compiled.rules:
            reason = rule.check(request)
            outcomes.append(RuleOutcome(rule.id, rule.kind, reason is None, reason))
        refusals = [outcome for outcome in outcomes[1:] if not outcome.passed]
        if not base.allowed or not refusals:
            return base, outcomes
        reasons = tuple(outcome.reason for outcome in refusals if outcome.reason is not None)
        return self._refused(principal, reasons, tuple(outcome.rule_id for outcome in refusals)), outcomes

    # -- indexing -------------------------------------------------------------------------------

    def applicable(self, tool: ToolSpec) -> tuple[Rule, ...]:
        """The rules that apply to ``tool`` (by name, by one of its tags, or to every tool), in order."""
        indexes = set(self._everywhere)
        indexes.update(self._by_tool.get(tool.name, ()))
        for tag in tool.tags:
            indexes.update(self._by_tag.get(tag, ()))
        return tuple(self.rules[index] for index in sorted(indexes))

    def merged(self, tool: ToolSpec) -> ToolSpec:
        """``tool`` as this policy sees it: with what the policy's own declaration of it adds.

        The same ``tool`` always gives back the same object, and a tool that already carries
        the declaration is its own merge, so what is worked out for a merged declaration (by
        this policy, a combination, or the guard's risk weights) is worked out once.
        """
        declared = self.declared.get(tool.name)
        if declared is None:
            return tool
        known = self._merged.get(id(tool))
        if known is not None and known[0] is tool:
            return known[1]
        scopes = tool.scopes | declared.scopes
        merged = replace(
            tool,
            scopes=scopes,
            optional_scopes=(tool.optional_scopes | declared.optional_scopes) - scopes,
            risk=max(tool.risk, declared.risk, key=_RISK_ORDER.__getitem__),
            tags=tool.tags | declared.tags,
            data_classes=tool.data_classes | declared.data_classes,
            owner=tool.owner or declared.owner,
        )
        if merged == tool:
            merged = tool
        return remember(self._merged, id(tool), (tool, merged), _MERGES_PER_TOOL * len(self.declared))[1]

    def _compiled_for(self, tool: ToolSpec) -> _ToolRules:
        """What was precomputed for ``tool``, computed now if this spec is new (``decide`` inlines this)."""
        compiled = self._compiled.get(tool.name)
        return compiled if compiled is not None and compiled.spec is tool else self._compile(tool)

    def _compile(self, tool: ToolSpec) -> _ToolRules:
        """What ``tool`` needs precomputed, made the entry for its name. An entry displaced by
        another spec of the same name (a second guard sharing this policy) is kept aside, so
        guards that take turns swap entries instead of compiling again."""
        aside = self._aside.get(id(tool))
        current = self._compiled.get(tool.name)
        if current is not None:
            remember(self._aside, id(current.spec), current, _ASIDE_PER_TOOL * len(self._compiled) + _MEMO_LIMIT)
        if aside is not None and aside.spec is tool:
            self._compiled[tool.name] = aside
            return aside
        merged = self.merged(tool)
        rules = self.applicable(merged)
        compiled = _ToolRules(
            spec=tool,
            merged=merged,
            listed=self.unlisted == "allow" or tool.name in self.declared,
            rules=rules,
            reaching=tuple(rule for rule in rules if hasattr(rule, "reached")),
            hooks=in_allow_order(rule for rule in rules if isinstance(rule, AllowHook)),
            listing=tuple(rule for rule in rules if hasattr(rule, "admits")),
            rule_ids=(RULE_REQUIRED_SCOPES, *(rule.id for rule in rules)),
            memo={},
        )
        self._compiled[tool.name] = compiled
        return compiled

    def _judge(self, compiled: _ToolRules, key: tuple[frozenset[str], str | None]) -> Decision:
        """The scope decision for ``compiled``'s tool, naming every rule that applies when it allows."""
        decision = self.scopes.judge(compiled.merged, *key)
        if decision.allowed:
            decision = replace(decision, rule_ids=compiled.rule_ids, on_allow=compiled.hooks)
        return remember(compiled.memo, key, decision, _MEMO_LIMIT)

    def _refused(self, principal: Principal, reasons: tuple[Reason, ...], rule_ids: tuple[str, ...]) -> Decision:
        """The denial by the rules named in ``rule_ids``, for the ``reasons`` they gave."""
        return Decision(
            allowed=False,
            requested_scopes=principal.scopes,
            reasons=reasons,
            rule_ids=rule_ids,
            policy_id=self.id,
            policy_version=self.version,
        )

    def _unlisted(self, principal: Principal, tool: ToolSpec) -> Decision:
        return Decision.deny(
            ReasonCode.NO_APPLICABLE_RULE,
            f"Policy {self.id!r} does not list tool {tool.name!r}.",
            requested=principal.scopes,
            rule_id="tools.listed",
            policy_id=self.id,
            policy_version=self.version,
        )


def rule_policies(policy: object) -> Iterator[RulePolicy]:
    """The rule policies in ``policy``: itself, a policy file's current one, a combination's members."""
    if isinstance(policy, RulePolicy):
        yield policy
    current = getattr(policy, "current", None)
    if isinstance(current, RulePolicy):
        yield current
    for member in getattr(policy, "policies", ()):
        yield from rule_policies(member)
