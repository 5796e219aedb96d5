"""One fetch in flight, and the calls that wait for it to land.

A verifier asks a remote endpoint once for many callers (keys, metadata, introspection). The
callers may run on more than one event loop: a verifier shared by threads that each run their
own. An event belongs to the loop that first waits on it, and setting it from another thread
wakes nobody there, so a caller on another thread than the fetcher's polls instead (a loop runs
on one thread, so the same thread is the same loop). Polling is rare and brief: the fetch is
bounded by its own timeout.
"""

from __future__ import annotations

import threading

import anyio

__all__ = ["Flight"]

POLL_INTERVAL = 0.005
"""Seconds between looks by a caller waiting on another thread's fetch."""


class Flight:
    """A fetch under way; `landed` waits for it to end (with or without an outcome)."""

    __slots__ = ("_done", "_thread", "ended")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._thread = threading.get_ident()
        self.ended = False

    async def landed(self) -> None:
        """Return once `land` was called, on whichever thread the fetch ran."""
        if threading.get_ident() == self._thread:
            await self._done.wait()
            return
        while not self.ended:
            await anyio.sleep(POLL_INTERVAL)

    def land(self) -> None:
        """Mark the fetch ended and wake those waiting on its own thread."""
        self.ended = True
        self._done.set()
