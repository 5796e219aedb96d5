"""Clock readings fit to measure limits against.

Every expiry, lifetime and revocation compares the time with a bound. A NaN passes no
comparison, so each of those checks would let a call through, and an infinite time outlasts
revocations that never end. A clock giving either (a broken time source, an injected clock
gone wrong) is refused, and the call with it.
"""

from __future__ import annotations

from collections.abc import Callable

from mcp_guard.errors import Refused
from mcp_guard.reasons import ReasonCode

__all__ = ["TIME_BOUND", "read_clock"]

TIME_BOUND = 1e11
"""Seconds since 1970 beyond which a time is nonsense (year 5138); also excludes NaN and inf."""


def read_clock(clock: Callable[[], float]) -> float:
    """The time ``clock`` gives; `Refused` (``guard_error``) unless it is a finite number of seconds."""
    now = clock()
    if not -TIME_BOUND < now < TIME_BOUND:  # NaN fails every comparison
        raise Refused(ReasonCode.GUARD_ERROR, "The clock gave no usable time.")
    return now
