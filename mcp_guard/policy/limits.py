"""Rate limits and budgets: at most so many calls per session, subject, principal, client or tool.

A limit with a ``window`` allows ``calls`` calls in each window, counted from the first call
after the previous window ended (a fixed window, so a burst of up to twice the limit can
straddle two windows). A limit without one is a budget for the session's whole life. Counts
live in this process (a server with several processes counts in each); a call counts only
once it is finally allowed: by every rule, every other policy combined with this one, and the
guard's risk check. Counting checks the limit again in the same step, so calls decided at once
cannot all pass it.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from mcp_guard.errors import Refused
from mcp_guard.model import CallRequest, Reason
from mcp_guard.policy.rules import SelectedRule
from mcp_guard.reasons import ReasonCode

__all__ = ["Counters", "LimitRule", "Per"]

Per = Literal["session", "subject", "principal", "client", "tool"]


class Counters:
    """Call counts by key, each until its window ends; at most ``max_keys`` keys at once.

    The windows' ends wait in a heap, so a count leaves as soon as a call comes after its
    window ended, at a cost per count dropped, never a pass over all of them. When full, a new
    key is refused (the caller is limited) rather than a live count forgotten: forgetting would
    reset a limit.
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._counts: dict[Hashable, list[float]] = {}  # key -> [window end, count]
        self._ends: list[tuple[float, int, Hashable, list[float]]] = []
        """(end, order, key, window) of every window opened; its keys are never compared."""
        self._order = itertools.count()
        self._lock = threading.Lock()

    def used(self, key: Hashable, now: float) -> int | None:
        """Calls counted for ``key`` in its current window; None when a new key has no room."""
        entry = self._counts.get(key)
        if entry is not None and entry[0] > now:
            return int(entry[1])
        if entry is None and len(self._counts) >= self.max_keys:
            with self._lock:
                self._drop_ended(now)
                if len(self._counts) >= self.max_keys:
                    return None
        return 0

    def take(self, key: Hashable, now: float, ends_at: float, limit: int) -> list[float] | None:
        """Count one call for ``key`` if fewer than ``limit`` are counted, opening a window until
        ``ends_at`` if none is open; in one step, so two callers cannot both take the last one.
        The window counted in (for `give_back`), or None when there is no room (the limit is
        reached, or a new key does not fit)."""
        with self._lock:
            self._drop_ended(now)
            entry = self._counts.get(key)
            if entry is not None:
                if entry[1] >= limit:
                    return None
                entry[1] += 1
                return entry
            if len(self._counts) >= self.max_keys:
                return None
            entry = self._counts[key] = [ends_at, 1]
            heapq.heappush(self._ends, (ends_at, next(self._order), key, entry))
            return entry

    def give_back(self, key: Hashable, window: list[float]) -> None:
        """Uncount one call counted in ``window`` for ``key`` (one a later rule refused); nothing
        once that window has given way to another."""
        with self._lock:
            if self._counts.get(key) is window and window[1] > 0:
                window[1] -= 1

    def _drop_ended(self, now: float) -> None:
        """Drop the counts whose window has ended by ``now`` (lock held)."""
        ends = self._ends
        while ends and ends[0][0] <= now:
            _, _, key, window = heapq.heappop(ends)
            if self._counts.get(key) is window:
                del self._counts[key]

    def __len__(self) -> int:
        return len(self._counts)


@dataclass(frozen=True, slots=True)
class LimitRule(SelectedRule):
    """At most ``calls`` calls to the selected tools ``per`` session, subject, principal, client
    or tool, in each ``window`` seconds, or (without a window, per session only) in the
    session's life. A subject is counted across every client it calls through (issuer and
    subject); a principal is one subject through one client (issuer, subject and client id), so
    a caller registering more clients gets a count for each."""

    kind: ClassVar[str] = "limit"
    per: Per = "session"
    calls: int = 1
    window: float | None = None
    counters: Counters = field(default_factory=Counters, compare=False, repr=False)

    def __post_init__(self) -> None:
        SelectedRule.__post_init__(self)
        if self.per not in ("session", "subject", "principal", "client", "tool"):
            raise ValueError(
                f"rule {self.id!r}: per must be session, subject, principal, client or tool, not {self.per!r}"
            )
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls < 1:
            raise ValueError(f"rule {self.id!r}: calls must be a whole number of at least 1, not {self.calls!r}")
        if self.window is None:
            if self.per != "session":
                raise ValueError(f"rule {self.id!r}: a limit per {self.per} needs a window (seconds)")
        elif not _seconds(self.window):
            raise ValueError(f"rule {self.id!r}: window must be a positive number of seconds, not {self.window!r}")

    def check(self, request: CallRequest) -> Reason | None:
        used = self.counters.used(self._key(request), request.at)
        if used is None:
            return self._refuse(ReasonCode.RATE_LIMITED, request, "too many callers are being counted; retry later")
        return None if used < self.calls else self._exhausted(request)

    def on_allow(self, request: CallRequest) -> Callable[[], None]:
        """Count ``request``, once it is finally allowed; refuse it if calls decided meanwhile
        have used up the limit. Returns how to give the count back."""
        key = self._key(request)
        ends_at = request.session.expires_at if self.window is None else request.at + self.window
        window = self.counters.take(key, request.at, ends_at, self.calls)
        if window is None:
            reason = self._exhausted(request)
            raise Refused(reason.code, reason.message)
        return functools.partial(self.counters.give_back, key, window)

    def _exhausted(self, request: CallRequest) -> Reason:
        if self.window is None:
            return self._refuse(
                ReasonCode.BUDGET_EXHAUSTED, request, f"a session may make {self.calls} such calls in its life"
            )
        return self._refuse(
            ReasonCode.RATE_LIMITED, request, f"at most {self.calls} calls per {self.window:g} s per {self.per}"
        )

    def _key(self, request: CallRequest) -> Hashable:
        if self.per == "session":
            return (self.id, request.session.id)
        if self.per == "subject":
            return (self.id, request.principal.issuer, request.principal.subject)
        if self.per == "principal":
            return (self.id, request.principal.binding)
        if self.per == "client":
            return (self.id, request.principal.issuer, request.principal.client_id)
        return (self.id, request.tool.name)


def _seconds(value: object) -> bool:
    """Whether ``value`` is a positive, finite number of seconds; a bool is not a number, though
    Python counts ``True`` as 1."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an int too large for a float
        return False
