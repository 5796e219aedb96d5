"""The tamper-evident audit log format: JSON lines, each carrying the hash of the one before.

One entry per line, compact UTF-8 JSON, hash member last::

    {"alg":"sha256","event":{...},"kind":"call.decided","prev":"<64 hex>","seq":7,"hash":"<64 hex>"}

``hash`` is SHA-256 (or, with a key, HMAC-SHA-256) of the line's bytes without its hash member,
exactly as stored (verifying never re-serializes), and ``prev`` is the hash of the entry
before, so editing, deleting, reordering or inserting any entry breaks the chain at that entry.
Each file opens with a ``chain.file`` entry and a rotated file ends with ``chain.rotated``; the
next file continues the same chain. A ``chain.checkpoint`` entry, written periodically, commits
to everything before it: its sequence number and hash, kept somewhere else, later prove that
the chain up to it was not rewritten. Without a key anyone can recompute a consistent chain,
so keep a key, or the checkpoints, apart from the log for integrity against someone with
write access.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from pydantic_core import PydanticSerializationError, from_json, to_json

__all__ = [
    "GENESIS",
    "MAX_LINE_BYTES",
    "ChainState",
    "Checkpoint",
    "Verdict",
    "anchor_path",
    "digest",
    "encoded_entry_line",
    "entry_line",
    "read_anchor",
    "read_entries",
    "read_entry",
    "read_lines",
    "verify_files",
    "verify_lines",
]

GENESIS = "0" * 64
"""``prev`` of the very first entry of a chain."""

FILE_START = "chain.file"
FILE_ROTATED = "chain.rotated"
CHECKPOINT = "chain.checkpoint"

MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest entry the log holds, its line end included: the writer never writes a longer one."""

_HASH_MEMBER = ',"hash":"'
_HASH_MEMBER_BYTES = _HASH_MEMBER.encode()


@dataclass
class ChainState:
    """Where a chain stands: the next sequence number and the last entry's hash."""

    seq: int = 0
    last_hash: str = GENESIS


def entry_line(state: ChainState, kind: str, event: Mapping[str, Any], key: bytes | None = None) -> bytes:
    """The next line of the chain for ``event``, advancing ``state``; ends with a newline."""
    entry = {
        "alg": "hmac-sha256" if key else "sha256",
        "event": event,
        "kind": kind,
        "prev": state.last_hash,
        "seq": state.seq,
    }
    return _sealed(state, _compact_json(entry), key)


def encoded_entry_line(state: ChainState, kind: str, event: bytes, key: bytes | None = None) -> bytes:
    """`entry_line` for an event already written as compact JSON, byte for byte the same.

    ``kind`` must need no escaping (an `EventKind` value).
    """
    alg = b"hmac-sha256" if key else b"sha256"
    body = b'{"alg":"%s","event":%s,"kind":"%s","prev":"%s","seq":%d}' % (
        alg,
        event,
        kind.encode("ascii"),
        state.last_hash.encode("ascii"),
        state.seq,
    )
    return _sealed(state, body, key)


def _sealed(state: ChainState, body: bytes, key: bytes | None) -> bytes:
    """``body`` with its hash member appended, as a line; advances ``state`` past it."""
    entry_hash = digest(body, key)
    state.seq += 1
    state.last_hash = entry_hash
    return b'%s%s%s"}\n' % (body[:-1], _HASH_MEMBER_BYTES, entry_hash.encode())


def _compact_json(value: Mapping[str, Any]) -> bytes:
    """``value`` as compact JSON, NaN and infinities as null.

    What the fast encoder refuses (lone surrogates from a token's claims, values that are not
    JSON) falls back to escaped ASCII, writing a value that is not JSON as its ``str``.
    """
    try:
        return to_json(value, inf_nan_mode="null")
    except (PydanticSerializationError, ValueError, TypeError):
        text = json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str)
        return text.encode("ascii")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities, at any depth, replaced by None (as the fast path does)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@dataclass(frozen=True)
class Checkpoint:
    """A chain's entry ``seq`` and its hash: held elsewhere, it pins the chain up to there."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """``SEQ:HASH``, as ``str`` writes it."""
        seq, _, entry_hash = text.partition(":")
        if not seq.isdigit() or len(entry_hash) != 64 or entry_hash.strip("0123456789abcdef"):
            raise ValueError(f"a checkpoint is SEQ:HASH (64 lowercase hex digits), not {text[:80]!r}")
        return cls(int(seq), entry_hash)


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying a chain: intact, or where and how it first breaks."""

    ok: bool
    entries: int
    problem: str | None = None
    file: str | None = None
    line: int | None = None
    seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    first_seq: int | None = None
    """The sequence number the files given start at (0 for a whole log)."""
    last_kind: str | None = None
    """The kind of the last entry verified."""
    continues_in: str | None = None
    """When the last entry verified is a rotation, the name of the file the chain continues in."""
    torn: bool = False
    """Whether the last file ends in a line a crash left without its line end: a true prefix, or
    a whole entry that verified (either way not an entry; the writer cuts it when it reopens)."""
    last_file_start: int | None = None
    """The sequence number of the last file's first entry."""

    def __str__(self) -> str:
        if self.ok:
            torn = " (and a last line a crash left half-written, which is no entry)" if self.torn else ""
            return f"intact: {self.entries} entries, up to entry {self.last_seq}{torn}"
        where = ":".join(str(part) for part in (self.file, self.line) if part is not None) or "the end"
        entry = "" if self.seq is None else f" (entry {self.seq})"
        return f"BROKEN at {where}{entry}: {self.problem}"


def verify_lines(
    files: Iterable[tuple[str, Iterable[bytes]]],
    key: bytes | None = None,
    checkpoints: Iterable[Checkpoint] = (),
    *,
    anchor: Checkpoint | None = None,
) -> Verdict:
    """Verify the lines of one chain, spread over ``files`` in order (name, lines).

    With a key, every entry must be HMAC'd with it; without one, SHA-256 entries verify and
    HMAC entries are reported as needing the key. Each of ``checkpoints`` (held elsewhere)
    must match the entry it names, and that entry must be among those verified: a checkpoint
    before the first file given is a failure, since a rewritten log could start after it.
    ``anchor`` (the log's own anchor) must match the entry it names when the files reach it,
    and the files must reach it; an anchor before the first file given is not checked.
    """
    held: dict[int, str] = {}
    for checkpoint in checkpoints:
        if held.setdefault(checkpoint.seq, checkpoint.hash) != checkpoint.hash:
            return Verdict(False, 0, f"two different checkpoints for entry {checkpoint.seq}", seq=checkpoint.seq)
    anchored = {} if anchor is None else {anchor.seq: anchor.hash}
    unanchored: Verdict | None = None
    expected_seq, prev, entries, rotated, kind, continues_in = -1, GENESIS, 0, False, None, None
    first_seq: int | None = None
    file_start: int | None = None
    torn: Verdict | None = None
    """A last line without its end, as a crash mid-write leaves it: a break only if a file follows."""
    for index, (name, lines) in enumerate(files):
        if torn is not None:
            return torn
        first = True
        for number, raw in enumerate(lines, start=1):
            problem = None
            ended = raw.endswith(b"\n") or len(raw) >= MAX_LINE_BYTES
            if not ended and _torn(raw):  # the file's last line (`read_lines` ends a file there)
                torn = _torn_verdict(entries, name, number, _known(expected_seq))
                break
            try:
                entry, body, stored = _parse(raw if ended else raw + b"\n")
            except ValueError as error:
                problem = f"truncated or corrupt line ({error})"
                return Verdict(False, entries, problem, name, number, _known(expected_seq))
            seq = entry.get("seq")
            if expected_seq < 0:  # a chain may be verified from any of its files on
                if entry.get("kind") != FILE_START or not isinstance(seq, int):
                    problem = "head missing (a log must start with a chain.file entry)"
                    return Verdict(False, entries, problem, name, number, seq if isinstance(seq, int) else None)
                expected_seq, prev, first_seq = seq, str(entry.get("prev")), seq
                if anchored.get(seq - 1, prev) != prev:
                    problem = f"rewritten (the anchored entry {seq - 1} is not the one this file continues)"
                    return Verdict(False, entries, problem, name, number, seq)
            if entry.get("alg") == "hmac-sha256" and key is None:
                return Verdict(
                    False, entries, "entry is HMAC'd: verify with its key (--key-file or --key-env)", name, number, seq
                )
            if key is not None and entry.get("alg") != "hmac-sha256":
                problem = "entry is not HMAC'd with the key: rewritten or forged"
            elif not hmac.compare_digest(digest(body, key), stored):
                problem = "forged (HMAC does not verify)" if key else "edited (hash does not match the entry)"
            elif not isinstance(seq, int) or seq != expected_seq:
                problem = _sequence_problem(seq, expected_seq)
            elif entry.get("prev") != prev:
                problem = "spliced (does not continue the previous entry)"
            elif first and entry.get("kind") != FILE_START:
                problem = "head missing (a file must start with a chain.file entry)"
            elif first and index > 0 and not rotated:
                problem = "spliced (the previous file was not rotated into this one)"
            elif held.get(seq, stored) != stored:
                problem = f"rewritten (entry {seq} is not the one checkpointed)"
            elif anchored.get(seq, stored) != stored and unanchored is None:  # told after any break in the chain
                unanchored = Verdict(
                    False, entries, f"rewritten (entry {seq} is not the one anchored)", name, number, seq
                )
            if problem is not None:
                return Verdict(False, entries, problem, name, number, seq if isinstance(seq, int) else expected_seq)
            if not ended:  # a whole entry but for its line end, as a crash can leave it: verified, not counted
                torn = _torn_verdict(entries, name, number, expected_seq)
                break
            if first:
                file_start = seq
            kind = entry.get("kind")
            rotated = kind == FILE_ROTATED
            event = entry.get("event")
            continues_in = event.get("next") if rotated and isinstance(event, dict) else None
            prev, expected_seq, entries, first = stored, expected_seq + 1, entries + 1, False
        if first:
            return torn or Verdict(
                False, entries, "truncated to nothing (the file holds no entries)", name, None, max(expected_seq, 0)
            )
    earlier = [seq for seq in held if first_seq is not None and seq < first_seq]
    if earlier:
        problem = f"checkpointed entry {min(earlier)} comes before the files given (verify from an earlier file)"
        return Verdict(False, entries, problem, None, None, min(earlier), expected_seq - 1, prev)
    beyond = [seq for seq in held if seq >= expected_seq]
    if beyond:  # a torn last line is then where the log breaks
        problem = f"truncated (the chain ends before checkpointed entry {min(beyond)})"
        return torn or Verdict(False, entries, problem, None, None, expected_seq, expected_seq - 1, prev)
    if unanchored is not None:
        return unanchored
    if anchor is not None and anchor.seq >= expected_seq:
        problem = f"truncated (entries {expected_seq}..{anchor.seq} are missing from the end)"
        return torn or Verdict(False, entries, problem, None, None, expected_seq, expected_seq - 1, prev)
    return Verdict(
        True,
        entries,
        last_seq=expected_seq - 1,
        last_hash=prev,
        first_seq=first_seq,
        last_kind=str(kind),
        continues_in=continues_in if isinstance(continues_in, str) else None,
        torn=torn is not None,
        last_file_start=file_start,
    )


def verify_files(
    paths: list[str],
    key: bytes | None = None,
    checkpoints: Iterable[Checkpoint] = (),
    *,
    from_start: bool = True,
    to_end: bool = True,
) -> Verdict:
    """Verify log files (in chain order) against the anchor beside the last one.

    The anchor names the last entry written: a log that ends before it was cut short, and an
    entry at its place with another hash was rewritten. ``checkpoints`` are those kept
    elsewhere (see `verify_lines`). ``from_start`` asks the files to start at entry 0 (say
    False when older segments were archived); ``to_end`` asks them to run to the end of the
    log: the live file, or the rotation its anchor names when the writer stopped right after
    rotating, with the anchor present (say False for a run of archived segments).
    """
    if not paths:
        raise ValueError("give the log's files to verify")
    checkpoints = tuple(checkpoints)
    anchor = anchor_path(paths[-1])
    try:
        anchored, anchor_problem = read_anchor(anchor, key), None
    except ValueError as error:
        anchored, anchor_problem = None, f"the anchor {anchor} {error}"
    files = paths
    verdict = _verified(paths, key, checkpoints, anchored)
    if to_end and len(paths) > 1 and _holds_no_entry(verdict, paths[-1]):  # a live file created right after a rotation?
        rotated = _verified(paths[:-1], key, checkpoints, anchored)
        if rotated.continues_in == os.path.basename(paths[-1]):
            files, verdict = paths[:-1], replace(rotated, torn=verdict.torn)
    if not verdict.ok:
        return verdict
    if anchor_problem is not None:
        return Verdict(False, verdict.entries, anchor_problem, str(anchor))
    if from_start and verdict.first_seq:
        problem = f"entries 0..{verdict.first_seq - 1} are missing (give the earlier files, or --starts-later)"
        return Verdict(False, verdict.entries, problem, files[0], 1, verdict.first_seq)
    if not to_end:
        return verdict
    if verdict.last_kind == FILE_ROTATED:
        return _stopped_after_rotating(verdict, Path(files[-1]), key, live_given=files is not paths)
    if anchored is None:
        problem = f"the anchor {anchor} is missing (deleted with the end of the log?)"
        return Verdict(False, verdict.entries, problem, str(anchor))
    if verdict.last_file_start is not None and anchored.seq < verdict.last_file_start - 1:
        return _old_anchor(verdict, anchored, anchor)
    return verdict


def _holds_no_entry(verdict: Verdict, path: str) -> bool:
    """Whether ``verdict`` broke only because the file at ``path`` holds no entry: it is empty,
    or holds nothing but a torn line (a prefix, or a whole entry that verified)."""
    if verdict.ok or verdict.file != path:
        return False
    return verdict.line is None or (verdict.line == 1 and verdict.torn)


def _old_anchor(verdict: Verdict, anchored: Checkpoint, anchor: Path) -> Verdict:
    """An anchor the writer cannot have left: older than the entries it would lag behind."""
    problem = f"the anchor {anchor} names entry {anchored.seq}, older than the last file (an old anchor put back?)"
    return Verdict(False, verdict.entries, problem, str(anchor), None, anchored.seq)


def _verified(
    paths: list[str], key: bytes | None, checkpoints: Iterable[Checkpoint], anchor: Checkpoint | None
) -> Verdict:
    return verify_lines(((path, read_lines(path)) for path in paths), key, checkpoints, anchor=anchor)


def _stopped_after_rotating(verdict: Verdict, segment: Path, key: bytes | None, *, live_given: bool) -> Verdict:
    """A chain ending where a file was rotated is whole only if the file it continues in was
    never written (or is this very file, sealed but not yet renamed; or was given, and holds no
    entry) and the anchor beside that file names exactly the rotation. A rotation naming no file
    beside it to go on in (no name, or one with directory parts) is no writer's."""
    if verdict.continues_in is None or not _bare_name(verdict.continues_in):
        problem = (
            f'its last entry, chain.rotated, names no file beside it to go on in ("next": {verdict.continues_in!r})'
        )
        return Verdict(False, verdict.entries, problem, str(segment), None, verdict.last_seq)
    live = segment.with_name(verdict.continues_in)
    problem = f"the log goes on in {str(live)!r} (give it too, or --ends-earlier)"  # a logged name, escaped
    sealed = live == segment  # stopped after sealing the live file, before renaming it
    if not sealed and not live_given and live.is_file() and not _empty(str(live)):
        return Verdict(False, verdict.entries, problem, str(segment), None, verdict.last_seq)
    try:
        anchored = read_anchor(anchor_path(live), key)
    except ValueError:
        anchored = None
    last = Checkpoint(verdict.last_seq if verdict.last_seq is not None else -1, verdict.last_hash or "")
    if sealed and anchored is not None and last.seq - 1 <= anchored.seq <= last.seq:
        return verdict  # its anchor lags the seal at most (the files were checked against it)
    if sealed and anchored is not None and anchored.seq < last.seq - 1:
        return _old_anchor(verdict, anchored, anchor_path(live))
    if anchored != last:  # renamed aside: the anchor was written with the seal, before the rename
        return Verdict(False, verdict.entries, problem, str(segment), None, verdict.last_seq)
    return verdict


def _bare_name(name: str) -> bool:
    """Whether ``name`` names a file in the directory it is read in: no directory parts."""
    return name not in ("", ".", "..") and not any(part in name for part in ("/", "\0"))


def _empty(path: str) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) == 0


def read_anchor(anchor: Path, key: bytes | None) -> Checkpoint | None:
    """The entry an anchor file names, or None when there is none; `ValueError` when it does
    not verify (unreadable, edited, or written with another key)."""
    try:
        text = _small_file(anchor).decode("ascii")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise ValueError("is unreadable") from None
    try:
        document = json.loads(text)
        seq, anchored_hash = int(document["anchor"]["seq"]), str(document["anchor"]["hash"])
        genuine = hmac.compare_digest(digest(anchor_body(seq, anchored_hash), key), str(document["mac"]))
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deeply to read
        raise ValueError("is unreadable") from None
    if not genuine:
        raise ValueError("does not verify (edited, or another key)")
    return Checkpoint(seq, anchored_hash)


def _small_file(path: Path, limit: int = 4096) -> bytes:
    """The bytes of a small regular file: `ValueError` for anything else (see `_open_regular`)."""
    with _open_regular(path) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError("too long")
    return data


def _open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """A regular file opened for reading without blocking on the way: `ValueError` for anything
    else (a FIFO put in a log file's place would hang a plain open, /dev/zero a read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{os.fspath(path)} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def anchor_body(seq: int, last_hash: str) -> bytes:
    """The anchor's signed body: the sequence number and hash of the last entry written."""
    return json.dumps({"hash": last_hash, "seq": seq}, sort_keys=True, separators=(",", ":")).encode("ascii")


def anchor_path(path: str | os.PathLike[str]) -> Path:
    """Where the anchor of the log at ``path`` is kept."""
    return Path(f"{os.fspath(path)}.anchor")


def _parse(raw: bytes) -> tuple[dict[str, Any], bytes, str]:
    """The entry, the bytes its hash covers, and the stored hash, from one raw line."""
    if not raw.endswith(b"\n"):
        raise ValueError("longer than 16 MiB" if len(raw) >= MAX_LINE_BYTES else "no line end")
    line = raw[:-1]
    cut = line.rfind(_HASH_MEMBER_BYTES)
    if cut < 0 or not line.endswith(b'"}') or len(line) - cut != len(_HASH_MEMBER) + 64 + 2:
        raise ValueError("no hash member at the end")
    stored = line[cut + len(_HASH_MEMBER) : -2].decode("ascii")  # a UnicodeDecodeError is a ValueError
    body = line[:cut] + b"}"
    entry = read_entry(line)
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    return entry, body, stored


def _known(expected_seq: int) -> int | None:
    """The entry a line should be, or None before the chain's first entry tells."""
    return expected_seq if expected_seq >= 0 else None


def _torn_verdict(entries: int, name: str, number: int, seq: int | None) -> Verdict:
    """A last line without its line end: where the chain breaks if anything follows it."""
    return Verdict(False, entries, "truncated or corrupt line (no line end)", name, number, seq, torn=True)


def _torn(raw: bytes) -> bool:
    """Whether ``raw``, a last line without its line end, is a true prefix of a line, as a crash
    mid-write leaves it. A whole JSON value is no prefix: it must verify as the next entry."""
    try:
        read_entry(raw)
    except ValueError:
        return True
    return False


def _sequence_problem(seq: object, expected: int) -> str:
    if not isinstance(seq, int):
        return "edited (no sequence number)"
    if seq > expected:
        return f"deleted (entries {expected}..{seq - 1} are missing)"
    if seq == expected - 1:
        return "duplicated (repeats the previous entry)"
    return f"reordered (entry {seq} appears where {expected} belongs)"


def digest(body: bytes, key: bytes | None) -> str:
    """SHA-256 of ``body``, or HMAC-SHA-256 with ``key``, in hex."""
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def read_entry(line: bytes) -> Any:
    """The JSON value of one log line, read by the fast parser.

    What only the standard parser takes falls back to it: an escaped lone surrogate (written
    for a token claim that held one) or a bare ``NaN``. Raises `ValueError` for anything else,
    including nesting too deep to read.
    """
    try:
        return from_json(line, allow_inf_nan=False, cache_strings=False)
    except ValueError:
        pass
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_entries(path: str) -> Iterator[dict[str, Any]]:
    """The entries of a log file as `verify` reads them, unverified: for searching.

    Only whole lines count, so a last line without its line end (torn by a crash, or slipped
    in by someone else) is never shown as an entry; nor is a line that is not an entry.
    """
    for raw in read_lines(path):
        try:
            yield _parse(raw)[0]
        except ValueError:
            continue


def read_lines(path: str) -> Iterator[bytes]:
    """The raw lines of a log file, each with its line end.

    A last line without one is truncated. Of a line longer than `MAX_LINE_BYTES` only its
    first `MAX_LINE_BYTES` are yielded (without a line end), and the rest is skipped. Raises
    `ValueError` when ``path`` is not a regular file (a FIFO, a device), rather than hang.
    """
    with _open_regular(path) as file:
        while line := file.readline(MAX_LINE_BYTES):
            yield line
            while len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
                line = file.readline(MAX_LINE_BYTES)
