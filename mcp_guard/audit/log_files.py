"""The chained log's files on disk: resuming, appending whole lines, anchoring, rotating, locking.

These are the writer's dealings with the file system, kept apart from its queue and thread
(`mcp_guard.audit.file`). Each refuses loudly (`AuditLogError`) rather than continue a chain
it cannot vouch for: a log cut short of its anchor, a log whose anchor is gone, a log that
does not verify, a second writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
from pathlib import Path

from mcp_guard.audit.chain import (
    FILE_ROTATED,
    FILE_START,
    GENESIS,
    MAX_LINE_BYTES,
    ChainState,
    anchor_body,
    anchor_path,
    digest,
    read_anchor,
    read_lines,
    verify_lines,
)

__all__ = [
    "AuditLogError",
    "FileIdentity",
    "append_whole",
    "check_lock",
    "identity",
    "last_segment",
    "next_segment",
    "resume",
    "segment_path",
    "take_lock",
    "write_anchor",
]

logger = logging.getLogger("mcp_guard")

FileIdentity = tuple[int, int, int]
"""A file as its writer left it: device, inode and size."""


class AuditLogError(OSError):
    """The audit log cannot take the event: the call that produced it must not go ahead."""


def resume(
    path: Path, key: bytes | None, *, adopt_unanchored: bool = False, cut_torn: bool = True
) -> tuple[ChainState, bool]:
    """The chain state after the last entry written (or a fresh chain), and whether the live
    file is sealed: it ends in ``chain.rotated``, the writer having stopped before renaming it.

    The live file or, when it is gone or empty because the writer stopped right after rotating,
    the last rotated file is verified whole, with the key and against the anchor: a log that
    ends before the entry its anchor names, or holds another entry there, or has an anchor older
    than its live file, or does not verify, is not continued (that would bless the cut or the
    forgery). An anchor behind the log by a batch is a stop between writing and anchoring it; a
    rotated file is renamed only once the anchor names its seal, so one continued from the last
    rotated file must have an anchor naming exactly that. A log with entries but no anchor is
    continued only with ``adopt_unanchored``: its anchor may have been deleted along with its
    end. Only once all that holds, and with ``cut_torn`` (the writer holds the lock), is a last
    line a crash left half-written cut off the live file (all it holds, when the chain goes on
    from the last rotated file).
    """
    try:
        anchored = read_anchor(anchor_path(path), key)
    except ValueError as error:
        raise AuditLogError(
            f"the anchor of audit log {path} {error}: verify the log, and move the anchor aside (then open the "
            "log with adopt_unanchored=True) only if the log is sound"
        ) from None
    segments = _segments(path)
    if _holds_a_line(path):
        last_file = path
    elif segments:
        last_file = segments[-1][1]
    elif anchored is not None:
        raise AuditLogError(_cut(path, f"has no entries, but its anchor names entry {anchored.seq}"))
    else:
        if cut_torn:
            _cut_torn_line(path)  # a lone half-written line holds no entry
        return ChainState(0, GENESIS), False
    if anchored is None and not adopt_unanchored:
        raise AuditLogError(
            f"the audit log {path} has entries but no anchor ({anchor_path(path)}): it may have been cut and the "
            "anchor deleted. Verify it, then open it with adopt_unanchored=True to continue its chain"
        )
    verdict = verify_lines([(str(last_file), read_lines(str(last_file)))], key, anchor=anchored)
    if not verdict.ok:
        raise AuditLogError(_cut(path, f"does not verify: {verdict}"))
    if verdict.last_seq is None or verdict.last_hash is None:  # a verified file holds entries: never so
        raise AuditLogError(_cut(path, "holds no entries"))
    sealed = last_file == path and verdict.last_kind == FILE_ROTATED
    if last_file != path:  # renamed aside: the anchor named the seal before the rename
        oldest = verdict.last_seq
    elif sealed:  # how far an anchor may lag: the seal written but not yet anchored,
        oldest = verdict.last_seq - 1
    else:  # or a batch
        oldest = (verdict.first_seq or 0) - 1
    if anchored is not None and anchored.seq < oldest:
        raise AuditLogError(_cut(path, f"has an anchor (entry {anchored.seq}) older than its last entries"))
    if last_file != path and verdict.last_kind != FILE_ROTATED:
        raise AuditLogError(f"the audit log {path} is gone, and {last_file} was not rotated into it")
    if last_file != path and path.is_file() and path.stat().st_size:  # a lone unended line after the rotation
        after = verify_lines([(str(last_file), read_lines(str(last_file))), (str(path), read_lines(str(path)))], key)
        if not after.torn:  # not a crash's prefix, nor a whole entry that verifies: evidence, not debris
            raise AuditLogError(_cut(path, f"does not verify: {after}"))
    if cut_torn and (verdict.torn or last_file != path):  # a live file resumed from a segment may hold a torn line
        _cut_torn_line(path)
    return ChainState(verdict.last_seq + 1, verdict.last_hash), sealed


def _holds_a_line(path: Path) -> bool:
    """Whether the file holds at least one whole line (a lone half-written one is no entry)."""
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except (FileNotFoundError, AuditLogError):  # missing, or no regular file: no line a writer left
        return False
    with open(fd, "rb") as file:
        while chunk := file.read(_TAIL_BYTES):
            if b"\n" in chunk:
                return True
    return False


def _cut(path: Path, what: str) -> str:
    return (
        f"the audit log {path} {what}: it was cut or rewritten. Verify it, keep it as evidence, and move the log, "
        "its rotated files and its anchor aside to start a new chain"
    )


def _cut_torn_line(path: Path) -> None:
    """Cut off a last line left half-written by a crash (it never completed an entry), and log it.

    Only the end of the file is read, however long the log.
    """
    try:
        fd = _open_regular(path, os.O_RDWR)  # never through a link swapped in
    except FileNotFoundError:
        return
    with open(fd, "r+b") as file:
        size = file.seek(0, os.SEEK_END)
        span = _TAIL_BYTES
        while True:  # widen until the tail holds a line end, or the file is read whole
            start = max(0, size - span)
            file.seek(start)
            line_end = file.read(size - start).rfind(b"\n")
            if line_end >= 0 or start == 0:
                break
            span *= 2
        whole = start + line_end + 1
        if whole != size:
            logger.warning("mcp-guard: audit log %s ended in a torn line of %d bytes; cut off", path, size - whole)
            file.truncate(whole)


_TAIL_BYTES = 64 * 1024


def next_segment(path: Path) -> Path:
    """``audit.jsonl`` rotates to ``audit.00001.jsonl``, ``audit.00002.jsonl``, ...: one past the
    last segment (`last_segment`), so segments moved elsewhere are never numbered again."""
    return segment_path(path, last_segment(path) + 1)


def last_segment(path: Path) -> int:
    """The number of the last file the log rotated into: the highest in its directory, or the
    one its live file follows (named in its first entry), whichever is higher; 0 for none."""
    segments = _segments(path)
    return max(segments[-1][0] if segments else 0, _followed(path))


def segment_path(path: Path, number: int) -> Path:
    """Where segment ``number`` of the log at ``path`` lies."""
    return path.with_name(f"{path.stem}.{number:05d}{path.suffix}")


def _followed(path: Path) -> int:
    """The segment the live file follows, as its first entry names it (0 when it names none)."""
    try:
        with open(_open_regular(path, os.O_RDONLY), "rb") as file:  # never waiting on a FIFO
            head = json.loads(file.readline(MAX_LINE_BYTES))
    except (OSError, ValueError, RecursionError):  # none there, or no entry: it follows none
        return 0
    event = head.get("event") if isinstance(head, dict) and head.get("kind") == FILE_START else None
    follows = event.get("follows") if isinstance(event, dict) else None
    match = _segment_pattern(path).fullmatch(follows) if isinstance(follows, str) else None
    return int(match[1]) if match else 0


def _segments(path: Path) -> list[tuple[int, Path]]:
    """The files ``path`` was rotated into, numbered, oldest first."""
    if not path.parent.is_dir():
        return []
    name = _segment_pattern(path)
    found = [(int(match[1]), other) for other in path.parent.iterdir() if (match := name.fullmatch(other.name))]
    return sorted(found)


def _segment_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(path.stem)}\.(\d{{5,}}){re.escape(path.suffix)}")


def identity(path: Path) -> FileIdentity | None:
    """The file as it stands (device, inode, size), or None when it is missing or empty."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_dev, found.st_ino, found.st_size) if found.st_size else None


def append_whole(path: Path, data: bytes) -> FileIdentity:
    """Append ``data`` durably, all of it or none: a failed write is cut back to where it began.

    A file this creates has its directory entry made durable too.
    """
    fd = _open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException as failure:
            try:
                os.ftruncate(fd, start)
            except OSError as error:  # the writer sees a size it did not expect, and stops
                raise AuditLogError(f"{failure}; and the log {path} could not be cut back: {error}") from failure
            raise
        found = os.fstat(fd)
    finally:
        os.close(fd)
    if start == 0:
        sync_directory(path.parent)
    return (found.st_dev, found.st_ino, found.st_size)


def sync_directory(directory: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_anchor(path: Path, state: ChainState, key: bytes | None) -> None:
    """Record the last entry atomically and durably beside the log, so a cut at a line
    boundary shows."""
    body = anchor_body(state.seq - 1, state.last_hash)
    target = anchor_path(path)
    temporary = target.with_name(target.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):  # whatever is there (a link planted to clobber its target)
        os.unlink(temporary)
    with open(temporary, "xb") as file:  # created afresh, never through a link
        file.write(b'{"anchor":' + body + b',"mac":"' + digest(body, key).encode() + b'"}\n')
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)


def take_lock(path: Path) -> int:
    """Lock ``<path>.lock`` for a writer's life: two writers on one log would fork its chain.

    The lock is taken in the log's real directory, so every spelling of the path takes the same
    one, and a live file reached through a symlink or with another hard link is refused: by its
    other name a second writer would take another lock, and rotating renames only this name.
    Raises `AuditLogError` when another writer holds the lock or the live file is linked, and
    `OSError` when the lock cannot be created (no directory yet, say).
    """
    _refuse_links(path)
    lock = _lock_path(path)
    for _ in range(3):
        fd = _open_regular(lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AuditLogError(f"the audit log {path} has another writer (it holds {lock})") from None
        if _holds(fd, lock):
            return fd
        os.close(fd)  # the lock file was replaced while it was taken: take the one there now
    raise AuditLogError(f"the lock file {lock} of audit log {path} keeps being replaced")


def check_lock(fd: int, path: Path) -> None:
    """Raise `AuditLogError` unless ``fd`` still locks the file at ``<path>.lock``: a lock file
    removed or replaced lets another writer in."""
    if not _holds(fd, _lock_path(path)):
        raise AuditLogError(
            f"the lock file of audit log {path} was removed or replaced, so another writer may have started: "
            "writing stopped"
        )


def _holds(fd: int, lock: Path) -> bool:
    try:
        there = os.stat(lock)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _open_regular(path: Path, flags: int) -> int:
    """Open ``path`` (created if missing, when ``flags`` say so) only if it is a regular file: never through a
    symlink, and never waiting on a FIFO put in its place (the writer would hang); else
    `AuditLogError`."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        raise AuditLogError(f"{path} is not a regular file (a symbolic link, or a FIFO): {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AuditLogError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _refuse_links(path: Path) -> None:
    """Raise `AuditLogError` when the live file is a symlink, has other names (hard links), or
    is no regular file at all."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(found.st_mode):
        raise AuditLogError(
            f"the audit log {path} is a symbolic link: give its real path ({os.path.realpath(path)}), as rotation "
            "renames the live file and a second writer could come in by the other name"
        )
    if not stat.S_ISREG(found.st_mode):
        raise AuditLogError(f"the audit log {path} is not a regular file")
    if found.st_nlink > 1:
        raise AuditLogError(
            f"the audit log {path} has {found.st_nlink} hard links: remove the others, as rotation renames only this "
            "name and a second writer could come in by another"
        )


def _lock_path(path: Path) -> Path:
    """``<path>.lock``, in the directory ``path`` really is in (the live file is no symlink, see `take_lock`)."""
    return Path(os.path.realpath(path.parent), f"{path.name}.lock")
