"""The built-in rules: each checks one thing about a call and says why it refuses.

A rule names the tools it applies to (``tools``, ``tags``; neither means every tool) and
answers `check` with None (the call passes) or the `Reason` it refuses. The rule engine
(`RulePolicy`) indexes rules by tool and runs every rule that applies, so a call is allowed
only when none refuses. A rule that remembers what allowed calls did also says what to
remember: ``reached`` names the targets the session records, and ``on_allow`` (rate limits)
hears of each call once it is finally allowed.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, ClassVar, Literal, Protocol
from zoneinfo import ZoneInfo

from mcp_guard.errors import Refused
from mcp_guard.model import CallRequest, Delegation, Principal, Reason, collection
from mcp_guard.policy.arguments import MISSING, ArgumentConstraint, ArgumentPath
from mcp_guard.policy.scopes import delegation_refusal
from mcp_guard.reasons import ReasonCode

__all__ = [
    "DAYS",
    "ArgumentRule",
    "DelegationRule",
    "PrincipalRule",
    "Rule",
    "SelectedRule",
    "SequenceRule",
    "TargetsRule",
    "TimeWindowRule",
]

_DELEGATION_WHY = {
    ReasonCode.DELEGATION_REQUIRED: "only an agent acting for someone may",
    ReasonCode.DELEGATION_FORBIDDEN: "it may not be called on someone's behalf",
    ReasonCode.ACTOR_NOT_ALLOWED: "this acting agent may not call it",
}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TARGET_LIMIT = 512
_TARGETS_PER_CALL = 1000


class Rule(Protocol):
    """One check on calls to the tools it selects (by name or tag; neither: every tool)."""

    kind: ClassVar[str]

    @property
    def id(self) -> str: ...

    @property
    def tools(self) -> frozenset[str]: ...

    @property
    def tags(self) -> frozenset[str]: ...

    def check(self, request: CallRequest) -> Reason | None: ...


@dataclass(frozen=True, slots=True)
class SelectedRule:
    """The fields every built-in rule has: its id and the tools it selects.

    A rule that checks its own settings calls ``SelectedRule.__post_init__`` first.
    """

    id: str
    tools: frozenset[str] = field(default=frozenset(), kw_only=True)
    tags: frozenset[str] = field(default=frozenset(), kw_only=True)

    def __post_init__(self) -> None:
        self._hold_as_sets("tools", "tags")

    def _hold_as_sets(self, *names: str) -> None:
        """Hold each named setting as a frozenset, whatever collection it was given as."""
        for name in names:
            object.__setattr__(self, name, frozenset(collection(getattr(self, name), f"rule {self.id!r}: {name}")))

    def _refuse(self, code: str, request: CallRequest, why: str) -> Reason:
        return Reason(str(code), f"Rule {self.id!r} refuses tool {request.tool.name!r}: {why}.")


@dataclass(frozen=True, slots=True)
class PrincipalRule(SelectedRule):
    """Allow only the callers that match (``effect="allow"``), or refuse those that do (``"deny"``).

    A caller matches when every attribute given matches: its issuer, subject and client id are
    among those listed, and for each claim listed the token's claim (a string or a list of
    strings, such as ``groups`` or ``roles``) holds one of the values. An allow rule names at
    least one attribute, and a claim at least one value: either left empty by mistake (a list
    that rendered empty) would otherwise admit every caller, or match none.
    """

    kind: ClassVar[str] = "principal"
    effect: Literal["allow", "deny"] = "allow"
    issuers: frozenset[str] = frozenset()
    subjects: frozenset[str] = frozenset()
    client_ids: frozenset[str] = frozenset()
    claims: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        SelectedRule.__post_init__(self)
        self._hold_as_sets("issuers", "subjects", "client_ids")
        claims = {
            name: frozenset(collection(values, f"rule {self.id!r}: claim {name!r}"))
            for name, values in self.claims.items()
        }
        object.__setattr__(self, "claims", claims)
        if self.effect not in ("allow", "deny"):
            raise ValueError(f"rule {self.id!r}: effect must be 'allow' or 'deny', not {self.effect!r}")
        if self.effect == "allow" and not (self.issuers or self.subjects or self.client_ids or self.claims):
            raise ValueError(f"rule {self.id!r} allows callers but names none: it would admit every caller")
        for name, wanted in self.claims.items():
            if not wanted:
                raise ValueError(f"rule {self.id!r}: claim {name!r} lists no value, so no caller could match it")

    def matches(self, principal: Principal) -> bool:
        if self.issuers and principal.issuer not in self.issuers:
            return False
        if self.subjects and principal.subject not in self.subjects:
            return False
        if self.client_ids and principal.client_id not in self.client_ids:
            return False
        claims = principal.claims
        for name, wanted in self.claims.items():
            value = claims.get(name)
            if type(value) is str:
                if value not in wanted:
                    return False
            elif type(value) is list or type(value) is tuple:
                for item in value:
                    if type(item) is str and item in wanted:
                        break
                else:
                    return False
            else:
                return False
        return True

    def admits(self, principal: Principal) -> bool:
        """Whether the rule lets ``principal`` call its tools at all (for ``tools/list``)."""
        return self.matches(principal) is (self.effect == "allow")

    def check(self, request: CallRequest) -> Reason | None:
        if self.matches(request.principal) is (self.effect == "allow"):
            return None
        return self._refuse(ReasonCode.PRINCIPAL_NOT_ALLOWED, request, "this caller may not call it")


@dataclass(frozen=True, slots=True)
class DelegationRule(SelectedRule):
    """Whether calls on someone's behalf (RFC 8693 ``act``) are allowed, forbidden or required,
    by which current actors, and through how many hops (``max_depth``)."""

    kind: ClassVar[str] = "delegation"
    mode: Delegation = "allow"
    actors: frozenset[str] = frozenset()
    max_depth: int | None = None

    def __post_init__(self) -> None:
        SelectedRule.__post_init__(self)
        self._hold_as_sets("actors")
        if self.mode not in ("allow", "forbid", "require"):
            raise ValueError(f"rule {self.id!r}: mode must be 'allow', 'forbid' or 'require', not {self.mode!r}")
        if self.mode == "forbid" and (self.actors or self.max_depth is not None):
            raise ValueError(f"rule {self.id!r} forbids delegation but also limits actors or depth: contradictory")
        if self.max_depth is not None and self.max_depth < (1 if self.mode == "require" else 0):
            raise ValueError(f"rule {self.id!r}: max_depth {self.max_depth} leaves no call allowed")

    def admits(self, principal: Principal) -> bool:
        """Whether the rule lets ``principal`` call its tools at all (for ``tools/list``)."""
        return self._refusal(principal.actor_chain) is None

    def check(self, request: CallRequest) -> Reason | None:
        refusal = self._refusal(request.principal.actor_chain)
        return None if refusal is None else self._refuse(refusal[0], request, refusal[1])

    def _refusal(self, chain: tuple[str, ...]) -> tuple[str, str] | None:
        code = delegation_refusal(self.mode, self.actors, chain[0] if chain else None)
        if code is not None:
            return code, _DELEGATION_WHY[code]
        if self.max_depth is not None and len(chain) > self.max_depth:
            return ReasonCode.DELEGATION_TOO_DEEP, f"at most {self.max_depth} delegation hops are allowed"
        return None


@dataclass(frozen=True, slots=True)
class ArgumentRule(SelectedRule):
    """The call's arguments must meet every constraint (types, ranges, patterns, paths, hosts...)."""

    kind: ClassVar[str] = "arguments"
    constraints: tuple[ArgumentConstraint, ...] = ()

    def __post_init__(self) -> None:
        SelectedRule.__post_init__(self)
        if not self.constraints:
            raise ValueError(f"rule {self.id!r} constrains no argument")
        types: dict[str, str] = {}
        for constraint in self.constraints:
            if constraint.type is None:
                continue
            known = types.setdefault(constraint.argument, constraint.type)
            if known != constraint.type:
                raise ValueError(
                    f"rule {self.id!r}: argument {constraint.argument!r} cannot be both {known} and "
                    f"{constraint.type}: contradictory"
                )

    def check(self, request: CallRequest) -> Reason | None:
        """The first constraint the arguments break. Its message quotes the value, unless the
        tool redacts the argument: the message reaches the caller, spans and logs."""
        for constraint in self.constraints:
            violation = constraint.violation(request.arguments)
            if violation is not None:
                redact = request.tool.redact
                if redact and not redact.isdisjoint(constraint.argument.split(".")):
                    violation = f"argument {constraint.argument!r} is refused (its value is redacted, so not shown)"
                return self._refuse(ReasonCode.ARGUMENT_REJECTED, request, violation)
        return None


@dataclass(frozen=True, slots=True)
class SequenceRule(SelectedRule):
    """Once the session has run a tool tagged with one of ``after_tags`` (or named in
    ``after_tools``), the selected tools are refused for the rest of the session: for example,
    no tool tagged ``egress`` after any tool tagged ``secrets``."""

    kind: ClassVar[str] = "sequence"
    allow_order: ClassVar[int] = 0
    """It only judges: told first, it refuses before any other rule takes anything."""
    after_tags: frozenset[str] = frozenset()
    after_tools: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        SelectedRule.__post_init__(self)
        self._hold_as_sets("after_tags", "after_tools")
        if not (self.after_tags or self.after_tools):
            raise ValueError(f"rule {self.id!r}: a sequence rule needs after_tags or after_tools")

    def check(self, request: CallRequest) -> Reason | None:
        history = request.session.history
        if history.tags.isdisjoint(self.after_tags) and history.tools.isdisjoint(self.after_tools):
            return None
        earlier = [f"tool {name}" for name in sorted(history.tools & self.after_tools)]
        earlier += [f"a tool tagged {tag}" for tag in sorted(history.tags & self.after_tags)]
        return self._refuse(
            ReasonCode.SEQUENCE_FORBIDDEN, request, f"it may not run after {' or '.join(earlier)} in this session"
        )

    def on_allow(self, request: CallRequest) -> None:
        """Judge ``request`` again on the session's history as it is now that the call is
        finally allowed: a call allowed meanwhile (while an asynchronous policy decided) may
        have run a tool this rule follows."""
        reason = self.check(request)
        if reason is not None:
            raise Refused(reason.code, reason.message)


@dataclass(frozen=True, slots=True)
class TargetsRule(SelectedRule):
    """At most ``max_targets`` distinct values of the ``argument`` (a string, or a list of
    strings) across the session's allowed calls: for example, distinct e-mail recipients."""

    kind: ClassVar[str] = "targets"
    allow_order: ClassVar[int] = 2
    """Told after the rules that can still refuse (rate limits): a target this call took, and
    another call allowed meanwhile relies on, is then never given back."""
    argument: str = ""
    """The argument holding the targets; a dotted path (``message.to``) reaches into objects."""
    max_targets: int = 1

    _path: ArgumentPath = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        SelectedRule.__post_init__(self)
        if not self.argument:
            raise ValueError(f"rule {self.id!r}: a targets rule names the argument that holds the target")
        try:
            object.__setattr__(self, "_path", ArgumentPath(self.argument))
        except ValueError as error:
            raise ValueError(f"rule {self.id!r}: {error}") from None
        if self.max_targets < 1:
            raise ValueError(f"rule {self.id!r}: max_targets must be at least 1, not {self.max_targets!r}")

    def check(self, request: CallRequest) -> Reason | None:
        targets = self._targets(request.arguments)
        if targets is None:
            return self._refuse(
                ReasonCode.ARGUMENT_REJECTED,
                request,
                f"argument {self.argument!r} must be a string, or a list of at most {_TARGETS_PER_CALL} strings, "
                f"each of 1 to {_TARGET_LIMIT} characters",
            )
        seen = request.session.history.targets.get(self.id, set())
        return self._too_many(request) if len(seen | targets) > self.max_targets else None

    def _too_many(self, request: CallRequest) -> Reason:
        return self._refuse(
            ReasonCode.TOO_MANY_TARGETS, request, f"this session may reach at most {self.max_targets} targets"
        )

    def on_allow(self, request: CallRequest) -> Callable[[], None] | None:
        """Take this call's targets into its session's history once it is finally allowed; refuse
        it if calls allowed meanwhile (while an asynchronous policy decided) took the room.
        Returns how to give back the targets it added.

        The history at hand is the session's own, so the next call sees the targets at once;
        the session store records them as well (`reached`), for a store that keeps copies.
        """
        targets = self._targets(request.arguments) or set()
        with _TAKING:
            seen = request.session.history.targets.setdefault(self.id, set())
            added = targets - seen
            if len(seen) + len(added) > self.max_targets:
                reason = self._too_many(request)
                raise Refused(reason.code, reason.message)
            seen |= added
        return functools.partial(_give_back, seen, added) if added else None

    def reached(self, request: CallRequest) -> list[tuple[str, str]]:
        """The (rule id, target) pairs an allowed ``request`` adds to its session's history."""
        return [(self.id, target) for target in self._targets(request.arguments) or ()]

    def _targets(self, arguments: Mapping[str, Any]) -> set[str] | None:
        """The targets this call names (none when the argument is absent); None when malformed."""
        try:
            value = self._path.find(arguments)
        except ValueError:
            return None
        if value is MISSING or value is None:
            return set()
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or len(values) > _TARGETS_PER_CALL:
            return None
        if not all(isinstance(item, str) and 0 < len(item) <= _TARGET_LIMIT for item in values):
            return None
        return set(values)


_TAKING = threading.Lock()
"""Held while a targets rule checks and takes, or gives back, a call's targets (threads may
share a session)."""


def _give_back(seen: set[str], added: set[str]) -> None:
    with _TAKING:
        seen.difference_update(added)


@dataclass(frozen=True, slots=True)
class TimeWindowRule(SelectedRule):
    """Calls only on the listed ``days``, from ``start`` to ``end`` local time in ``timezone``
    (an ``end`` before ``start`` runs past midnight, and counts for the day it started). The
    ``end`` is not in the window, but for ``time.max``, which stands for midnight: by default
    the window is the whole day."""

    kind: ClassVar[str] = "time_window"
    days: frozenset[str] = frozenset(DAYS)
    start: time = time(0, 0)
    end: time = time.max
    timezone: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        SelectedRule.__post_init__(self)
        self._hold_as_sets("days")
        unknown = self.days - set(DAYS)
        if unknown or not self.days:
            raise ValueError(f"rule {self.id!r}: days must be some of {', '.join(DAYS)}, not {sorted(self.days)}")
        if self.start == self.end:
            raise ValueError(f"rule {self.id!r}: the window starts and ends at {self.start}: it is empty")
        try:
            object.__setattr__(self, "_zone", ZoneInfo(self.timezone))
        except (ValueError, LookupError) as error:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"rule {self.id!r}: unknown timezone {self.timezone!r}") from error

    def check(self, request: CallRequest) -> Reason | None:
        if not math.isfinite(request.at):
            return self._refuse(ReasonCode.OUTSIDE_TIME_WINDOW, request, "the time of the call is unknown")
        local = datetime.fromtimestamp(request.at, self._zone)
        now, day = local.time(), local.weekday()
        if self.start < self.end:
            inside = self.start <= now and (now < self.end or self.end == time.max) and DAYS[day] in self.days
        elif now >= self.start:
            inside = DAYS[day] in self.days
        else:
            inside = now < self.end and DAYS[day - 1] in self.days
        if inside:
            return None
        return self._refuse(
            ReasonCode.OUTSIDE_TIME_WINDOW,
            request,
            f"it may be called {','.join(day for day in DAYS if day in self.days)} "
            f"{self.start:%H:%M}-{'24:00' if self.end == time.max else f'{self.end:%H:%M}'} {self.timezone}",
        )
