"""What the ``mcp-guard policy`` commands print: explanations, the tool matrix, shadow summaries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mcp_guard.model import Decision
from mcp_guard.policy.engine import RuleOutcome, RulePolicy
from mcp_guard.scopes import format_scope

__all__ = ["explanation", "matrix", "shadow_summary", "table"]


def explanation(decision: Decision, outcomes: Sequence[RuleOutcome]) -> dict[str, Any]:
    """A decision and every rule's answer, as plain data (printed as text or JSON)."""
    return {
        "decision": decision.outcome,
        "reasons": [{"code": reason.code, "message": reason.message} for reason in decision.reasons],
        "requested_scopes": format_scope(decision.requested_scopes),
        "approved_scopes": format_scope(decision.approved_scopes),
        "missing_scopes": format_scope(decision.missing_scopes),
        "policy": f"{decision.policy_id} {decision.policy_version}",
        "rules": [
            {
                "id": outcome.rule_id,
                "kind": outcome.kind,
                "result": "pass" if outcome.passed else "refuse",
                "why": outcome.reason.message if outcome.reason is not None else "",
            }
            for outcome in outcomes
        ],
    }


def matrix(policy: RulePolicy) -> list[dict[str, str]]:
    """One row per declared tool: its risk, required and optional scopes, tags and rules."""
    return [
        {
            "tool": name,
            "risk": str(spec.risk),
            "requires": format_scope(spec.scopes) or "-",
            "may use": format_scope(spec.optional_scopes) or "-",
            "tags": ",".join(sorted(spec.tags)) or "-",
            "rules": ",".join(rule.id for rule in policy.applicable(spec)) or "-",
        }
        for name, spec in sorted(policy.declared.items())
    ]


def shadow_summary(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What the ``policy.disagreed`` events among ``events`` add up to.

    The log is read unverified, so an entry may hold anything: one whose facts are not of the
    types the guard writes is left out of every tally and counted in ``odd_entries``.
    """
    shifts: Counter[str] = Counter()
    tools: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    candidates: Counter[str] = Counter()
    examples: dict[str, str] = {}
    odd = 0
    for event in events:
        if event.get("kind") != "policy.disagreed":
            continue
        if not _as_written(event):
            odd += 1
            continue
        shift = f"{event['decision']} -> {event['candidate_decision']}"
        shifts[shift] += 1
        tools[event["tool"]] += 1
        candidates[f"{event['candidate_policy_id']} {event['candidate_policy_version']}"] += 1
        rules.update(event["candidate_rule_ids"] or ["-"])
        examples.setdefault(shift, event["event_id"])
    return {
        "disagreements": sum(shifts.values()),
        "candidates": dict(candidates.most_common()),
        "by_shift": dict(shifts.most_common()),
        "by_tool": dict(tools.most_common()),
        "by_candidate_rule": dict(rules.most_common()),
        "example_events": examples,
        "odd_entries": odd,
    }


_DISAGREEMENT_TEXTS = (
    "event_id",
    "tool",
    "decision",
    "candidate_decision",
    "candidate_policy_id",
    "candidate_policy_version",
)


def _as_written(event: Mapping[str, Any]) -> bool:
    """Whether a ``policy.disagreed`` event holds the facts the guard writes, typed as it writes
    them: strings, and a list of strings for the candidate's rule ids."""
    rules = event.get("candidate_rule_ids")
    return (
        all(isinstance(event.get(name), str) for name in _DISAGREEMENT_TEXTS)
        and isinstance(rules, list)
        and all(isinstance(rule, str) for rule in rules)
    )


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """``rows`` as a plain text table with a header, columns as wide as their widest cell."""
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)
