"""How long governed sessions live, what they are for, and who answers for them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mcp_guard.model import Principal, Session, SessionOwners

__all__ = ["SessionSettings", "presentable_until"]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Defaults for every new session.

    The defaults are deliberately short for agents acting on real systems: a session ends
    after 4 hours whatever happens, and after 15 minutes without an allowed call.
    """

    absolute_ttl: float = 4 * 3600.0
    idle_ttl: float = 15 * 60.0
    purpose: str = ""
    owners: SessionOwners = field(default_factory=SessionOwners)

    def __post_init__(self) -> None:
        for name in ("absolute_ttl", "idle_ttl"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")

    def open(
        self, session_id: str, principal: Principal, now: float, *, leeway: float = 0.0, from_credential: bool = False
    ) -> Session:
        """A new active session with id ``session_id``, bound to ``principal``.

        It is retained until its absolute deadline or until the opening token can no longer be
        presented (its expiry plus ``leeway``), whichever is later. A key derived
        ``from_credential`` (MCP 2026-07-28) can be presented as long as its token: one that never
        expires keeps its session for good, so the session's end can never be forgotten and
        reopened.
        """
        expires_at = now + self.absolute_ttl
        token_end = presentable_until(principal, leeway, math.inf if from_credential else expires_at)
        return Session(
            id=session_id,
            binding=principal.binding,
            created_at=now,
            expires_at=expires_at,
            idle_timeout=self.idle_ttl,
            last_active_at=now,
            retain_until=max(expires_at, token_end),
            purpose=self.purpose,
            owners=self.owners,
            tokens={principal.token_id or principal.token_hash: presentable_until(principal, leeway, math.inf)},
        )


def presentable_until(principal: Principal, leeway: float, otherwise: float) -> float:
    """The first moment ``principal``'s token can no longer be presented, or ``otherwise`` for a
    token that does not expire. The guard accepts a token up to its expiry plus ``leeway``,
    that instant included, so what must outlast the token (its revocation, its sessions' keys)
    lasts until just after it: a whole-second clock reads that instant for a whole second."""
    if principal.expires_at is None:
        return otherwise
    return math.nextafter(principal.expires_at + leeway, math.inf)
