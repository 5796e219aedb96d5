"""Delegation chains by RFC 8693: who acts for the subject, nested ``act`` claims, bounded.

``{"sub": "alice", "act": {"sub": "agent-b", "act": {"sub": "agent-a"}}}`` means agent-b acts
for alice now, and agent-a acted before it. The chain is recorded whole, current actor first;
decisions use the subject and the current actor only, and nested actors are kept for audit.
"""

from __future__ import annotations

from mcp_guard.errors import Refused
from mcp_guard.reasons import ReasonCode

__all__ = ["DEPTH_LIMIT", "MAX_DELEGATION_DEPTH", "actor_chain"]

MAX_DELEGATION_DEPTH = 4
"""Default cap on nested ``act`` claims, per trusted issuer."""

DEPTH_LIMIT = 32
"""The cap no configuration may exceed; what is kept of a chain a verifier has already bounded."""


def actor_chain(act: object, max_depth: int) -> tuple[str, ...]:
    """The ``sub`` of each nested actor, current first; refuses malformed or too deep chains."""
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str) or not act["sub"]:
            raise Refused(ReasonCode.CLAIM_INVALID, "Each 'act' claim must be an object with a 'sub' string.")
        if len(chain) == max_depth:
            raise Refused(ReasonCode.DELEGATION_TOO_DEEP)
        chain.append(act["sub"])
        act = act.get("act")
    return tuple(chain)
