"""Session risk: what each call and each denial weighs, and the score at which a session ends.

`RiskSettings` are one policy's; `CombinedRisk` holds several at once, for a combination of
policies that carry their own. The guard reads either through `threshold`, `weight` and
`reached`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from mcp_guard.model import Decision, Risk, ToolSpec

__all__ = ["CombinedRisk", "RiskScoring", "RiskSettings"]

_ROUNDING = 1e-9
"""The relative error a sum of weights may carry: far above float rounding over any number of
calls a session lives for, far below any difference between weights a policy means."""


@dataclass(frozen=True, slots=True)
class RiskSettings:
    """How a session's risk score grows, and the ``threshold`` that revokes it automatically.

    Every denial adds ``denial``; every allowed call adds its tool's weight: the tool's own
    entry in ``tools`` when there is one, else the weight of its risk level (``read``,
    ``write``, ``admin``; as the policy declares the tool, when it does). The call that takes
    the score to the threshold is refused and the session revoked (recorded as
    ``session.revoked`` with reason ``session_risk_exceeded``). Scores are sums of floats, so
    `reached` allows them a relative rounding error of `_ROUNDING` (ten calls weighing 0.1 reach
    a threshold of 1.0, though they add up to 0.9999999999999999). Each tool's weight is worked
    out once and remembered.
    """

    threshold: float
    denial: float = 10.0
    read: float = 0.0
    write: float = 5.0
    admin: float = 20.0
    tools: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    _levels: Mapping[Risk, float] = field(init=False, repr=False, compare=False)
    _reached_at: float = field(init=False, repr=False, compare=False)
    _weights: dict[str, tuple[ToolSpec, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"risk threshold must be a positive, finite number, not {self.threshold!r}")
        weights = {"denial": self.denial, "read": self.read, "write": self.write, "admin": self.admin}
        weights.update({f"tools.{name}": weight for name, weight in self.tools.items()})
        for name, weight in weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"risk weight {name} must be a finite number >= 0, not {weight!r}")
        object.__setattr__(self, "tools", MappingProxyType(dict(self.tools)))
        object.__setattr__(self, "_levels", {Risk.READ: self.read, Risk.WRITE: self.write, Risk.ADMIN: self.admin})
        object.__setattr__(self, "_weights", {})
        object.__setattr__(self, "_reached_at", self.threshold * (1 - _ROUNDING))

    def reached(self, score: float) -> bool:
        """Whether ``score`` has reached the threshold (within float rounding)."""
        return score >= self._reached_at

    def weight(self, decision: Decision, tool: ToolSpec | None) -> float:
        """What this decided call adds to its session's score."""
        if not decision.allowed:
            return self.denial
        if tool is None:
            return 0.0
        known = self._weights.get(tool.name)
        if known is not None and known[0] is tool:
            return known[1]
        weight = self.tools.get(tool.name)
        if weight is None:
            weight = self._levels[tool.risk]
        self._weights[tool.name] = (tool, weight)
        return weight


@dataclass(frozen=True, slots=True)
class CombinedRisk:
    """The risk settings of several policies at once: a session ends as soon as any of them
    would end it, whatever order they were combined in.

    The score is kept in the units of the lowest threshold. A call weighs, in those units, the
    most any member weighs it measured against that member's own threshold, so the score never
    trails what any member alone would have reached.
    """

    members: tuple[RiskSettings, ...]
    threshold: float = field(init=False)
    _scaled: tuple[tuple[RiskSettings, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("combined risk needs at least one member's settings")
        threshold = min(member.threshold for member in self.members)
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "_scaled", tuple((member, threshold / member.threshold) for member in self.members))

    @classmethod
    def of(cls, settings: Iterable[RiskScoring]) -> RiskScoring | None:
        """The one scoring ``settings`` amount to: None for none, a lone one as it is, several
        combined (a combination among them flattened into its members)."""
        members = tuple(
            member for each in settings for member in (each.members if isinstance(each, CombinedRisk) else (each,))
        )
        if len(members) < 2:
            return members[0] if members else None
        return cls(members)

    def weight(self, decision: Decision, tool: ToolSpec | None) -> float:
        """What this decided call adds to its session's score: the most any member weighs it."""
        return max(member.weight(decision, tool) * scale for member, scale in self._scaled)

    def reached(self, score: float) -> bool:
        """Whether ``score`` has reached the lowest threshold (within float rounding)."""
        return score >= self.threshold * (1 - _ROUNDING)


RiskScoring: TypeAlias = RiskSettings | CombinedRisk
"""How a session's risk is scored: one policy's settings, or several combined."""
