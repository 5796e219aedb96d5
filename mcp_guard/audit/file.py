"""The chained audit log on disk: a sink that never blocks the call path.

``emit`` puts the event on a bounded queue; one writer thread serialises, hashes and appends in
batches, so concurrent callers (tasks and threads) can neither interleave partial lines nor
fork the chain. After each batch it updates ``<path>.anchor`` with the last entry's sequence
number and hash, which is how `verify` notices whole entries cut off the end of the log.
Every ``checkpoint_interval`` seconds (when anything was written) it appends a
``chain.checkpoint`` entry and hands it to ``witness`` and the ``mcp_guard`` logger, so a copy
held elsewhere can later prove the chain up to it was not rewritten.

When writing fails (a full disk, an unwritable file) or the queue is full, ``failure="deny"``
(the default) makes ``emit`` raise, so the guard denies new calls rather than serve them
unrecorded; ``failure="buffer"`` keeps queueing (up to the bound), logs an alarm, and retries.
A write that fails halfway is cut back, so the retry writes whole lines once.

The writer owns the log: it holds ``<path>.lock`` while it lives, so a second writer on the
same path is refused, and a live file emptied, replaced or appended to by anything else stops
it (an integrity failure, handled like a failing disk), as does, on restart, a log that ends
before its anchor.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from mcp_guard.audit.chain import (
    CHECKPOINT,
    FILE_ROTATED,
    FILE_START,
    GENESIS,
    MAX_LINE_BYTES,
    ChainState,
    Checkpoint,
    anchor_body,
    anchor_path,
    digest,
    entry_line,
    read_anchor,
    read_entry,
)
from mcp_guard.audit.encoding import event_line
from mcp_guard.audit.events import AuditEvent

__all__ = ["AuditLogError", "FileAuditSink"]

logger = logging.getLogger("mcp_guard")

Failure = Literal["deny", "buffer"]


class AuditLogError(OSError):
    """The audit log cannot take the event: the call that produced it must not go ahead."""


class FileAuditSink:
    """Appends events to a hash-chained JSON-lines file, rotating at ``max_bytes``.

    Rotated files are renamed ``<stem>.<n>.jsonl`` (n counting up, zero-padded) and the chain
    continues into the fresh file. Restarting on an existing log continues its chain (from
    the last rotated file when the live file is gone); a log cut short of its anchor raises
    `AuditLogError` instead, as does a second sink on the same path. ``key``
    turns the hashes into HMACs; keep it apart from the log. ``witness`` receives each
    checkpoint on the writer thread (so it should be quick); its failures are logged.
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
    ) -> None:
        if failure not in ("deny", "buffer"):
            raise ValueError(f"failure must be 'deny' or 'buffer', not {failure!r}")
        if key is not None and not key:
            raise ValueError("an empty HMAC key protects nothing: give a key, or None for plain SHA-256")
        self.path = Path(path)
        self.key = key
        self.max_bytes = max_bytes
        self.failure = failure
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.checkpoint_interval = checkpoint_interval
        self.witness = witness
        self._checkpointed_at = time.monotonic()
        self._unwitnessed = False
        self.written = 0
        self._queue: deque[AuditEvent] = deque()
        self._wake = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        try:
            self._lock = _hold_lock(self.path)
        except AuditLogError:
            raise
        except OSError:  # no directory yet, or none it may write: the failure mode applies when it writes
            self._lock = -1
        try:
            self._state = _resume(self.path, key)
        except BaseException:
            if self._lock >= 0:
                os.close(self._lock)
            raise
        self._live = _identity(self.path)
        self._thread = threading.Thread(target=self._run, name="mcp-guard-audit", daemon=True)
        self._thread.start()

    def emit(self, event: AuditEvent) -> None:
        """Queue ``event``; raise `AuditLogError` when the log cannot take it (in deny mode).

        A closed log takes nothing more: its writer has stopped.
        """
        if self.failure == "deny" and (self._error is not None or self._closed):
            raise AuditLogError(
                f"the audit log {self.path} is {'closed' if self._closed else 'failing'}: {self._error}"
            )
        if self._closed:
            logger.error("mcp-guard: audit log %s is closed; dropping an event", self.path)
            return
        if len(self._queue) >= self.queue_size:
            if self.failure == "deny":
                raise AuditLogError(f"the audit log {self.path} is {self.queue_size} events behind")
            logger.error("mcp-guard: audit log %s is full; dropping an event", self.path)
            return
        self._queue.append(event)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written.

        Raises `AuditLogError` at once when writing fails in deny mode, and when ``timeout``
        passes first in buffer mode (where the writer keeps retrying).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._wake:  # the writer holds this while a batch is off the queue
                if not self._queue:
                    return
                self._wake.notify()
                if self._error is not None and self.failure == "deny":
                    raise AuditLogError(f"the audit log {self.path} is failing: {self._error}")
            if time.monotonic() > deadline:
                raise AuditLogError(f"the audit log {self.path} did not drain in {timeout} s: {self._error}")
            time.sleep(0.001)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, and a closing checkpoint, and stop the writer.

        Raises `AuditLogError` when that is not done within ``timeout`` (the log is failing).
        """
        self._closed = True
        with self._wake:
            self._wake.notify()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            raise AuditLogError(f"the audit log {self.path} did not close in {timeout} s: {self._error}")
        if self._lock >= 0:
            os.close(self._lock)  # another sink may write the log now
            self._lock = -1

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._queue and not self._closed:
                    self._wake.wait(self.flush_interval)
                batch = [self._queue.popleft() for _ in range(len(self._queue))]
                if batch:
                    self._write_batch(batch)
                if self._closed and not self._queue:
                    if self._unwitnessed:  # the last entries get a checkpoint too, retried like any write
                        self._write_batch([], checkpoint=True)
                    if not self._unwitnessed:
                        return

    def _write_batch(self, batch: list[AuditEvent], *, checkpoint: bool = False) -> None:
        """Append a batch, with a checkpoint when one is due; on failure, requeue the batch in
        order and remember the error, so the failure mode applies and the writer lives on."""
        try:
            if self._lock < 0:
                self._lock = _hold_lock(self.path)
            size = self._unchanged_size()
            if size >= self.max_bytes:
                self._rotate()
                size = 0
            lines = []
            state = ChainState(self._state.seq, self._state.last_hash)
            if size == 0:
                lines.append(entry_line(state, FILE_START, {"file": self.path.name}, self.key))
            lines.extend(self._event_line(state, event) for event in batch)
            checkpoint = checkpoint or time.monotonic() - self._checkpointed_at >= self.checkpoint_interval
            if checkpoint:
                lines.append(entry_line(state, CHECKPOINT, {"at": time.time(), "file": self.path.name}, self.key))
            self._append(lines, state)
            self._unwitnessed = not checkpoint
            if checkpoint:
                self._checkpointed_at = time.monotonic()
                self._witness(Checkpoint(state.seq - 1, state.last_hash))
            self.written += len(batch)
            if self._error is not None:
                logger.warning("mcp-guard: audit log %s is writable again", self.path)
            self._error = None
        except Exception as error:  # a disk failure, or anything else: the writer must live on
            if self._error is None:
                logger.error("mcp-guard: audit log %s failed: %s", self.path, error)
            self._error = error
            self._queue.extendleft(reversed(batch))
            time.sleep(self.flush_interval)

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
        found = _identity(self.path)
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
        whole. The lines are in the log once written, so a failing anchor is reported, never
        retried with the batch (which would write its events twice).
        """
        self._live = _append_whole(self.path, b"".join(lines))
        self._state = state
        try:
            _write_anchor(self.path, state, self.key)
        except OSError as error:
            logger.error("mcp-guard: the anchor of audit log %s could not be written: %s", self.path, error)

    def _witness(self, checkpoint: Checkpoint) -> None:
        """Hand a checkpoint written to the log to the logger and the witness, if any."""
        logger.info("mcp-guard: audit log %s checkpoint %s", self.path, checkpoint)
        if self.witness is not None:
            try:
                self.witness(checkpoint)
            except Exception:
                logger.exception(
                    "mcp-guard: the witness of audit log %s failed on checkpoint %s", self.path, checkpoint
                )

    def _rotate(self) -> None:
        """Seal the current file and move it aside; the chain continues in a fresh file."""
        segment = _next_segment(self.path)
        state = ChainState(self._state.seq, self._state.last_hash)
        self._append([entry_line(state, FILE_ROTATED, {"next": self.path.name, "as": segment.name}, self.key)], state)
        if segment.exists():
            raise AuditLogError(f"the audit log {self.path} cannot rotate: {segment} is already there")
        os.replace(self.path, segment)
        self._live = None


def _next_segment(path: Path) -> Path:
    """``audit.jsonl`` rotates to ``audit.00001.jsonl``, ``audit.00002.jsonl``, ..."""
    segments = _segments(path)
    number = segments[-1][0] + 1 if segments else 1
    return path.with_name(f"{path.stem}.{number:05d}{path.suffix}")


def _segments(path: Path) -> list[tuple[int, Path]]:
    """The files ``path`` was rotated into, numbered, oldest first."""
    if not path.parent.is_dir():
        return []
    name = re.compile(rf"{re.escape(path.stem)}\.(\d{{5,}}){re.escape(path.suffix)}")
    found = [(int(match[1]), other) for other in path.parent.iterdir() if (match := name.fullmatch(other.name))]
    return sorted(found)


def _resume(path: Path, key: bytes | None) -> ChainState:
    """The chain state after the last entry written, or a fresh chain.

    That is the last whole entry of the live file or, when the live file is gone or empty
    (rotated just before a stop), the ``chain.rotated`` entry closing the last rotated file.
    The anchor must agree: a log that ends before the entry it names was cut short, and is
    not continued (that would bless the cut). An anchor behind the log is a stop between
    writing a batch and anchoring it.
    """
    try:
        anchored = read_anchor(anchor_path(path), key)
    except ValueError as error:
        raise AuditLogError(f"the anchor of audit log {path} {error}: verify the log before writing to it") from None
    last = _last_entry(path, cut_torn=True)
    if last is None and (segments := _segments(path)):
        last = _last_entry(segments[-1][1], cut_torn=False)
        if last is not None and last.get("kind") != FILE_ROTATED:
            raise AuditLogError(f"the audit log {path} is gone, and {segments[-1][1]} was not rotated into it")
    seq, last_hash = (-1, GENESIS) if last is None else (last.get("seq"), last.get("hash"))
    if not isinstance(seq, int) or not isinstance(last_hash, str):
        raise AuditLogError(f"the last entry of audit log {path} is not a chain entry: verify the log")
    if anchored is not None and (anchored.seq > seq or (anchored.seq == seq and anchored.hash != last_hash)):
        ends = "has no entries" if last is None else f"ends at entry {seq}"
        other = "" if anchored.seq > seq else " with another hash"
        raise AuditLogError(
            f"the audit log {path} {ends}, but its anchor names entry {anchored.seq}{other}: it was cut or "
            "rewritten. Verify it, keep it as evidence, and move the log and its anchor aside to start a new chain"
        )
    return ChainState(seq + 1, last_hash)


def _last_entry(path: Path, *, cut_torn: bool) -> dict[str, Any] | None:
    """The last whole entry of a log file, None when it has none (or is not there).

    Only the end of the file is read, however long the log. A last line left half-written by a
    crash never completed an entry: with ``cut_torn`` it is cut off (and the cut logged), so
    the chain goes on from the last whole entry.
    """
    if not path.exists():
        return None
    with open(path, "r+b" if cut_torn else "rb") as file:
        size = file.seek(0, os.SEEK_END)
        span = _TAIL_BYTES
        while True:  # widen until the tail holds the last whole line, or the file is read whole
            start = max(0, size - span)
            file.seek(start)
            tail = file.read(size - start)
            line_end = tail.rfind(b"\n")
            line_start = tail.rfind(b"\n", 0, max(line_end, 0)) + 1
            if start == 0 or line_start > 0:
                break
            span *= 2
        whole = start + line_end + 1
        if whole != size and cut_torn:
            logger.warning("mcp-guard: audit log %s ended in a torn line of %d bytes; cut off", path, size - whole)
            file.truncate(whole)
    if whole == 0:
        return None
    try:
        entry = read_entry(tail[line_start : line_end + 1])
    except ValueError as error:
        raise AuditLogError(f"the last entry of audit log {path} is unreadable ({error}): verify the log") from None
    if not isinstance(entry, dict):
        raise AuditLogError(f"the last entry of audit log {path} is not a chain entry: verify the log")
    return entry


_TAIL_BYTES = 64 * 1024


def _write_anchor(path: Path, state: ChainState, key: bytes | None) -> None:
    """Record the last entry atomically beside the log, so truncation at a line boundary shows."""
    body = anchor_body(state.seq - 1, state.last_hash)
    target = anchor_path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(b'{"anchor":' + body + b',"mac":"' + digest(body, key).encode() + b'"}\n')
    os.replace(temporary, target)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """The live file as the writer left it (device, inode, size), or None when it is missing or empty."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_dev, found.st_ino, found.st_size) if found.st_size else None


def _append_whole(path: Path, data: bytes) -> tuple[int, int, int]:
    """Append ``data`` durably, all of it or none: a failed write is cut back to where it began."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)
            except OSError as error:  # the writer sees the size it did not expect, and stops
                logger.error("mcp-guard: audit log %s could not be cut back after a failed write: %s", path, error)
            raise
        found = os.fstat(fd)
        return (found.st_dev, found.st_ino, found.st_size)
    finally:
        os.close(fd)


def _hold_lock(path: Path) -> int:
    """Lock ``<path>.lock`` for this writer's life: two writers on one log would fork its chain."""
    lock = f"{os.fspath(path)}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AuditLogError(f"the audit log {path} has another writer (it holds {lock})") from None
    return fd
