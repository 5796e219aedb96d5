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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from mcp_guard.audit.chain import (
    CHECKPOINT,
    FILE_ROTATED,
    FILE_START,
    GENESIS,
    ChainState,
    Checkpoint,
    anchor_body,
    anchor_path,
    digest,
    entry_line,
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
    continues into the fresh file. Restarting on an existing log continues its chain. ``key``
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
        self._state = _resume(self.path)
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
            size = self.path.stat().st_size if self.path.exists() else 0
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

        An event with a value that cannot be written at all (one whose ``str`` fails) is not
        dropped: a stand-in with its id, kind, time and the reason takes its place.
        """
        try:
            return event_line(state, event, self.key)
        except Exception as error:
            logger.exception("mcp-guard: audit event %s cannot be written in full", event.event_id)
            stand_in = {"event_id": event.event_id, "kind": str(event.kind), "at": event.at}
            stand_in["unwritable"] = f"{type(error).__name__}: {ascii(str(error))[1:-1][:200]}"
            return entry_line(state, event.kind, stand_in, self.key)

    def _append(self, lines: list[bytes], state: ChainState) -> None:
        """Write whole lines durably, then adopt the chain state they lead to and anchor it.

        The lines are in the log by then, so a failing anchor is reported, never retried with
        the batch (which would write its events twice).
        """
        with open(self.path, "ab") as file:
            file.write(b"".join(lines))
            file.flush()
            os.fsync(file.fileno())
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
        os.replace(self.path, segment)


def _next_segment(path: Path) -> Path:
    """``audit.jsonl`` rotates to ``audit.00001.jsonl``, ``audit.00002.jsonl``, ..."""
    taken = [
        int(found.suffixes[-2][1:])
        for found in path.parent.glob(f"{path.stem}.*{path.suffix}")
        if len(found.suffixes) >= 2 and found.suffixes[-2][1:].isdigit()
    ]
    return path.with_name(f"{path.stem}.{max(taken, default=0) + 1:05d}{path.suffix}")


def _resume(path: Path) -> ChainState:
    """The chain state after the last entry of an existing log, or a fresh chain.

    Only the end of the file is read, however long the log. A last line left half-written by a
    crash never completed an entry: it is cut off (and the cut logged), so the chain goes on
    from the last whole entry.
    """
    if not path.exists() or path.stat().st_size == 0:
        return ChainState(0, GENESIS)
    with open(path, "r+b") as file:
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
        if whole != size:
            logger.warning("mcp-guard: audit log %s ended in a torn line of %d bytes; cut off", path, size - whole)
            file.truncate(whole)
    if whole == 0:
        return ChainState(0, GENESIS)
    last = read_entry(tail[line_start : line_end + 1])
    return ChainState(int(last["seq"]) + 1, str(last["hash"]))


_TAIL_BYTES = 64 * 1024


def _write_anchor(path: Path, state: ChainState, key: bytes | None) -> None:
    """Record the last entry atomically beside the log, so truncation at a line boundary shows."""
    body = anchor_body(state.seq - 1, state.last_hash)
    target = anchor_path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(b'{"anchor":' + body + b',"mac":"' + digest(body, key).encode() + b'"}\n')
    os.replace(temporary, target)
