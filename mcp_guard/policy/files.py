"""Policy files: a YAML or TOML document in, the same `RulePolicy` a Python author would build out.

`load_policy` validates the document against the schema (`PolicyDocument`), builds every rule
(each rule checks its own settings), and then checks the rules against each other: duplicate
ids, rules that can never apply, and rules that contradict each other are refused. Every
problem is reported with its line. `PolicyFile` holds a loaded policy and reloads it in place:
a file that fails to load never replaces the one in force.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import ValidationError

from mcp_guard.model import CallRequest, Decision, Principal, Risk, ToolSpec
from mcp_guard.policy.arguments import ArgumentConstraint
from mcp_guard.policy.document import ConstraintModel, PolicyDocument, RuleModel
from mcp_guard.policy.engine import RulePolicy
from mcp_guard.policy.limits import Counters, LimitRule
from mcp_guard.policy.risk import RiskSettings
from mcp_guard.policy.rules import (
    ArgumentRule,
    DelegationRule,
    PrincipalRule,
    Rule,
    SequenceRule,
    TargetsRule,
    TimeWindowRule,
)
from mcp_guard.policy.source import MAX_POLICY_BYTES, Lines, SourceError, parse_source
from mcp_guard.scopes import ScopeHierarchy

__all__ = ["PolicyFile", "PolicyFileError", "Problem", "load_policy", "parse_policy"]

logger = logging.getLogger("mcp_guard")

R = TypeVar("R")


class Problem(NamedTuple):
    """One thing wrong with a policy document: where (line, key path) and what."""

    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "document"
        return f"{where}: {self.path + ': ' if self.path else ''}{self.message}"


class PolicyFileError(ValueError):
    """A policy document that cannot be loaded, with every problem found and its line."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{source}: {problem}" for problem in self.problems))


CounterTables = dict[tuple[str, str, float | None], Counters]
"""Rate-limit counts by limit rule id, ``per`` and window: each rule counts in a table of its own,
so callers filling one rule's table take no room from another's. A rule whose ``per`` or window
changed counts afresh: the windows open in its old table have the old length."""


def load_policy(path: str | Path, *, counters: CounterTables | None = None) -> RulePolicy:
    """Load the policy in ``path`` (``.toml``, ``.yaml`` or ``.yml``), or raise `PolicyFileError`."""
    text, syntax = _read(Path(path))
    return parse_policy(text, syntax, source=str(path), counters=counters)


def _read(path: Path) -> tuple[str, str]:
    """The text of the policy file ``path`` and its syntax (from its suffix)."""
    syntax = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}.get(path.suffix.lower())
    if syntax is None:
        raise PolicyFileError(str(path), [Problem(None, "", "a policy file ends in .toml, .yaml or .yml")])
    try:
        if path.stat().st_size > MAX_POLICY_BYTES:
            raise PolicyFileError(str(path), [Problem(None, "", f"larger than {MAX_POLICY_BYTES} bytes")])
        return path.read_text(encoding="utf-8"), syntax
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyFileError(str(path), [Problem(None, "", f"cannot read: {error}")]) from None


def parse_policy(
    text: str, syntax: str, *, source: str = "<policy>", counters: CounterTables | None = None
) -> RulePolicy:
    """Build the policy a document's text describes, or raise `PolicyFileError`.

    ``counters`` carries rate-limit counts over from a policy this one replaces (each rule's
    by its id, ``per`` and window); tables for the rules this one adds are added to it.
    """
    try:
        data, lines = parse_source(text, syntax)
    except SourceError as error:
        raise PolicyFileError(source, [Problem(error.line, "", str(error))]) from None
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as error:
        problems = [Problem(_line(lines, item["loc"]), _dotted(item["loc"]), _message(item)) for item in error.errors()]
        raise PolicyFileError(source, problems) from None
    builder = _Builder(document, lines, counters if counters is not None else {})
    policy = builder.build()
    if builder.problems:
        raise PolicyFileError(source, builder.problems)
    assert policy is not None
    return policy


class _Builder:
    """Turns a validated document into rules, collecting every problem on the way."""

    def __init__(self, document: PolicyDocument, lines: Lines, counters: CounterTables) -> None:
        self.document = document
        self.lines = lines
        self.counters = counters
        self.problems: list[Problem] = []

    def problem(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(Problem(_line(self.lines, path), _dotted(path), message))

    def build(self) -> RulePolicy | None:
        document = self.document
        tools = []
        for name, tool in document.tools.items():
            try:
                tools.append(
                    ToolSpec(
                        name,
                        scopes=frozenset(tool.scopes),
                        optional_scopes=frozenset(tool.optional_scopes),
                        risk=Risk(tool.risk),
                        tags=frozenset(tool.tags),
                        data_classes=frozenset(tool.data_classes),
                        owner=tool.owner,
                    )
                )
            except ValueError as error:
                self.problem(("tools", name), str(error))
        rules: list[Rule] = []
        for index, model in enumerate(document.rules):
            rule = self.rule(index, model)
            if rule is not None:
                rules.append(rule)
        risk = None
        if document.risk is not None:
            settings = document.risk
            risk = RiskSettings(
                settings.threshold, settings.denial, settings.read, settings.write, settings.admin, settings.tools
            )
        if self.problems:
            return None
        try:
            policy = RulePolicy(
                rules,
                tools=tools,
                hierarchy=document.scope_hierarchy,
                unlisted=document.unlisted,
                risk=risk,
                id=document.id,
                version=document.revision,
            )
        except ValueError as error:
            self.problem((), str(error))
            return None
        _Consistency(self, policy).check()
        return policy

    def rule(self, index: int, model: RuleModel) -> Rule | None:
        path: tuple[str | int, ...] = ("rules", index)
        selection: dict[str, Any] = {
            "tools": frozenset(model.tools or ()),
            "tags": frozenset(model.tags or ()),
        }
        try:
            if model.allow is not None or model.deny is not None:
                match = model.allow or model.deny
                assert match is not None
                return PrincipalRule(
                    model.id,
                    effect="allow" if model.allow is not None else "deny",
                    issuers=frozenset(match.issuer),
                    subjects=frozenset(match.subject),
                    client_ids=frozenset(match.client_id),
                    claims={name: frozenset(values) for name, values in match.claims.items()},
                    **selection,
                )
            if model.arguments is not None:
                constraints = self.constraints(path, model.arguments)
                return ArgumentRule(model.id, constraints=constraints, **selection) if constraints else None
            if model.sequence is not None:
                return SequenceRule(
                    model.id,
                    after_tags=frozenset(model.sequence.after_tags),
                    after_tools=frozenset(model.sequence.after_tools),
                    **selection,
                )
            if model.targets is not None:
                return TargetsRule(
                    model.id, argument=model.targets.argument, max_targets=model.targets.max, **selection
                )
            if model.limit is not None:
                limit = model.limit
                return LimitRule(
                    model.id,
                    per=limit.per,
                    calls=limit.calls,
                    window=limit.window,
                    counters=self.counters.setdefault((model.id, limit.per, limit.window), Counters()),
                    **selection,
                )
            if model.time_window is not None:
                window = model.time_window
                return TimeWindowRule(
                    model.id,
                    days=frozenset(window.days),
                    start=time.fromisoformat(window.start),
                    end=time.fromisoformat(window.end),
                    timezone=window.timezone,
                    **selection,
                )
            assert model.delegation is not None
            delegation = model.delegation
            return DelegationRule(
                model.id,
                mode=delegation.mode,
                actors=frozenset(delegation.actors),
                max_depth=delegation.max_depth,
                **selection,
            )
        except ValueError as error:
            self.problem((*path, model.kind), str(error))
            return None

    def constraints(
        self, path: tuple[str | int, ...], models: Sequence[ConstraintModel]
    ) -> tuple[ArgumentConstraint, ...]:
        built = []
        for index, model in enumerate(models):
            try:
                built.append(
                    ArgumentConstraint(
                        model.argument,
                        type=model.type,
                        required=model.required,
                        minimum=model.minimum,
                        maximum=model.maximum,
                        min_length=model.min_length,
                        max_length=model.max_length,
                        enum=tuple(model.enum) if model.enum is not None else None,
                        pattern=model.pattern,
                        max_bytes=model.max_bytes,
                        path_roots=tuple(model.path_roots),
                        hosts=tuple(model.hosts),
                        schemes=tuple(model.schemes),
                    )
                )
            except ValueError as error:
                self.problem((*path, "arguments", index), str(error))
        return tuple(built) if len(built) == len(models) else ()


@dataclass
class _Consistency:
    """The checks across rules: what can never apply, and what contradicts."""

    builder: _Builder
    policy: RulePolicy

    def check(self) -> None:
        declared = self.policy.declared
        closed = self.policy.unlisted == "deny"
        declared_tags = {tag for spec in declared.values() for tag in spec.tags}
        for index, rule in enumerate(self.policy.rules):
            path = ("rules", index)
            model = self.builder.document.rules[index]
            if model.tools == [] or model.tags == []:
                self.builder.problem(path, f"rule {rule.id!r} selects no tool: it can never apply")
            if closed:
                for name in sorted(rule.tools - declared.keys()):
                    self.builder.problem(
                        (*path, "tools"),
                        f"rule {rule.id!r} names tool {name!r}, which the policy does not declare and so "
                        "always denies: the rule can never apply",
                    )
                for tag in sorted(rule.tags - declared_tags):
                    self.builder.problem(
                        (*path, "tags"),
                        f"rule {rule.id!r} selects tag {tag!r}, which no tool the policy declares has: it can "
                        "never select a tool by it",
                    )
            if (
                isinstance(rule, SequenceRule)
                and closed
                and rule.after_tags.isdisjoint(declared_tags)
                and rule.after_tools.isdisjoint(declared)
            ):
                self.builder.problem(
                    (*path, "sequence"), f"rule {rule.id!r} follows tools the policy never allows: it never fires"
                )
        index_of = {rule.id: index for index, rule in enumerate(self.policy.rules)}
        for tool in self._tools():
            self._check_tool(tool, index_of)

    def _tools(self) -> Iterator[ToolSpec]:
        """Every tool the rules could meet: the declared ones, and those the rules name."""
        named = {name for rule in self.policy.rules for name in rule.tools}
        yield from self.policy.declared.values()
        for name in sorted(named - self.policy.declared.keys()):
            yield ToolSpec(name)

    def _check_tool(self, tool: ToolSpec, index_of: Mapping[str, int]) -> None:
        rules = self.policy.applicable(self.policy.merged(tool))
        principal_rules = [rule for rule in rules if isinstance(rule, PrincipalRule)]
        for earlier, rule in _pairs(rules):
            if _denies_everyone(earlier):
                self._once(
                    index_of[rule.id],
                    f"rule {rule.id!r} can never change a decision on tool {tool.name!r}: rule {earlier.id!r} "
                    "before it already denies every call",
                )
        for first, second in _pairs(principal_rules):
            if first.effect != second.effect and _same_match(first, second):
                self._once(
                    index_of[second.id],
                    f"rule {second.id!r} {second.effect}s exactly the callers rule {first.id!r} {first.effect}s "
                    f"on tool {tool.name!r}: contradictory",
                )
        allows = [rule for rule in principal_rules if rule.effect == "allow"]
        for field_name in ("issuers", "subjects", "client_ids"):
            sets = [getattr(rule, field_name) for rule in allows if getattr(rule, field_name)]
            if len(sets) > 1 and not frozenset.intersection(*sets):
                self._once(
                    index_of[allows[-1].id],
                    f"the allow rules on tool {tool.name!r} admit disjoint {field_name}: no caller can pass them all",
                )
        modes = {rule.mode: rule for rule in rules if isinstance(rule, DelegationRule)}
        if "forbid" in modes and "require" in modes:
            self._once(
                index_of[modes["require"].id],
                f"rule {modes['require'].id!r} requires delegation on tool {tool.name!r} that rule "
                f"{modes['forbid'].id!r} forbids: contradictory",
            )
        types: dict[str, tuple[str, str]] = {}
        for rule in rules:
            for constraint in rule.constraints if isinstance(rule, ArgumentRule) else ():
                if constraint.type is None:
                    continue
                known = types.setdefault(constraint.argument, (constraint.type, rule.id))
                if known[0] != constraint.type:
                    self._once(
                        index_of[rule.id],
                        f"rule {rule.id!r} types argument {constraint.argument!r} of tool {tool.name!r} as "
                        f"{constraint.type}, rule {known[1]!r} as {known[0]}: contradictory",
                    )

    def _once(self, index: int, message: str) -> None:
        problem = Problem(_line(self.builder.lines, ("rules", index)), f"rules.{index}", message)
        if problem not in self.builder.problems:
            self.builder.problems.append(problem)


def _pairs(rules: Sequence[R]) -> Iterator[tuple[R, R]]:
    for later in range(len(rules)):
        for earlier in range(later):
            yield rules[earlier], rules[later]


def _denies_everyone(rule: Rule) -> bool:
    return isinstance(rule, PrincipalRule) and rule.effect == "deny" and not any(_conditions(rule))


def _conditions(rule: PrincipalRule) -> tuple[Any, ...]:
    return (rule.issuers, rule.subjects, rule.client_ids, tuple(sorted(rule.claims.items(), key=lambda kv: kv[0])))


def _same_match(first: PrincipalRule, second: PrincipalRule) -> bool:
    return _conditions(first) == _conditions(second)


def _line(lines: Lines, loc: Iterable[str | int]) -> int | None:
    """The line of the longest prefix of ``loc`` the document has a line for."""
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _message(error: Any) -> str:
    """A pydantic error as one line: unknown keys and wrong types say so plainly."""
    if error["type"] == "extra_forbidden":
        return "unknown key (not in the policy schema; check its spelling)"
    message = str(error["msg"])
    value = error.get("input")
    if error["type"].endswith("_type") and value is not None:
        message += f", not {type(value).__name__} {ascii(value)[:60]}"
    return message


class PolicyFile:
    """A policy loaded from a file, that reloads in place.

    It is a `Policy` itself: calls are decided by the policy currently in force. `reload`
    swaps in the file's new contents in one step, or raises `PolicyFileError` and keeps the old
    policy; rate-limit counts carry over. `reload_if_changed` reloads only when the file's
    contents changed (call it from a timer or a signal handler).
    """

    abstains = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reloading = threading.Lock()  # reloads one at a time, so the last to finish read the newest file
        self._counters: CounterTables = {}
        self.current: RulePolicy
        self._digest = ""
        self._put_in_force(*_read(self.path))

    @property
    def id(self) -> str:
        return self.current.id

    @property
    def version(self) -> str:
        return self.current.version

    @property
    def risk(self) -> RiskSettings | None:
        return self.current.risk

    @property
    def hierarchy(self) -> ScopeHierarchy:
        return self.current.hierarchy

    def merged(self, tool: ToolSpec) -> ToolSpec:
        return self.current.merged(tool)

    def decide(self, request: CallRequest) -> Decision:
        return self.current.decide(request)

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        return self.current.visible(principal, tool)

    def in_force(self) -> RulePolicy:
        """The revision in force now, which a guard holds to for the whole of one call: a reload
        during the call decides the next one, and does not weigh or name this one."""
        return self.current

    def reload(self) -> RulePolicy:
        """Load the file again and put it in force; on any problem keep the current policy and raise."""
        with self._reloading:
            self._put_in_force(*_read(self.path))
            return self.current

    def reload_if_changed(self) -> bool:
        """Reload when the file's contents changed since the last load; say whether it did.

        Reloads run one at a time, each reading the file once it runs: two started by edits in
        quick succession cannot leave the earlier file in force by finishing last."""
        with self._reloading:
            text, syntax = _read(self.path)
            digest = _digest(text)
            if digest == self._digest:
                return False
            self._put_in_force(text, syntax, digest)
            return True

    def _put_in_force(self, text: str, syntax: str, digest: str | None = None) -> None:
        """Parse ``text`` and put it in force, under ``digest`` (its `_digest`, when worked out already)."""
        counters = dict(self._counters)
        policy = parse_policy(text, syntax, source=str(self.path), counters=counters)
        kept = {(rule.id, rule.per, rule.window) for rule in policy.rules if isinstance(rule, LimitRule)}
        self._counters = {key: table for key, table in counters.items() if key in kept}  # no table outlives its rule
        self.current, self._digest = policy, digest or _digest(text)  # under `_reloading`
        logger.info("mcp-guard: policy %s revision %s loaded from %s", policy.id, policy.version, self.path)


def _digest(text: str) -> str:
    """What tells one revision of a policy file from another."""
    return hashlib.sha256(text.encode()).hexdigest()
