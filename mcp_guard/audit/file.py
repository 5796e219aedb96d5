"""The chained audit log on disk: a sink that never blocks the call path.

``emit`` puts the event on a bounded queue; one writer thread serialises, hashes and appends in
batches, so concurrent callers (tasks and threads) can neither interleave partial lines nor
fork the chain. After each batch it updates ``<path>.anchor`` with the last entry's sequence
number and hash, which is how `verify` notices whole entries cut off the end of the log.
Every ``checkpoint_interval`` seconds (when anything was written) it appends a
``chain.checkpoint`` entry and hands it to ``witness`` and the ``mcp_guard`` logger, so a copy
held elsewhere can later prove the chain up to it was not rewritten.

When writing fails (a full disk, an unwritable file), the queue is full, or events have
waited ``stall_timeout`` seconds for a writer held up (a hung disk or mount, a slow witness),
``failure="deny"`` (the default) makes ``emit`` raise, so the guard denies new calls rather
than serve them unrecorded; ``failure="buffer"`` keeps queueing (up to the bound), logs an alarm, and retries.
A write that fails halfway is cut back, so the retry writes whole lines once. An anchor that
cannot be written fails the log the same way (entries past a stale anchor could be cut off
unseen) until the writer, retrying it, succeeds; the lines it follows are not written again.

The writer owns the log: it holds ``<path>.lock`` (in the log's real directory) while it lives,
so a second writer on the same log is refused, as is a live file that is a symlink or has
other hard links (another name for it would let a second writer in); a live file emptied,
replaced or appended to by anything else stops it (an integrity failure, handled like a
failing disk), as does a lock file removed under it.
A writer that stops for any reason, or a process forked from the one that opened the sink,
fails the log in deny mode. Opening a log verifies its live file first (`log_files.resume`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from mcp_guard.audit.chain import (
    CHECKPOINT,
    FILE_ROTATED,
    FILE_START,
    MAX_LINE_BYTES,
    ChainState,
    Checkpoint,
    entry_line,
)
from mcp_guard.audit.encoding import event_line
from mcp_guard.audit.events import AuditEvent
from mcp_guard.audit.log_files import (
    AuditLogError,
    FileIdentity,
    append_whole,
    check_lock,
    identity,
    last_segment,
    next_segment,
    resume,
    segment_path,
    sync_directory,
    take_lock,
    write_anchor,
)

__all__ = ["AuditLogError", "FileAuditSink"]

logger = logging.getLogger("mcp_guard")

Failure = Literal["deny", "buffer"]

_OPEN_SINKS: weakref.WeakSet[FileAuditSink] = weakref.WeakSet()


class FileAuditSink:
    """Appends events to a hash-chained JSON-lines file, rotating at ``max_bytes``.

    Rotated files are renamed ``<stem>.<nnnnn>.jsonl`` (counting up, five digits) and the chain
    continues into the fresh file; a segment may pass ``max_bytes`` by up to one batch.
    Restarting on an existing log verifies its live file and continues its chain (from the last
    rotated file when the live file is gone); a log cut short of its anchor, one that does not
    verify, one with entries but no anchor (unless ``adopt_unanchored``), a live file that is a
    symlink or has other hard links, and a second sink on the same log raise `AuditLogError`
    instead. ``key`` turns the hashes into HMACs; keep it apart from the log. ``witness``
    receives each checkpoint, in order, on the writer thread (so it should be quick: the writer
    writes nothing while it waits), after the writer has let go of the log, so `flush` and
    `close` keep their timeouts however long it takes; its failures are logged. A sink not
    closed is closed when the interpreter exits.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        max_bytes: int = 64 * 1024 * 1024,
        failure: Failure = "deny",
        queue_size: int = 100_000,
        flush_interval: float = 0.05,
        checkpoint_interval: float = 60.0,
        witness: Callable[[Checkpoint], object] | None = None,
        adopt_unanchored: bool = False,
        stall_timeout: float | None = None,
    ) -> None:
        if stall_timeout is None:  # 10 s, or longer for a writer that looks at its queue less often
            stall_timeout = max(10.0, 4 * flush_interval)
        if not stall_timeout > flush_interval:  # the writer looks at the queue every flush_interval
            raise ValueError(
                f"stall_timeout must be longer than flush_interval ({flush_interval}), not {stall_timeout!r}"
            )
        if failure not in ("deny", "buffer"):
            raise ValueError(f"failure must be 'deny' or 'buffer', not {failure!r}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
        if key is not None and not key:
            raise ValueError("an empty HMAC key protects nothing: give a key, or None for plain SHA-256")
        self.path = Path(path).absolute()  # the same file however the working directory changes
        self.key = key
        self.max_bytes = max_bytes
        self.failure = failure
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.checkpoint_interval = checkpoint_interval
        self.witness = witness
        self.stall_timeout = stall_timeout
        self._checkpointed_at = time.monotonic()
        self._taken_at = time.monotonic()
        """When the writer last took the queued events (it does at least every ``flush_interval``)."""
        self._unwitnessed = False
        self.written = 0
        self._queue: deque[AuditEvent] = deque()
        self._wake = threading.Condition()
        """Held by the writer over each pass (I/O included), and by `flush` and `close` only until their deadlines."""
        self._unreported: list[tuple[bool, Checkpoint | None]] = []
        """Recoveries and checkpoints written, for the writer to report once it lets go of ``_wake``."""
        self._intake = threading.Lock()
        """Held by `emit` from its checks to its append, and by `close` to close: never over I/O."""
        self._error: BaseException | None = None
        self._stale_anchor: AuditLogError | None = None
        """Why the anchor lags the entries written, while it does: that fails the log."""
        self._closed = False
        try:
            self._lock = take_lock(self.path)
        except AuditLogError:
            raise
        except OSError:  # no directory yet, or none it may write: the failure mode applies when it writes
            self._lock = -1
        self.adopt_unanchored = adopt_unanchored
        self._resume_locked()
        self._thread = threading.Thread(target=self._run, name="mcp-guard-audit", daemon=True)
        self._thread.start()
        _OPEN_SINKS.add(self)
        atexit.register(self._close_at_exit)

    def _resume_locked(self) -> None:
        """`_resume`, letting the lock go when the log is refused: a retry takes it up afresh,
        and never writes on from a state the refused log was not checked to have."""
        try:
            self._resume()
        except BaseException:
            self._release_lock()
            raise

    def _resume(self) -> None:
        """Take up the chain where the log on disk leaves it (see `log_files.resume`); a torn
        last line is cut only by the writer holding the lock."""
        cut_torn = self._lock >= 0
        self._state, sealed = resume(self.path, self.key, adopt_unanchored=self.adopt_unanchored, cut_torn=cut_torn)
        self._live: FileIdentity | None = identity(self.path)
        self._sealed: Path | None = next_segment(self.path) if sealed else None
        """The segment the live file becomes, once sealed with ``chain.rotated`` but not yet renamed."""

    def emit(self, event: AuditEvent) -> None:
        """Queue ``event``; raise `AuditLogError` when the log cannot take it (in deny mode).

        A closed log takes nothing more: its writer has stopped. Checking and queueing are one
        step against `close`, so an event is either refused or written.
        """
        with self._intake:
            now = time.monotonic()
            if (  # the common case, read inline: it runs for every event
                not self._closed
                and self._error is None
                and len(self._queue) < self.queue_size
                and (not self._queue or now - self._taken_at < self.stall_timeout)
            ):
                self._queue.append(event)
                return
            refusal = self._refusal(now)
            if refusal is None:
                self._queue.append(event)
                return
        if self.failure == "deny":
            raise AuditLogError(refusal)
        logger.error("mcp-guard: %s; dropping an event", refusal)

    def _refusal(self, now: float) -> str | None:
        """Why the log takes no event now, if it does not (buffer mode queues while failing or held up)."""
        if self._closed:
            return f"the audit log {self.path} is closed" + ("" if self._error is None else f": {self._error}")
        if self.failure == "deny" and self._error is not None:
            return f"the audit log {self.path} is failing: {self._error}"
        if len(self._queue) >= self.queue_size:
            return f"the audit log {self.path} is full ({self.queue_size} events behind)"
        if self.failure == "deny" and self._queue and now - self._taken_at >= self.stall_timeout:
            return (
                f"the audit log {self.path} has written nothing for {now - self._taken_at:.0f} s while events "
                "wait: its writer is held up (a hung disk or mount, or a slow witness)"
            )
        return None

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written.

        Raises `AuditLogError` at once when writing fails in deny mode, and when ``timeout``
        passes first (in buffer mode the writer keeps retrying; a writer may also be held up).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._waking(deadline) as held:  # the writer holds it while a batch is off the queue
                if held and not self._queue:
                    return
                if held:
                    self._wake.notify()
                if self._error is not None and self.failure == "deny":
                    raise AuditLogError(f"the audit log {self.path} is failing: {self._error}")
            if time.monotonic() > deadline:
                raise AuditLogError(f"the audit log {self.path} did not drain in {timeout} s: {self._error}")
            time.sleep(0.001)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, and a closing checkpoint, anchored, and stop the writer.

        Raises `AuditLogError` when that is not done within ``timeout`` (the log is failing, or
        the writer is held up).
        """
        deadline = time.monotonic() + timeout
        with self._intake:  # an event queued before this is one the writer's last look finds
            self._closed = True
        with self._waking(deadline) as held:
            if held:  # else the writer is busy, and sees the log closed on its next pass
                self._wake.notify()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            raise AuditLogError(f"the audit log {self.path} did not close in {timeout} s: {self._error}")
        self._release_lock()  # another sink may write the log now
        atexit.unregister(self._close_at_exit)

    @contextmanager
    def _waking(self, deadline: float) -> Iterator[bool]:
        """Hold ``_wake`` if the writer lets go of it before ``deadline``; whether it did."""
        held = self._wake.acquire(timeout=max(0.0, deadline - time.monotonic()))
        try:
            yield held
        finally:
            if held:
                self._wake.release()

    def _close_at_exit(self) -> None:
        try:  # a log already failing gets a moment, not the full wait, to write what it holds
            self.close(timeout=5.0 if self._error is None else 0.2)
        except AuditLogError as error:
            logger.error("mcp-guard: %s at exit; queued events are lost", error)

    def _release_lock(self) -> None:
        """Close the lock's descriptor, once however many threads close the log at a time: a
        second close could hit the same number given meanwhile to another log's lock."""
        with self._intake:
            held, self._lock = self._lock, -1
        if held >= 0:
            os.close(held)

    def _forked(self) -> None:
        """In a child process: the writer thread is not there, and the log is the parent's."""
        self._intake = threading.Lock()  # a parent thread may have held it at the fork
        self._release_lock()  # the parent's lock stays held through its own descriptor
        self._closed = True
        self._error = AuditLogError(f"the audit log {self.path} belongs to the process that opened it, not a fork")

    def _run(self) -> None:
        """The writer: anything that stops it (a `BaseException` included) fails the log."""
        try:
            self._write_until_closed()
        except BaseException as error:
            self._error = AuditLogError(f"the audit log {self.path} writer stopped: {type(error).__name__}: {error}")
            raise

    def _write_until_closed(self) -> None:
        """Write pass after pass, reporting each pass's news once ``_wake`` is let go of."""
        done = False
        while not done:
            try:
                with self._wake:
                    done = self._write_pass()
            finally:  # a pass that raised may have written checkpoints: they are reported all the same
                self._deliver_reports()

    def _write_pass(self) -> bool:
        """Write what is queued (or the stale anchor); whether the log is closed and all written."""
        if not self._queue and not self._closed:
            self._wake.wait(self.flush_interval)
        batch = [self._queue.popleft() for _ in range(len(self._queue))]
        self._taken_at = time.monotonic()
        if batch:
            self._write_batch(batch)
        elif self._stale_anchor is not None:  # deny mode refuses events until it is written
            self._reanchor()
        if not self._closed or self._queue:
            return False
        if self._unwitnessed:  # the last entries get a checkpoint too, retried like any write
            self._write_batch([], checkpoint=True)
        return not self._unwitnessed and self._stale_anchor is None

    def _write_batch(self, batch: list[AuditEvent], *, checkpoint: bool = False) -> None:
        """Append a batch, with a checkpoint when one is due; on failure, requeue the batch in
        order and remember the error, so the failure mode applies and the writer lives on.

        Once the lines are in the log nothing requeues them, whatever fails after: an anchor
        that could not be written fails the log until a later write of it succeeds.
        """
        try:
            written = self._append_batch(batch, checkpoint)
        except Exception as error:  # a disk failure, or anything else: the writer must live on
            self._fail(error)
            self._queue.extendleft(reversed(batch))
            time.sleep(self.flush_interval)
            return
        self.written += len(batch)
        self._unwitnessed = written is None
        if written is not None:
            self._checkpointed_at = time.monotonic()
        self._unreported.append((self._settle(), written))

    def _reanchor(self) -> None:
        """Write the stale anchor again, with nothing queued to carry it (as in deny mode)."""
        self._anchor()
        if self._stale_anchor is not None:
            self._fail(self._stale_anchor)
            time.sleep(self.flush_interval)
            return
        self._unreported.append((self._settle(), None))

    def _fail(self, error: BaseException) -> None:
        """Remember why the log is failing, so the failure mode applies; alarm once. A recovery
        this pass has not reported yet is told first, so the last word is the failure."""
        if self._error is None:
            if any(recovered for recovered, _ in self._unreported):
                logger.warning("mcp-guard: audit log %s is writable again", self.path)
                self._unreported = [(False, written) for _, written in self._unreported]
            logger.error("mcp-guard: audit log %s failed: %s", self.path, error)
        self._error = error

    def _settle(self) -> bool:
        """After a write: the log is failing while its anchor is stale, and sound otherwise;
        whether it just recovered."""
        if self._stale_anchor is not None:
            self._fail(self._stale_anchor)
            return False
        recovered, self._error = self._error is not None, None
        return recovered

    def _deliver_reports(self) -> None:
        """Report, in order, what the passes so far left to tell (on the writer, outside ``_wake``)."""
        reports, self._unreported = self._unreported, []
        for recovered, written in reports:
            self._report(recovered, written)

    def _report(self, recovered: bool, written: Checkpoint | None) -> None:
        """Tell of a recovery and of a checkpoint written; a failure to tell stops nothing."""
        try:
            if recovered:
                logger.warning("mcp-guard: audit log %s is writable again", self.path)
            if written is not None:
                self._witness(written)
        except Exception as error:  # logging itself failing (a broken filter): the batch stays written
            print(f"mcp-guard: audit log {self.path}: reporting failed: {error!r}", file=sys.stderr)

    def _append_batch(self, batch: list[AuditEvent], checkpoint: bool) -> Checkpoint | None:
        """Write a batch (rotating first when the file is full); the checkpoint written, if any."""
        if self._lock < 0:  # opened before the log could be locked: take it up afresh, as its writer
            self._lock = take_lock(self.path)
            self._resume_locked()
        check_lock(self._lock, self.path)
        if self._sealed is not None:  # a rotation whose rename failed: the file is sealed already
            self._move_aside(self._sealed)
        size = self._unchanged_size()
        if size >= self.max_bytes:
            self._rotate()
            size = 0
        lines = []
        state = ChainState(self._state.seq, self._state.last_hash)
        if size == 0:  # a fresh file names the segment it follows, so none is numbered twice
            head = {"file": self.path.name}
            if previous := last_segment(self.path):
                head["follows"] = segment_path(self.path, previous).name
            lines.append(entry_line(state, FILE_START, head, self.key))
        lines.extend(self._event_line(state, event) for event in batch)
        checkpoint = checkpoint or time.monotonic() - self._checkpointed_at >= self.checkpoint_interval
        if checkpoint:
            lines.append(entry_line(state, CHECKPOINT, {"at": time.time(), "file": self.path.name}, self.key))
        self._append(lines, state)
        return Checkpoint(state.seq - 1, state.last_hash) if checkpoint else None

    def _event_line(self, state: ChainState, event: AuditEvent) -> bytes:
        """The chain entry for ``event``.

        An event with a value that cannot be written at all (one whose ``str`` fails), or one
        longer than a log line may be, is not dropped: a stand-in with its id, kind, time and
        the reason takes its place.
        """
        try:
            before = ChainState(state.seq, state.last_hash)
            line = event_line(state, event, self.key)
            if len(line) <= MAX_LINE_BYTES:
                return line
            state.seq, state.last_hash = before.seq, before.last_hash
            return self._stand_in(state, event, f"the event is {len(line)} bytes, over the log's line limit")
        except Exception as error:
            logger.exception("mcp-guard: audit event %s cannot be written in full", event.event_id)
            return self._stand_in(state, event, f"{type(error).__name__}: {ascii(str(error))[1:-1][:200]}")

    def _stand_in(self, state: ChainState, event: AuditEvent, why: str) -> bytes:
        stand_in = {"event_id": event.event_id, "kind": str(event.kind), "at": event.at, "unwritable": why}
        return entry_line(state, event.kind, stand_in, self.key)

    def _unchanged_size(self) -> int:
        """The live file's size, after making sure nothing but this writer changed it."""
        found = identity(self.path)
        if found != self._live:
            was = "missing" if self._live is None else f"{self._live[2]} bytes"
            now = (
                "missing or empty"
                if found is None
                else f"{found[2]} bytes"
                + ("" if self._live is None or found[:2] == self._live[:2] else ", another file")
            )
            raise AuditLogError(
                f"the audit log {self.path} was changed by something other than its writer ({was}, now {now}): "
                "writing stopped; verify the log, keep it as evidence, and start a new one"
            )
        return 0 if found is None else found[2]

    def _append(self, lines: list[bytes], state: ChainState) -> None:
        """Write whole lines durably, then adopt the chain state they lead to and anchor it.

        A write that fails halfway is cut back to where it began, so the batch can be retried
        whole. The lines are in the log once written, so a failing anchor never raises here
        (a retried batch would write its events twice): see `_anchor`.
        """
        self._live = append_whole(self.path, b"".join(lines))
        self._state = state
        self._anchor()

    def _anchor(self) -> None:
        """Anchor the last entry written, or remember why not in ``_stale_anchor``.

        A stale anchor fails the log: entries past it could be cut off unseen.
        """
        try:
            write_anchor(self.path, self._state, self.key)
        except OSError as error:
            self._stale_anchor = AuditLogError(f"the anchor of audit log {self.path} could not be written: {error}")
        else:
            self._stale_anchor = None

    def _witness(self, checkpoint: Checkpoint) -> None:
        """Hand a checkpoint written to the log to the logger and the witness, if any."""
        logger.info("mcp-guard: audit log %s checkpoint %s", self.path, checkpoint)
        if self.witness is not None:
            try:
                self.witness(checkpoint)
            except BaseException:  # a witness raising SystemExit must not stop the writer
                logger.exception(
                    "mcp-guard: the witness of audit log %s failed on checkpoint %s", self.path, checkpoint
                )

    def _rotate(self) -> None:
        """Seal the current file and move it aside; the chain continues in a fresh file."""
        segment = next_segment(self.path)
        if segment.exists():
            raise AuditLogError(f"the audit log {self.path} cannot rotate: {segment} is already there")
        state = ChainState(self._state.seq, self._state.last_hash)
        self._append([entry_line(state, FILE_ROTATED, {"next": self.path.name, "as": segment.name}, self.key)], state)
        self._sealed = segment
        self._move_aside(segment)

    def _move_aside(self, segment: Path) -> None:
        """Rename the sealed live file to ``segment`` (never over an existing file), durably,
        once the anchor names the seal: renamed before, a crash would leave a log whose anchor
        lags its rotated files, which `resume` and `verify` take for a log cut back. The anchor is
        written again first (a writer that took up a sealed file at restart has not written it)."""
        self._anchor()
        if self._stale_anchor is not None:
            raise self._stale_anchor
        if segment.exists():
            raise AuditLogError(f"the audit log {self.path} cannot rotate: {segment} is already there")
        os.replace(self.path, segment)
        sync_directory(self.path.parent)
        self._sealed, self._live = None, None


def _forked_child() -> None:
    for sink in list(_OPEN_SINKS):
        sink._forked()


os.register_at_fork(after_in_child=_forked_child)
