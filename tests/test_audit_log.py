"""The tamper-evident audit log: written by the guard, verified, searched, and attacked."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from mcp_guard import EventKind, Guard, ReasonCode, ToolSpec
from mcp_guard.audit.chain import ChainState, Checkpoint, anchor_path, entry_line, read_entry, verify_files
from mcp_guard.audit.events import AuditEvent
from mcp_guard.audit.file import AuditLogError, FileAuditSink
from mcp_guard.audit.log_files import write_anchor
from mcp_guard.cli import main as cli
from mcp_guard.testing import access_token, acting_as
from support import notes_server

pytestmark = pytest.mark.anyio

ENTRIES = 12


def written_log(directory: Path, entries: int = ENTRIES, key: bytes | None = None, name: str = "audit.jsonl") -> Path:
    """A closed log of ``entries`` events, written by the real sink."""
    path = directory / name
    sink = FileAuditSink(path, key=key)
    for index in range(entries):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0 + index, tool=f"tool_{index}"))
    sink.flush()
    sink.close()
    return path


def shared_log(directory: Path) -> Path:
    """The log written once per test: Hypothesis runs every example in the same directory."""
    path = directory / "audit.jsonl"
    return path if path.exists() else written_log(directory)


def broken_at(path: Path, key: bytes | None = None) -> tuple[int | None, str]:
    verdict = verify_files([str(path)], key)
    assert not verdict.ok, "the tampering went unnoticed"
    return verdict.line, verdict.problem or ""


async def test_the_guard_writes_a_chained_log_that_verifies_and_searches(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    guard = Guard(audit=[sink])
    credential = access_token("alice", "notes:read", jti="jti-a")
    with acting_as(credential):
        async with Client(notes_server(guard)) as client:
            await client.call_tool("read_note", {"title": "welcome"})
            with pytest.raises(Exception):  # noqa: B017, PT011 - the denial itself is tested elsewhere
                await client.call_tool("write_note", {"title": "t", "text": "x"})
    sink.close()
    verdict = verify_files([str(path)])
    assert verdict.ok, verdict
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["kind"] for entry in entries[:1] + entries[-1:]] == ["chain.file", "chain.checkpoint"]
    events = [entry["event"] for entry in entries[1:-1]]
    decided = [event for event in events if event["kind"] == "call.decided"]
    assert [(e["tool"], e["decision"], e["reasons"]) for e in decided] == [
        ("read_note", "allowed", ["allowed"]),
        ("write_note", "denied", ["insufficient_scope"]),
    ]
    assert decided[1]["missing_scopes"] == ["notes:write"]
    assert decided[0]["token_id"] == "jti-a"
    assert credential.token not in path.read_text()  # no bearer string in the log


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_editing_any_byte_is_caught_on_its_line(tmp_path: Path, data: st.DataObject) -> None:
    path = shared_log(tmp_path)
    original = path.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda byte: byte != original[position]))
    try:
        path.write_bytes(original[:position] + bytes([replacement]) + original[position + 1 :])
        line, _ = broken_at(path)
        assert line == original[:position].count(b"\n") + 1
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("index", [0, 1, 5, ENTRIES - 1, ENTRIES])
def test_deleting_a_line_is_caught_where_it_was(tmp_path: Path, index: int) -> None:
    path = written_log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:index] + lines[index + 1 :]))
    line, problem = broken_at(path)
    if index == len(lines) - 1:
        assert "truncated" in problem  # only the anchor can tell the last entry is gone
    else:
        assert line == index + 1
        assert ("head missing" if index == 0 else "deleted") in problem


@pytest.mark.parametrize("index", [1, 4, ENTRIES])
def test_duplicating_or_reordering_lines(tmp_path: Path, index: int) -> None:
    path = written_log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[: index + 1], lines[index], *lines[index + 1 :]]))
    assert broken_at(path) == (index + 2, "duplicated (repeats the previous entry)")
    swapped = [*lines[: index - 1], lines[index], lines[index - 1], *lines[index + 1 :]]
    path.write_bytes(b"".join(swapped))
    assert broken_at(path)[0] == index


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_truncating_anywhere_is_caught(tmp_path: Path, data: st.DataObject) -> None:
    path = shared_log(tmp_path)
    original = path.read_bytes()
    cut = data.draw(st.integers(0, len(original) - 1))
    try:
        path.write_bytes(original[:cut])
        _, problem = broken_at(path)
        assert "truncated" in problem
    finally:
        path.write_bytes(original)


def test_a_break_names_its_entry_when_it_is_known(tmp_path: Path) -> None:
    path = written_log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b" " + lines[0][1:] + b"".join(lines[1:]))  # before the chain says where it starts
    verdict = verify_files([str(path)])
    assert (verdict.line, verdict.seq) == (1, None) and "(entry" not in str(verdict)
    path.write_bytes(b"".join([*lines[:2], lines[2].replace(b'"seq":', b'"se q":'), *lines[3:]]))
    verdict = verify_files([str(path)])
    assert (verdict.line, verdict.seq) == (3, 2) and "(entry 2)" in str(verdict)


def test_splicing_two_logs_is_caught(tmp_path: Path) -> None:
    first = written_log(tmp_path, name="a.jsonl")
    second = written_log(tmp_path, name="b.jsonl")
    spliced = tmp_path / "spliced.jsonl"
    spliced.write_bytes(first.read_bytes() + second.read_bytes())
    line, _ = broken_at(spliced)
    assert line == ENTRIES + 3  # the first line of the second log, after the closing checkpoint
    verdict = verify_files([str(first), str(second)])
    assert not verdict.ok
    assert verdict.file == str(second)


def test_hmac_keyed_logs(tmp_path: Path) -> None:
    key = b"a key kept somewhere else"
    path = written_log(tmp_path, key=key)
    assert verify_files([str(path)], key).ok
    assert "--key" in broken_at(path)[1]
    assert "forged" in broken_at(path, b"another key")[1]
    rewritten = tmp_path / "rewritten.jsonl"  # a forger without the key rebuilds a plain chain
    state, lines = ChainState(), []
    for raw in path.read_bytes().splitlines():
        entry = json.loads(raw)
        lines.append(entry_line(state, entry["kind"], entry["event"]))
    rewritten.write_bytes(b"".join(lines))
    assert "not HMAC'd" in broken_at(rewritten, key)[1]


def test_concurrent_writers_never_interleave_or_fork(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)

    def write(worker: int) -> None:
        for index in range(400):
            sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"w{worker}-{index}"))

    async def tasks() -> None:
        async def one(index: int) -> None:
            for round_ in range(20):
                sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"task{index}-{round_}"))
                await anyio.sleep(0)

        async with anyio.create_task_group() as group:
            for index in range(40):
                group.start_soon(one, index)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    anyio.run(tasks)
    for thread in threads:
        thread.join()
    sink.close()
    verdict = verify_files([str(path)])
    assert verdict.ok, verdict
    assert verdict.entries == 1 + 8 * 400 + 40 * 20 + 1  # head, events, closing checkpoint


def test_an_event_that_cannot_be_written_in_full_is_written_as_a_stand_in(tmp_path: Path) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text for this")

    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    odd = AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="odd", facts={"value": Unprintable()})
    sink.emit(odd)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="next"))
    sink.flush()
    sink.close()
    assert verify_files([str(path)]).entries == 4  # head, stand-in, next, closing checkpoint
    entries = [json.loads(line)["event"] for line in path.read_bytes().splitlines()]
    assert entries[1] == {
        "event_id": odd.event_id,
        "kind": "call.decided",
        "at": 1_900_000_000.0,
        "unwritable": "RuntimeError: no text for this",
    }
    assert entries[2]["tool"] == "next"


def test_buffer_mode_keeps_serving_and_writes_once_it_can(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet" / "audit.jsonl"
    sink = FileAuditSink(missing, failure="buffer", flush_interval=0.01)
    for index in range(5):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"t{index}"))
    time.sleep(0.1)
    with pytest.raises(AuditLogError):
        sink.flush(timeout=0.2)
    missing.parent.mkdir()
    sink.flush(timeout=5)
    sink.close()
    verdict = verify_files([str(missing)])
    assert verdict.ok
    assert verdict.entries == 7  # head, five events, closing checkpoint


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, max_bytes=1500)
    for index in range(20):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"t{index}"))
        sink.flush()
    sink.close()
    segments = sorted(str(found) for found in tmp_path.glob("audit.0*.jsonl"))
    assert len(segments) >= 3
    assert verify_files([*segments, str(path)]).ok
    assert verify_files([str(path)], from_start=False).ok  # the live file alone, older segments archived
    assert "give the earlier files" in (verify_files([str(path)]).problem or "")
    assert "goes on in" in (verify_files(segments).problem or "")
    assert verify_files(segments, to_end=False).ok
    assert not verify_files([*reversed(segments), str(path)]).ok
    assert not verify_files([segments[0], str(path)]).ok  # a segment left out


def test_a_torn_last_line_is_cut_off_when_the_log_reopens(tmp_path: Path) -> None:
    path = written_log(tmp_path)
    with open(path, "ab") as file:
        file.write(b'{"alg":"sha256","event":{"half')
    sink = FileAuditSink(path)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="after-crash"))
    sink.close()
    assert verify_files([str(path)]).ok


def test_a_last_line_without_its_end_is_no_entry_and_must_verify_if_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash can leave a whole line but for its line end: it verifies, and is neither counted
    nor shown. Anything else whole there (a forged entry) breaks the chain; a prefix is torn."""
    key = b"k3y"
    path = written_log(tmp_path, key=key)
    last = json.loads(path.read_bytes().splitlines()[-1])
    event = AuditEvent.build(EventKind.CALL_DECIDED, time.time(), session_id="forged", tool="delete_all")
    line = entry_line(ChainState(last["seq"] + 1, last["hash"]), "call.decided", event.record(), key)
    forged = entry_line(ChainState(last["seq"] + 1, last["hash"]), "call.decided", event.record(), b"guess")
    logged = path.read_bytes()
    for tail, intact in ((line[:-1], True), (line[:-6], True), (forged[:-1], False), (b"[1]", False)):
        path.write_bytes(logged + tail)
        verdict = verify_files([str(path)], key)
        assert (verdict.ok, verdict.torn, verdict.entries) == (intact, intact, ENTRIES + 2)
        assert intact or verdict.line == ENTRIES + 3
        assert cli(["audit", "show", event.event_id, str(path)]) == 1
        assert cli(["audit", "query", str(path), "--session", "forged", "--format", "jsonl"]) == 0
        assert capsys.readouterr().out == ""
    path.write_bytes(logged + line)
    assert verify_files([str(path)], key).entries == ENTRIES + 3
    assert cli(["audit", "show", event.event_id, str(path)]) == 0


def test_a_log_of_long_lines_reopens_from_its_last_whole_entry(tmp_path: Path) -> None:
    """Reopening reads only the end of the log, widening until it holds the last whole line."""
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    for index in range(3):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="t", detail=f"{index}" * 150_000))
    sink.close()
    with open(path, "ab") as file:
        file.write(b'{"alg":"sha256","event":{"detail":"' + b"x" * 200_000)  # torn, and longer than a line
    sink = FileAuditSink(path)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_001.0, tool="after-crash"))
    sink.close()
    assert verify_files([str(path)]).ok
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    assert entries[-2]["event"]["tool"] == "after-crash"


def test_a_log_that_is_one_torn_line_starts_a_fresh_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"alg":"sha256","ev')
    sink = FileAuditSink(path)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="t"))
    sink.close()
    assert verify_files([str(path)]).ok
    assert json.loads(path.read_bytes().splitlines()[0])["seq"] == 0


def mcp_guard(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mcp_guard.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check)


def test_the_cli(tmp_path: Path) -> None:
    path = written_log(tmp_path)
    result = mcp_guard("audit", "verify", str(path), check=True)
    assert result.stdout.startswith("intact: 14 entries")
    rows = mcp_guard("audit", "query", str(path), "--tool", "tool_3", "--format", "jsonl", check=True).stdout
    [event] = [json.loads(row) for row in rows.splitlines()]
    assert event["tool"] == "tool_3"
    shown = mcp_guard("audit", "show", event["event_id"], str(path), check=True).stdout
    assert json.loads(shown) == event
    table = mcp_guard("audit", "query", str(path), "--since", "1900000005", "--until", "1900000007", check=True)
    assert table.stdout.strip().endswith("3 events")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3] + lines[4:]))
    broken = mcp_guard("audit", "verify", str(path))
    assert broken.returncode == 1
    assert "BROKEN" in broken.stdout and ":4 " in broken.stdout
    assert mcp_guard("audit", "show", "no-such-event", str(path)).returncode == 1
    assert mcp_guard("audit", "verify", str(tmp_path / "missing.jsonl")).returncode == 2


@pytest.mark.parametrize("rotation", [{}, {"next": ""}, {"next": 7}, {"next": "../audit.jsonl"}, {"next": ".."}])
def test_a_rotation_naming_no_file_beside_it_is_broken_there(tmp_path: Path, rotation: dict[str, object]) -> None:
    """A writer names the file the chain goes on in, beside the rotated one; a forger may not."""
    path = tmp_path / "audit.jsonl"
    state = ChainState()
    lines = [entry_line(state, "chain.file", {"file": path.name}), entry_line(state, "chain.rotated", rotation)]
    path.write_bytes(b"".join(lines))
    write_anchor(path, state, None)
    verdict = verify_files([str(path)])
    assert not verdict.ok and (verdict.file, verdict.seq) == (str(path), 1)
    assert "names no file beside it" in (verdict.problem or "")
    result = mcp_guard("audit", "verify", str(path))
    assert result.returncode == 1 and "BROKEN" in result.stdout and "(entry 1)" in result.stdout, result


def test_the_anchor_itself_is_checked(tmp_path: Path) -> None:
    path = written_log(tmp_path)
    anchor = anchor_path(path)
    document: dict[str, Any] = json.loads(anchor.read_text())
    document["anchor"]["seq"] += 5
    anchor.write_text(json.dumps(document))
    assert "does not verify" in broken_at(path)[1]


def test_any_claim_text_is_written_verifiable_and_read_back(tmp_path: Path) -> None:
    """Non-ASCII text is stored as UTF-8; lone surrogates and NaN (which a token's JSON can carry
    but UTF-8 cannot) still make a whole, verifiable entry rather than stalling the writer."""
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    details = ["Zoë → 東京", "lone \ud800 surrogate", "plain"]
    for detail in details:
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="t", detail=detail))
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, float("nan"), tool="t"))
    sink.flush()
    sink.close()
    assert verify_files([str(path)]).ok
    entries = [json.loads(line) for line in path.read_bytes().splitlines()[1:]]
    assert [entry["event"]["detail"] for entry in entries[:3]] == details
    assert "Zoë → 東京".encode() in path.read_bytes()
    assert entries[3]["event"]["at"] is None


def test_checkpoints_held_elsewhere_expose_a_rewritten_or_shortened_chain(tmp_path: Path) -> None:
    """Without a key anyone can rebuild a consistent chain (and its anchor); a checkpoint the
    witness kept is what still tells the rebuilt log from the original."""
    path = tmp_path / "audit.jsonl"
    held: list[Checkpoint] = []
    sink = FileAuditSink(path, checkpoint_interval=0, witness=held.append)
    for index in range(3):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool=f"before_{index}"))
        sink.flush()
    sink.close()
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    checkpointed = [(entry["seq"], entry["hash"]) for entry in entries if entry["kind"] == "chain.checkpoint"]
    assert [(c.seq, c.hash) for c in held] == checkpointed and len(held) == 3
    assert verify_files([str(path)], checkpoints=held).ok

    state, lines = ChainState(), []  # a forger rebuilds the chain with one entry changed
    for entry in entries:
        event = dict(entry["event"], tool="innocent") if entry["event"].get("tool") == "before_1" else entry["event"]
        lines.append(entry_line(state, entry["kind"], event))
    path.write_bytes(b"".join(lines))
    anchor_path(path).unlink()
    assert "anchor" in (verify_files([str(path)]).problem or "") and "missing" in (
        verify_files([str(path)]).problem or ""
    )
    assert verify_files([str(path)], to_end=False).ok
    verdict = verify_files([str(path)], checkpoints=held)
    assert not verdict.ok and "not the one checkpointed" in (verdict.problem or "")
    assert verdict.seq == held[1].seq

    path.write_bytes(b"".join(lines[: held[-1].seq]))  # or cuts the log short of a checkpoint
    verdict = verify_files([str(path)], checkpoints=[held[-1]])
    assert not verdict.ok and "truncated" in (verdict.problem or "")


def test_a_failing_witness_never_stops_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def witness(checkpoint: Checkpoint) -> None:
        raise ConnectionError("the witness is down")

    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, checkpoint_interval=0, witness=witness)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t"))
    sink.flush()
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t"))
    sink.close()
    assert verify_files([str(path)]).entries == 5
    assert "witness" in caplog.text and "checkpoint" in caplog.text


def give_up_at_their_timeouts(sink: FileAuditSink) -> None:
    """``flush`` and ``close`` raise at their timeouts (not seconds later) while the writer is held up."""
    for wait, message in ((sink.flush, "did not drain"), (sink.close, "did not close")):
        started = time.monotonic()
        with pytest.raises(AuditLogError, match=message):
            wait(0.5)
        assert time.monotonic() - started < 3


def test_a_hung_witness_holds_up_no_flush_or_close_past_its_timeout(tmp_path: Path) -> None:
    """The writer reports a checkpoint once it has let go of the log: while the witness hangs,
    flush and close keep their timeouts, and the witness still gets every checkpoint, in order."""
    called, release = threading.Event(), threading.Event()
    held: list[Checkpoint] = []

    def witness(checkpoint: Checkpoint) -> None:
        called.set()
        release.wait(10)  # a remote call that hangs
        held.append(checkpoint)

    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, checkpoint_interval=0, witness=witness, flush_interval=0.01)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t1"))
    assert called.wait(10)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t2"))
    give_up_at_their_timeouts(sink)
    release.set()
    sink.close()
    written = [json.loads(line) for line in path.read_bytes().splitlines()]
    checkpoints = [Checkpoint(entry["seq"], entry["hash"]) for entry in written if entry["kind"] == "chain.checkpoint"]
    assert held == checkpoints and len(held) == 2
    assert verify_files([str(path)], checkpoints=held).ok


def test_a_hung_log_handler_holds_up_no_flush_or_close_past_its_timeout(tmp_path: Path) -> None:
    """The writer logs some things while it holds the log (an event it cannot write in full, say):
    flush and close wait for it only until their timeouts."""
    called, release = threading.Event(), threading.Event()

    class Hanging(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "cannot be written in full" in record.getMessage():
                called.set()
                release.wait(10)  # a log shipper that hangs

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text for this")

    handler = Hanging()
    logging.getLogger("mcp_guard").addHandler(handler)
    try:
        path = tmp_path / "audit.jsonl"
        sink = FileAuditSink(path, flush_interval=0.01)
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="odd", facts={"value": Unprintable()}))
        assert called.wait(10)
        give_up_at_their_timeouts(sink)
        release.set()
        sink.close()
    finally:
        release.set()
        logging.getLogger("mcp_guard").removeHandler(handler)
    assert verify_files([str(path)]).entries == 3  # head, stand-in, closing checkpoint


def test_the_cli_checks_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    held: list[Checkpoint] = []
    sink = FileAuditSink(path, witness=held.append)  # only the closing checkpoint
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t"))
    sink.close()
    [closing] = held
    assert mcp_guard("audit", "verify", str(path), "--checkpoint", str(closing)).returncode == 0
    other = Checkpoint(closing.seq, "0" * 64)
    assert mcp_guard("audit", "verify", str(path), "--checkpoint", str(other)).returncode == 1
    for malformed in ("7", "x:" + "0" * 64, "1:" + "A" * 64, "1:abc"):
        assert mcp_guard("audit", "verify", str(path), "--checkpoint", malformed).returncode == 2


def test_a_checkpoint_outside_the_files_given_is_never_silently_skipped(tmp_path: Path) -> None:
    """A forger without the key can start a fresh-looking log right after the last checkpoint;
    a checkpoint before the first entry verified must therefore fail, not pass unchecked."""
    path = tmp_path / "audit.jsonl"
    held: list[Checkpoint] = []
    sink = FileAuditSink(path, checkpoint_interval=0, witness=held.append)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="genuine"))
    sink.close()
    [checkpoint] = held
    state = ChainState(checkpoint.seq + 1, "f" * 64)  # a forged log continuing "after" it
    forged = [entry_line(state, "chain.file", {"file": path.name})]
    forged.append(entry_line(state, "call.decided", {"tool": "forged"}))
    path.write_bytes(b"".join(forged))
    anchor_path(path).unlink()
    assert "entries 0..2 are missing" in (verify_files([str(path)]).problem or "")
    assert verify_files([str(path)], from_start=False, to_end=False).ok
    verdict = verify_files([str(path)], checkpoints=held, from_start=False, to_end=False)
    assert not verdict.ok and "before the files given" in (verdict.problem or "")
    twice = [checkpoint, Checkpoint(checkpoint.seq, "0" * 64)]
    assert "two different checkpoints" in (verify_files([str(path)], checkpoints=twice).problem or "")


def test_the_escaped_fallback_writes_strict_json_too(tmp_path: Path) -> None:
    state = ChainState()
    line = entry_line(state, "call.decided", {"detail": "lone \ud800", "nested": [{"x": float("inf")}]})
    assert line.isascii()
    event = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))["event"]
    assert event == {"detail": "lone \ud800", "nested": [{"x": None}]}


def test_a_failing_closing_checkpoint_is_retried_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    moved = tmp_path / "moved.jsonl"
    sink = FileAuditSink(path, flush_interval=0.01)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t"))
    sink.flush()
    path.rename(moved)
    (tmp_path / "directory").mkdir()
    path.symlink_to(tmp_path / "directory")  # the log cannot be appended to for now
    with pytest.raises(AuditLogError, match="did not close"):
        sink.close(timeout=0.3)
    os.replace(moved, path)  # in one step: the retrying writer never finds no file
    sink.close()
    assert [json.loads(line)["kind"] for line in path.read_bytes().splitlines()][-1] == "chain.checkpoint"
    assert verify_files([str(path)]).ok


@pytest.mark.parametrize("failure", ["deny", "buffer"])
def test_a_failing_anchor_fails_the_log_until_written_and_never_writes_events_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, failure: Any
) -> None:
    """A stale anchor would let the log be cut back to it unseen: it is a failing log."""
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, flush_interval=0.01, failure=failure)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t0"))
    sink.flush()
    blocked = tmp_path / "audit.jsonl.anchor.tmp"
    blocked.mkdir()  # the anchor cannot be replaced
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t1"))
    sink.flush()  # written, but not anchored
    if failure == "deny":
        with pytest.raises(AuditLogError, match="anchor"):
            sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t2"))
    else:
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t2"))
        sink.flush()
    assert "anchor of audit log" in caplog.text
    blocked.rmdir()
    deadline = time.monotonic() + 10
    while "writable again" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)  # the writer retries the anchor on its own
    assert "writable again" in caplog.text
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t3"))
    sink.close()
    assert verify_files([str(path)]).ok
    logged = [json.loads(line)["event"].get("tool") for line in path.read_bytes().splitlines()]
    assert [tool for tool in logged if tool] == (["t0", "t1", "t3"] if failure == "deny" else ["t0", "t1", "t2", "t3"])


def test_an_emptied_file_or_an_empty_key_is_refused(tmp_path: Path) -> None:
    first = written_log(tmp_path, name="a.jsonl")
    emptied = tmp_path / "b.jsonl"
    emptied.write_bytes(b"")
    verdict = verify_files([str(first), str(emptied)])
    assert not verdict.ok and verdict.file == str(emptied) and "truncated to nothing" in (verdict.problem or "")
    assert "truncated to nothing" in (verify_files([str(emptied)]).problem or "")
    with pytest.raises(ValueError, match="empty HMAC key"):
        FileAuditSink(tmp_path / "keyed.jsonl", key=b"")
    blank = tmp_path / "blank.key"
    blank.write_bytes(b"\n")
    assert mcp_guard("audit", "verify", str(first), "--key-file", str(blank)).returncode == 2


async def test_a_closed_log_refuses_in_deny_mode_and_drops_in_buffer_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    denying = FileAuditSink(tmp_path / "deny.jsonl")
    guard = Guard(audit=[denying])
    guard.declare(ToolSpec("ping"))
    assert (await guard.authorize("ping", {}, access_token("alice"))).allowed
    denying.close()
    result = await guard.authorize("ping", {}, access_token("alice"))
    assert result.decision.reason.code == ReasonCode.GUARD_ERROR  # never served unrecorded
    buffering = FileAuditSink(tmp_path / "buffer.jsonl", failure="buffer")
    buffering.close()
    buffering.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="late"))
    assert "buffer.jsonl is closed; dropping an event" in caplog.text


class SlowQueue(deque[AuditEvent]):
    """A queue whose append pauses, as a thread preempted between emit's checks and its append."""

    def append(self, event: AuditEvent) -> None:
        time.sleep(0.3)
        super().append(event)


def test_an_event_emitted_while_the_log_closes_is_refused_or_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, flush_interval=0.01)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="first"))
    sink.flush()
    sink._queue = SlowQueue()
    late = AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="late")
    outcome: list[str] = []

    def emit() -> None:
        try:
            sink.emit(late)
            outcome.append("accepted")
        except AuditLogError:
            outcome.append("refused")

    emitting = threading.Thread(target=emit)
    emitting.start()
    time.sleep(0.05)
    sink.close()
    emitting.join()
    written = [json.loads(line)["event"].get("event_id") for line in path.read_bytes().splitlines()]
    assert outcome == ["refused"] or late.event_id in written


@pytest.mark.parametrize(
    "line",
    [
        b'{"a":1,"b":[true,null,"x"]}',
        b'{"detail":"lone \\ud800"}',
        b'{"at":NaN}',
        b'{"n":123456789012345678901234567890}',
    ],
)
def test_log_lines_read_the_same_as_the_standard_parser_reads_them(line: bytes) -> None:
    assert repr(read_entry(line)) == repr(json.loads(line))


@pytest.mark.parametrize("line", [b"", b"{", b'{"a":1} x', b"\xff", b'{"a":"\xff"}'])
def test_unreadable_log_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        read_entry(line)


def test_a_line_nested_too_deeply_is_a_corrupt_line_not_a_crash(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        read_entry(deep)
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0, tool="t"))
    sink.close()
    with open(path, "ab") as file:
        file.write(b'{"event":' + deep + b',"hash":"' + b"0" * 64 + b'"}\n')
    verdict = verify_files([str(path)])
    assert not verdict.ok and "corrupt" in (verdict.problem or "")


def test_resuming_a_log_whose_last_line_is_nested_too_deeply_refuses_clearly(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(AuditLogError, match="no anchor"):
        FileAuditSink(path)
    with pytest.raises(AuditLogError, match=r"does not verify.*corrupt line"):
        FileAuditSink(path, adopt_unanchored=True)


def test_an_anchor_nested_too_deeply_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    path = written_log(tmp_path)
    anchor_path(path).write_text("[" * 2000 + "]" * 2000)  # short enough to be read whole
    assert "unreadable" in (verify_files([str(path)]).problem or "")
    with pytest.raises(AuditLogError, match="unreadable"):
        FileAuditSink(path)
    result = mcp_guard("audit", "verify", str(path))
    assert (result.returncode, result.stderr) == (1, "") and "unreadable" in result.stdout, result


def test_a_log_refused_when_its_writer_takes_it_up_late_stays_refused(tmp_path: Path) -> None:
    """A sink opened before its directory existed takes the log up when it first writes; a log
    refused then (an anchor naming entries it lacks) is refused at every retry, never begun anew."""
    path = tmp_path / "logs" / "audit.jsonl"
    sink = FileAuditSink(path, failure="buffer", flush_interval=0.01)
    path.parent.mkdir()
    anchor = path.parent / "audit.jsonl.anchor"
    anchor.write_text('{"anchor":{"seq":41,"hash":"' + "0" * 64 + '"},"mac":"x"}\n')
    sink.emit(AuditEvent(EventKind.CALL_DECIDED, "e1", time.time()))
    time.sleep(0.3)  # several retries
    assert sink._error is not None and not path.exists()
    assert '"seq":41' in anchor.read_text()  # the evidence is left as it was
    with pytest.raises(AuditLogError):
        sink.close(timeout=0.2)


def test_a_recovery_and_a_new_failure_in_one_pass_are_told_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch written after a failure, then a closing checkpoint failing in the same pass: the
    last word on the log is the failure, not the recovery."""
    sink = FileAuditSink(tmp_path / "audit.jsonl", failure="buffer", flush_interval=0.2)
    real, outcomes = sink._append_batch, iter(["fail", "ok"])

    def scripted(batch: list[AuditEvent], checkpoint: bool) -> Checkpoint | None:
        if next(outcomes, "fail") == "fail":
            raise OSError(28, "No space left on device")
        return real(batch, checkpoint)

    sink._append_batch = scripted  # type: ignore[method-assign]
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t"))
    time.sleep(0.1)  # the first write failed; the writer waits to retry
    with pytest.raises(AuditLogError, match="did not close"):
        sink.close(timeout=1.0)
    states = [
        "recovered" if "is writable again" in record.getMessage() else "failed"
        for record in caplog.records
        if "is writable again" in record.getMessage() or " failed: " in record.getMessage()
    ]
    assert states == ["failed", "recovered", "failed"]
    sink._append_batch = real  # type: ignore[method-assign]
    sink.close()


def test_a_writer_held_up_past_the_stall_timeout_fails_the_log_in_deny_mode(tmp_path: Path) -> None:
    """A writer that takes no event for ``stall_timeout`` (a hung mount, a slow witness) is a
    failing log: deny mode refuses new events rather than admit calls it may never record, and
    takes them again once the writer is back."""
    called, release = threading.Event(), threading.Event()

    def witness(checkpoint: Checkpoint) -> None:
        called.set()
        release.wait(10)

    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, checkpoint_interval=0, witness=witness, flush_interval=0.01, stall_timeout=0.2)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t1"))
    assert called.wait(10)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t2"))  # waits for the writer
    time.sleep(0.3)
    with pytest.raises(AuditLogError, match="written nothing for 0 s while events wait: its writer is held up"):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t3"))
    release.set()
    sink.flush()
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t4"))
    sink.close()
    tools = [entry["event"].get("tool") for entry in map(json.loads, path.read_bytes().splitlines())]
    assert [tool for tool in tools if tool] == ["t1", "t2", "t4"]
    assert verify_files([str(path)]).ok


def test_buffer_mode_keeps_queueing_while_the_writer_is_held_up(tmp_path: Path) -> None:
    release = threading.Event()
    sink = FileAuditSink(
        tmp_path / "audit.jsonl",
        checkpoint_interval=0,
        witness=lambda checkpoint: release.wait(10),
        flush_interval=0.01,
        stall_timeout=0.05,
        failure="buffer",
    )
    for index in range(5):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"t{index}"))
        time.sleep(0.03)
    release.set()
    sink.close()
    assert verify_files([str(tmp_path / "audit.jsonl")]).entries >= 5


def test_the_stall_timeout_must_outlast_the_writers_pause() -> None:
    with pytest.raises(ValueError, match="stall_timeout must be longer than flush_interval"):
        FileAuditSink("/nonexistent/audit.jsonl", flush_interval=1.0, stall_timeout=1.0)


@pytest.mark.parametrize("name", ["audit.jsonl", "audit.jsonl.lock"])
def test_a_fifo_in_place_of_the_live_file_or_lock_is_refused_on_opening(tmp_path: Path, name: str) -> None:
    """A FIFO there would block the writer in ``open`` for good, while deny mode went on admitting calls."""
    os.mkfifo(tmp_path / name)
    with pytest.raises(AuditLogError, match="is not a regular file"):
        FileAuditSink(tmp_path / "audit.jsonl", flush_interval=0.01)


def test_a_fifo_put_in_place_of_the_live_file_later_fails_the_log_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, flush_interval=0.01)  # a fresh log: no live file yet
    os.mkfifo(path)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t1"))
    with pytest.raises(AuditLogError, match="is not a regular file"):
        sink.flush(timeout=5)
    with pytest.raises(AuditLogError, match="is failing"):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t2"))
    path.unlink()
    sink.close(timeout=5)  # the writer was never stuck: it retries, and writes both
    assert verify_files([str(path)]).entries == 3


@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_whatever_is_planted_at_the_anchors_temporary_file_is_replaced_and_nothing_clobbered(
    tmp_path: Path, planted: str
) -> None:
    """The anchor's temporary file was opened through a symlink (truncating and overwriting its
    target) and would block on a FIFO."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    temporary = tmp_path / "audit.jsonl.anchor.tmp"
    if planted == "fifo":
        os.mkfifo(temporary)
    else:
        os.symlink(victim, temporary)
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, flush_interval=0.01)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t1"))
    sink.close(timeout=5)
    assert verify_files([str(path)]).ok and not temporary.exists()
    assert victim.read_text() == "precious\n"


def test_a_symlink_in_place_of_the_lock_file_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "created-by-the-log"
    os.symlink(missing, tmp_path / "audit.jsonl.lock")
    with pytest.raises(AuditLogError, match=r"not a regular file \(a symbolic link"):
        FileAuditSink(tmp_path / "audit.jsonl")
    assert not missing.exists()


def test_segments_moved_aside_are_never_numbered_again(tmp_path: Path) -> None:
    """The next segment was numbered from those left in the directory: archiving them restarted
    the numbers at 00001, so putting the archive back overwrote newer segments, and a glob over
    both no longer sorted in chain order. A fresh live file names the segment it follows."""
    path, archive = tmp_path / "audit.jsonl", tmp_path / "archive"
    archive.mkdir()

    def burst(tag: str) -> None:
        sink = FileAuditSink(path, max_bytes=700, flush_interval=0.01)
        for index in range(6):
            sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"{tag}{index}"))
            sink.flush()
        sink.close()

    burst("a")
    first = sorted(segment.name for segment in tmp_path.glob("audit.0*.jsonl"))
    for name in first:
        (tmp_path / name).rename(archive / name)
    burst("b")
    second = sorted(segment.name for segment in tmp_path.glob("audit.0*.jsonl"))
    assert first and second and not set(first) & set(second) and max(first) < min(second)
    everything = sorted([*archive.glob("audit.0*.jsonl"), *tmp_path.glob("audit.0*.jsonl")], key=lambda p: p.name)
    assert verify_files([*map(str, everything), str(path)]).ok
