"""Clock readings fit to measure limits against.

Every expiry, lifetime and revocation compares the time with a bound. A NaN passes no
comparison, so each of those checks would let a call through, and an infinite time outlasts
revocations that never end. A clock giving either (a broken time source, an injected clock
gone wrong) is refused, and the call with it. So is a time before 2020: a monotonic clock given
where the wall clock belongs (seconds since boot), or one reset to 1970, against which every
token that ever expired would pass as valid.
"""

from __future__ import annotations

from collections.abc import Callable

from mcp_guard.errors import Refused
from mcp_guard.reasons import ReasonCode

__all__ = ["EARLIEST", "TIME_BOUND", "read_clock"]

TIME_BOUND = 1e11
"""Seconds since 1970 beyond which a time is nonsense (year 5138); also excludes NaN and inf."""

EARLIEST = 1_577_836_800.0
"""2020-01-01T00:00:00Z: a wall clock reading earlier is not the wall clock."""


def read_clock(clock: Callable[[], float]) -> float:
    """The time ``clock`` gives; `Refused` (``guard_error``) unless it is a finite number of
    seconds since 1970, and not before `EARLIEST`."""
    now = clock()
    if not EARLIEST <= now < TIME_BOUND:  # NaN fails every comparison
        raise Refused(ReasonCode.GUARD_ERROR, "The clock gave no usable time.")
    return now
