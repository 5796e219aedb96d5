"""Where a policy and the server's tools do not meet.

A rule that names a tool the server never declares, a tag no tool carries, or an argument its
tools do not take can never apply. That is usually a typo or a renamed tool, and when the
rule was meant to restrict, it is a hole nobody sees: the call it should have refused is
allowed. A policy that declares its tools refuses the worst of these when it loads; an open
one cannot know the server's tools, so the guard checks them against its registry
(`Guard.policy_gaps`), for a test or a start-up check.
"""

from __future__ import annotations

from collections.abc import Mapping

from mcp_guard.model import ToolSpec
from mcp_guard.policy.arguments import ArgumentPath
from mcp_guard.policy.base import Policy
from mcp_guard.policy.engine import RulePolicy, rule_policies
from mcp_guard.policy.rules import ArgumentRule, Rule, SequenceRule, TargetsRule

__all__ = ["policy_gaps"]


def policy_gaps(
    policy: Policy, tools: Mapping[str, ToolSpec], loose: Mapping[str, frozenset[str]] | None = None
) -> list[str]:
    """Every name the rule policies inside ``policy`` use that ``tools`` (as the policy sees
    them) do not have, one sentence each; empty when everything meets. ``loose`` names, per
    tool, the parameters whose models take some field under several names: a dotted path into
    one can miss a value sent under another name."""
    tags = {tag for spec in tools.values() for tag in spec.tags}
    gaps: list[str] = []
    for rules in rule_policies(policy):
        gaps += [
            f"policy {rules.id!r} declares tool {name!r}, which the server does not"
            for name in sorted(rules.declared.keys() - tools.keys())
        ]
        for rule in rules.rules:
            gaps += [
                f"rule {rule.id!r} names tool {name!r}, which the server does not declare: it never applies"
                for name in sorted(rule.tools - tools.keys())
            ]
            gaps += [
                f"rule {rule.id!r} selects tag {tag!r}, which no declared tool has"
                + (": it never applies" if rule.tags.isdisjoint(tags) else "")
                for tag in sorted(rule.tags - tags)
            ]
            if isinstance(rule, SequenceRule):
                gaps += [
                    f"rule {rule.id!r} follows tool {name!r}, which the server does not declare"
                    for name in sorted(rule.after_tools - tools.keys() - rules.declared.keys())  # said above
                ]
                gaps += [
                    f"rule {rule.id!r} follows tag {tag!r}, which no declared tool has"
                    for tag in sorted(rule.after_tags - tags)
                ]
            arguments = _arguments(rule)
            if arguments:
                gaps += _unknown_arguments(rules, rule, arguments, tools)
                gaps += _loose_paths(rules, rule, tools, loose or {})
    return gaps


def _paths(rule: Rule) -> tuple[str, ...]:
    """The argument paths ``rule`` reads."""
    if isinstance(rule, ArgumentRule):
        return tuple(constraint.argument for constraint in rule.constraints)
    if isinstance(rule, TargetsRule):
        return (rule.argument,)
    return ()


def _arguments(rule: Rule) -> tuple[str, ...]:
    """The top-level argument names ``rule`` reads."""
    return tuple(ArgumentPath(path).root for path in _paths(rule))


def _loose_paths(
    policy: RulePolicy, rule: Rule, tools: Mapping[str, ToolSpec], loose: Mapping[str, frozenset[str]]
) -> list[str]:
    """The dotted paths ``rule`` reads into a parameter whose model also takes other names."""
    return [
        f"rule {rule.id!r} reads {path!r} inside parameter {ArgumentPath(path).root!r} of tool {name!r}, whose "
        "model also takes some of its fields under other names: a value sent under one of those escapes the rule"
        for name, spec in tools.items()
        if loose.get(name) and rule in policy.applicable(spec)
        for path in _paths(rule)
        if "." in path and ArgumentPath(path).root in loose[name]
    ]


def _unknown_arguments(
    policy: RulePolicy, rule: Rule, arguments: tuple[str, ...], tools: Mapping[str, ToolSpec]
) -> list[str]:
    """The arguments ``rule`` reads that no tool it applies to takes (by their input schemas).

    A tool whose parameters are unknown, or that takes any argument, may take every one.
    """
    taken: set[str] = set()
    names: list[str] = []
    for spec in tools.values():
        if rule not in policy.applicable(spec):
            continue
        schema = spec.input_schema or {}
        parameters = schema.get("properties")
        if not isinstance(parameters, Mapping) or schema.get("additionalProperties"):
            return []
        taken.update(parameters)
        names.append(spec.name)
    if not names:
        return []
    return [
        f"rule {rule.id!r} reads argument {name!r}, which no tool it applies to takes ({', '.join(sorted(names))})"
        for name in dict.fromkeys(arguments)
        if name not in taken
    ]
