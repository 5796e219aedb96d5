"""One fetch in flight, and the calls that wait for it to land.

A verifier asks a remote endpoint once for many callers (keys, metadata, introspection). The
callers may run on more than one event loop: a verifier shared by threads that each run their
own. An event belongs to the loop that first waits on it, and setting it from another thread
wakes nobody there, so a caller on another thread than the fetcher's polls instead (a loop runs
on one thread, so the same thread is the same loop). Polling is rare and brief: the fetch is
bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any

import anyio

__all__ = ["Flight", "run_to_the_end"]

logger = logging.getLogger("mcp_guard")

POLL_INTERVAL = 0.005
"""Seconds between looks by a caller waiting on another thread's fetch."""


class Flight:
    """A fetch under way; `landed` waits for it to end (with or without an outcome)."""

    __slots__ = ("_done", "_loop", "_thread", "ended")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._thread = threading.get_ident()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio
            self._loop = None
        self.ended = False

    @property
    def abandoned(self) -> bool:
        """Whether the fetch can never land: its event loop was closed with it still pending
        (a loop stopped without cancelling its tasks, in a thread of its own)."""
        return not self.ended and self._loop is not None and self._loop.is_closed()

    async def landed(self) -> None:
        """Return once `land` was called, on whichever thread the fetch ran, or once the fetch
        is `abandoned`."""
        if threading.get_ident() == self._thread:
            await self._done.wait()
            return
        while not self.ended and not self.abandoned:
            await anyio.sleep(POLL_INTERVAL)

    def land(self) -> None:
        """Mark the fetch ended and wake those waiting on its own thread."""
        self.ended = True
        self._done.set()


_RUNNING: set[asyncio.Task[None]] = set()
"""Work started by `run_to_the_end`, held until it ends (the loop keeps only weak references)."""


async def run_to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work``, which runs to its end however its caller is cancelled: a fetch cut short
    sends its waiters off without what it was fetching, and a client that can cancel its own
    requests could do that at will. On asyncio the work is a task of its own, which neither
    anyio's cancellation nor ``Task.cancel`` of the caller reaches (the caller stops waiting at
    once); elsewhere (Trio) it runs in a shielded cancel scope. ``work`` bounds its own time.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio
        with anyio.CancelScope(shield=True):
            await work
        return
    task = asyncio.ensure_future(work)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:  # the caller left: nobody will hear how the work ends, but the log
        task.add_done_callback(_report_unheard)  # run at once if it has ended already
        raise


def _report_unheard(task: asyncio.Task[None]) -> None:
    """Log how work whose caller had left failed (and so mark its error retrieved)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("mcp-guard: a fetch whose caller had left failed: %r", error)
