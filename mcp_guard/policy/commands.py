"""The ``mcp-guard policy`` commands: check, explain, matrix, diff, schema, cedar-schema."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from mcp_guard.errors import Refused
from mcp_guard.identity.delegation import DEPTH_LIMIT, actor_chain
from mcp_guard.model import CallRequest, Decision, ToolSpec
from mcp_guard.policy.cedar_schema import NAMESPACE
from mcp_guard.policy.document import policy_json_schema
from mcp_guard.policy.engine import RuleOutcome, RulePolicy
from mcp_guard.policy.files import PolicyFileError, load_policy
from mcp_guard.policy.report import explanation, matrix, shadow_summary, table
from mcp_guard.reasons import ReasonCode
from mcp_guard.testing import call_request
from mcp_guard.text import escaped

__all__ = ["add_policy_commands", "instant"]

Events = Callable[[Sequence[str]], Iterator[dict[str, Any]]]

_MATRIX = ("tool", "risk", "requires", "may use", "tags", "rules")


_WHOLE = 10_000
"""Characters of a logged value `policy diff` shows, escaped: a name in full, a forged one bounded."""


def add_policy_commands(commands: Any, events: Events) -> None:
    """Add ``policy`` and its actions to the ``mcp-guard`` parser; ``events`` reads audit logs."""
    policy = commands.add_parser("policy", help="check, explain and compare policies").add_subparsers(
        required=True, metavar="ACTION"
    )
    check = policy.add_parser("check", help="validate policy files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_check)

    explain = policy.add_parser("explain", help="the decision on one call, and every rule's answer")
    explain.add_argument("file", metavar="FILE")
    explain.add_argument("--tool", required=True)
    explain.add_argument("--scopes", default="", help="the granted scopes, space-delimited")
    explain.add_argument("--args", type=_json_object, default={}, help="the call's arguments, a JSON object")
    explain.add_argument("--claims", type=_json_object, default={}, help="token claims, a JSON object")
    explain.add_argument("--subject", default="agent-1")
    explain.add_argument("--client-id", default="test-client")
    explain.add_argument("--issuer", default="https://auth.example.test")
    explain.add_argument("--actor", action="append", default=[], help="the acting agent, outermost first")
    explain.add_argument("--after", action="append", default=[], metavar="TOOL", help="a tool the session ran")
    explain.add_argument("--at", type=instant, help="when: ISO 8601 or seconds since the epoch (default now)")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.set_defaults(run=_explain)

    grid = policy.add_parser("matrix", help="tools x scopes x risk")
    grid.add_argument("file", metavar="FILE")
    grid.add_argument("--format", choices=["table", "json"], default="table")
    grid.set_defaults(run=_matrix)

    diff = policy.add_parser("diff", help="summarise a shadow policy's disagreements in audit logs")
    diff.add_argument("files", nargs="+", metavar="LOG")
    diff.add_argument("--format", choices=["text", "json"], default="text")
    diff.set_defaults(run=lambda args: _diff(args, events))

    schema = policy.add_parser("schema", help="the JSON Schema of policy files")
    schema.set_defaults(run=_schema)

    cedar = policy.add_parser("cedar-schema", help="the Cedar schema of a server's registered tools")
    cedar.add_argument("guard", metavar="MODULE:GUARD", help="where the server's Guard is, e.g. server:guard")
    cedar.add_argument("--namespace", default=NAMESPACE)
    cedar.set_defaults(run=_cedar_schema)


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyFileError as error:
            failed += 1
            print(error)
            continue
        print(
            f"{path}: ok (policy {policy.id} revision {policy.version}: "
            f"{len(policy.declared)} tools, {len(policy.rules)} rules)"
        )
    return 1 if failed else 0


def _explain(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    tool = policy.declared.get(args.tool) or ToolSpec(args.tool)
    earlier = [policy.declared.get(name) or ToolSpec(name) for name in args.after]
    request = call_request(
        tool,
        args.args,
        scopes=args.scopes,
        subject=args.subject,
        client_id=args.client_id,
        issuer=args.issuer,
        claims=args.claims,
        actor_chain=_actors(args.actor, args.claims),
        earlier=earlier,
        at=args.at,
    )
    decision, outcomes = _weighed(policy, request, *policy.explain(request), earlier)
    report = explanation(decision, outcomes)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.tool}: {report['decision']} by {report['policy']}")
        for reason in report["reasons"]:
            print(f"  {reason['code']}: {reason['message']}")
        for name in ("requested_scopes", "approved_scopes", "missing_scopes"):
            print(f"  {name.replace('_', ' ')}: {report[name] or '-'}")
        print(table(report["rules"], ("id", "kind", "result", "why")))
    return 0 if decision.allowed else 1


def _actors(given: Sequence[str], claims: dict[str, Any]) -> tuple[str, ...]:
    """The actor chain as the guard reads it: from ``--actor``, or the ``act`` claim in
    ``--claims`` (a decoded token pasted in); both must agree when both are given."""
    if "act" not in claims:
        return tuple(given)
    try:
        chain = actor_chain(claims["act"], DEPTH_LIMIT)
    except Refused as refusal:
        raise ValueError(f"--claims: {refusal.message}") from None
    if given and tuple(given) != chain:
        raise ValueError(f"--actor {list(given)} and the act claim {list(chain)} name different actors")
    return chain


def _weighed(
    policy: RulePolicy,
    request: CallRequest,
    decision: Decision,
    outcomes: Sequence[RuleOutcome],
    earlier: Sequence[ToolSpec],
) -> tuple[Decision, list[RuleOutcome]]:
    """The decision once the policy's risk threshold has weighed the call, as the guard weighs
    it: the calls the session ran (``--after``, allowed) and this one, on a fresh session."""
    risk = policy.risk
    if risk is None or not decision.allowed:
        return decision, list(outcomes)
    score = sum(risk.weight(decision, spec) for spec in earlier) + risk.weight(decision, request.tool)
    if not risk.reached(score):
        return decision, [*outcomes, RuleOutcome("risk", "risk", True, None)]
    refused = Decision.deny(
        ReasonCode.SESSION_RISK_EXCEEDED,
        f"the session's risk score would reach {score:g}; its threshold is {risk.threshold:g}",
        requested=decision.requested_scopes,
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
    )
    return refused, [*outcomes, RuleOutcome("risk", "risk", False, refused.reason)]


def _matrix(args: argparse.Namespace) -> int:
    rows = matrix(_load(args.file))
    print(json.dumps(rows, indent=2) if args.format == "json" else table(rows, _MATRIX))
    return 0


def _diff(args: argparse.Namespace, events: Events) -> int:
    summary = shadow_summary(events(args.files))
    if args.format == "json":
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['disagreements']} disagreements")
    if summary["odd_entries"]:
        print(
            f"{summary['odd_entries']} policy.disagreed entries left out: their facts are not as "
            "mcp-guard writes them (check the log with mcp-guard audit verify)"
        )
    for title, key in (
        ("candidate policy", "candidates"),
        ("enforced -> candidate", "by_shift"),
        ("tool", "by_tool"),
        ("candidate rule", "by_candidate_rule"),
    ):
        if summary[key]:
            rows = [{title: escaped(name, _WHOLE), "calls": count} for name, count in summary[key].items()]
            print()
            print(table(rows, (title, "calls")))
    for shift, event_id in summary["example_events"].items():
        print(
            f"\nexample of {escaped(shift, _WHOLE)}: mcp-guard audit show {escaped(event_id, _WHOLE)} {' '.join(args.files)}"
        )
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(policy_json_schema(), indent=2))
    return 0


def _cedar_schema(args: argparse.Namespace) -> int:
    from mcp_guard.guard import Guard
    from mcp_guard.policy.cedar import cedar_schema

    module_name, _, attribute = args.guard.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"give the guard as MODULE:ATTRIBUTE, not {args.guard!r}")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # not found, or failing as it loads (a syntax error, its own code)
        raise ValueError(f"cannot import {module_name!r}: {type(error).__name__}: {error}") from None
    guard = getattr(module, attribute, None)
    if not isinstance(guard, Guard):
        raise ValueError(f"{args.guard} is not a mcp_guard.Guard")
    print(json.dumps(cedar_schema(guard.tools.values(), namespace=args.namespace), indent=2))
    return 0


def _load(path: str) -> RulePolicy:
    try:
        return load_policy(path)
    except PolicyFileError as error:
        raise ValueError(str(error)) from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("nested too deeply") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def instant(text: str) -> float:
    """A time given as ISO 8601 (read first: ``20261120`` is a date, not seconds), in UTC unless
    it names its offset (as records are written and shown, whatever the host's zone), or as
    seconds since the epoch within the years a date can have (1 to 9999)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    try:
        datetime.fromtimestamp(seconds, UTC)  # a time a clock can show: finite, within years 1 to 9999
    except (OverflowError, OSError, ValueError):
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    return seconds
