"""The chained log against its own failures and against someone with write access to it.

Half-written batches, a live file emptied or replaced under the writer, a log cut short while
the server was down, a second writer, rotation without a file extension: each is found (or
undone) rather than blessed by the next write.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mcp_guard.audit.chain import MAX_LINE_BYTES, ChainState, anchor_path, entry_line, verify_files
from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.file import AuditLogError, FileAuditSink
from mcp_guard.audit.log_files import next_segment, resume

KEY = b"\x00key with \t whitespace\n "


def event(index: int, **fields: object) -> AuditEvent:
    return AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0 + index, tool=f"tool_{index}", **fields)  # type: ignore[arg-type]


def write(path: Path, count: int, *, start: int = 0, key: bytes | None = None, **options: object) -> None:
    sink = FileAuditSink(path, key=key, **options)  # type: ignore[arg-type]
    for index in range(start, start + count):
        sink.emit(event(index))
        sink.flush()
    sink.close()


def entries(*paths: Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in paths for line in path.read_bytes().splitlines()]


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``script`` run by a Python process of its own, with ``args`` as its ``sys.argv[1:]``."""
    command = [sys.executable, "-c", textwrap.dedent(script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_full_disk_denies_new_calls_by_default(tmp_path: Path) -> None:
    """A file-size limit of one byte stands for a full disk: the call whose record could not be
    written was already admitted, and every call after it is denied."""
    result = run(
        """
        import resource, signal, sys, time
        import anyio
        from mcp_guard import Guard, ToolSpec
        from mcp_guard.audit.file import FileAuditSink
        from mcp_guard.testing import access_token
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        sink = FileAuditSink(sys.argv[1], flush_interval=0.01)
        guard = Guard(audit=[sink])
        guard.declare(ToolSpec("read_note", scopes=frozenset({"notes:read"})))
        token = access_token("alice", "notes:read")
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        print("first:", anyio.run(guard.authorize, "read_note", {}, token).allowed)  # queued; its write fails
        deadline = time.monotonic() + 10
        while sink._error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        print("then:", anyio.run(guard.authorize, "read_note", {}, token).decision.reason.code)
        """,
        str(tmp_path / "audit.jsonl"),
    )
    assert result.returncode == 0, result.stderr
    assert "first: True" in result.stdout and "then: guard_error" in result.stdout
    assert "File too large" in result.stderr  # the writer's alarm


@pytest.mark.parametrize("failure", ["deny", "buffer"])
def test_a_write_that_fails_halfway_is_cut_back_and_retried_whole(tmp_path: Path, failure: str) -> None:
    """A file-size limit makes the kernel take part of a batch and refuse the rest, as a full disk does."""
    path = tmp_path / "audit.jsonl"
    result = run(
        """
        import os, resource, signal, sys, time
        from mcp_guard.audit.events import AuditEvent, EventKind
        from mcp_guard.audit.file import FileAuditSink
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        path, failure = sys.argv[1:]
        sink = FileAuditSink(path, failure=failure, flush_interval=0.01)
        for index in range(3):
            sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"before_{index}"))
        sink.flush()
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 150, hard))  # part of one line
        for index in range(3):
            sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"during_{index}"))
        deadline = time.monotonic() + 10
        while sink._error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        print("failed:", type(sink._error).__name__)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
        while sink._error is not None and time.monotonic() < deadline + 10:
            time.sleep(0.01)  # the writer retries on its own, and recovers
        sink.flush()
        sink.close()
        """,
        str(path),
        failure,
    )
    assert result.returncode == 0, result.stderr
    assert "failed: OSError" in result.stdout  # EFBIG, after part of the batch went in
    assert verify_files([str(path)]).ok
    tools = [entry["event"].get("tool") for entry in entries(path) if isinstance(entry["event"], dict)]  # type: ignore[union-attr]
    assert [tool for tool in tools if tool] == [f"before_{i}" for i in range(3)] + [f"during_{i}" for i in range(3)]


@pytest.mark.parametrize("change", ["emptied", "deleted", "replaced", "appended"])
def test_a_live_file_changed_under_the_writer_stops_it(tmp_path: Path, change: str) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, key=KEY, flush_interval=0.01)
    for index in range(5):
        sink.emit(event(index))
    sink.flush()
    if change == "emptied":
        path.write_bytes(b"")
    elif change == "deleted":
        path.unlink()
    elif change == "replaced":
        forged = tmp_path / "forged.jsonl"
        forged.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))  # the last event gone
        forged.replace(path)
    else:
        with path.open("ab") as file:
            file.write(b'{"forged": true}\n')
    sink.emit(event(5))
    with pytest.raises(AuditLogError, match="changed by something other than its writer"):
        sink.flush(timeout=5)
    with pytest.raises(AuditLogError):
        sink.emit(event(6))  # deny mode: new calls are refused
    assert not path.exists() or not verify_files([str(path)], KEY).ok


@pytest.mark.parametrize("key", [None, KEY])
def test_a_log_cut_short_while_stopped_is_not_continued(tmp_path: Path, key: bytes | None) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 6, key=key)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]))  # whole lines gone: the chain itself still holds
    assert "truncated" in str(verify_files([str(path)], key))
    with pytest.raises(AuditLogError, match="cut or rewritten"):
        FileAuditSink(path, key=key)
    assert path.read_bytes() == b"".join(lines[:-3])  # nothing was written after the cut
    path.unlink()
    with pytest.raises(AuditLogError, match="cut or rewritten"):
        FileAuditSink(path, key=key)  # the whole live file deleted, its anchor kept


def test_an_anchor_that_does_not_verify_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3, key=KEY)
    with pytest.raises(AuditLogError, match="does not verify"):
        FileAuditSink(path, key=b"another key")
    anchor = anchor_path(path)
    anchor.write_text(anchor.read_text().replace('"seq":', '"seq":1'))
    with pytest.raises(AuditLogError, match="anchor"):
        FileAuditSink(path, key=KEY)


def stopped_right_after_rotating(path: Path) -> Path:
    """A log of three events whose writer stopped between rotating and writing to the fresh
    file; the segment it rotated into."""
    write(path, 3)
    stopped = FileAuditSink(path)
    stopped.close()
    stopped._rotate()
    [segment] = path.parent.glob("audit.0*.jsonl")
    return segment


def test_a_restart_right_after_rotation_continues_from_the_last_segment(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    segment = stopped_right_after_rotating(path)
    assert not path.exists()
    write(path, 2, start=3)
    assert verify_files([str(segment), str(path)]).ok
    seqs = [entry["seq"] for entry in entries(segment, path)]
    assert seqs == list(range(len(seqs)))

    again = FileAuditSink(path, max_bytes=1)  # rotates before its first write...
    again.close()
    again._rotate()
    path.write_bytes(b"")  # ...and the fresh live file was created empty
    write(path, 1, start=5)
    files = sorted(tmp_path.glob("audit.0*.jsonl"))
    assert len(files) == 2 and verify_files([*map(str, files), str(path)]).ok


def test_a_deleted_live_file_after_rotation_is_not_mistaken_for_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 4, max_bytes=600)
    assert list(tmp_path.glob("audit.0*.jsonl"))
    path.unlink()
    with pytest.raises(AuditLogError, match="cut or rewritten"):
        FileAuditSink(path)


def test_a_path_without_an_extension_rotates_into_numbered_files(tmp_path: Path) -> None:
    path = tmp_path / "audit"
    write(path, 12, max_bytes=600)
    segments = sorted(tmp_path.glob("audit.0*"))
    assert len(segments) >= 3 and [found.name for found in segments][:2] == ["audit.00001", "audit.00002"]
    verdict = verify_files([*map(str, segments), str(path)])
    assert verdict.ok and verdict.entries == len(entries(*segments, path))
    tools = [entry["event"].get("tool") for entry in entries(*segments, path)]  # type: ignore[union-attr]
    assert [tool for tool in tools if tool] == [f"tool_{index}" for index in range(12)]  # nothing overwritten


def test_a_second_writer_on_one_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = FileAuditSink(path)
    with pytest.raises(AuditLogError, match="another writer"):
        FileAuditSink(path)
    other_process = run(
        """
        import sys
        from mcp_guard.audit.file import FileAuditSink
        try:
            FileAuditSink(sys.argv[1])
        except OSError as error:
            print(error)
        """,
        str(path),
    )
    assert "another writer" in other_process.stdout
    first.emit(event(0))
    first.close()
    write(path, 1, start=1)  # once it is closed, the log can be opened again
    assert verify_files([str(path)]).ok


def test_a_second_writer_by_another_name_of_the_log_is_refused(tmp_path: Path) -> None:
    """A symlinked directory, a symlink to the live file and a hard link to it all name one log:
    the lock is taken in the log's real directory, and a live file with another name is refused
    (its other name would take another lock, and rotation renames only one name)."""
    real = tmp_path / "real"
    real.mkdir()
    path = real / "audit.jsonl"
    path.touch()  # a fresh log: nothing to verify yet
    (tmp_path / "through").symlink_to(real)
    (tmp_path / "symlink.jsonl").symlink_to(path)
    first = FileAuditSink(path)
    with pytest.raises(AuditLogError, match="another writer"):
        FileAuditSink(tmp_path / "through" / "audit.jsonl")
    with pytest.raises(AuditLogError, match="symbolic link"):
        FileAuditSink(tmp_path / "symlink.jsonl")
    os.link(path, tmp_path / "hard.jsonl")
    with pytest.raises(AuditLogError, match="2 hard links"):
        FileAuditSink(tmp_path / "hard.jsonl")
    first.emit(event(0))
    first.close()
    with pytest.raises(AuditLogError, match="2 hard links"):  # by its own name too, while it has another
        FileAuditSink(path)
    (tmp_path / "hard.jsonl").unlink()
    write(path, 1, start=1)
    assert verify_files([str(path)]).ok
    tools = [entry["event"].get("tool") for entry in entries(path)]  # type: ignore[union-attr]
    assert [tool for tool in tools if tool] == ["tool_0", "tool_1"]


def test_verify_names_non_ascii_hashes_and_over_long_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    bad = lines[1][:-67] + "é".encode() + lines[1][-65:]
    path.write_bytes(b"".join([lines[0], bad, *lines[2:]]))
    verdict = verify_files([str(path)], to_end=False)
    assert not verdict.ok and verdict.line == 2 and "corrupt" in (verdict.problem or "")

    huge = tmp_path / "huge.jsonl"
    huge.write_bytes(lines[0] + b"x" * (MAX_LINE_BYTES + 10) + b"\n" + lines[1])
    verdict = verify_files([str(huge)], to_end=False)
    assert not verdict.ok and verdict.line == 2 and "longer than 16 MiB" in (verdict.problem or "")


def test_an_event_too_long_for_one_line_is_written_as_a_stand_in(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    sink.emit(event(0, detail="x" * MAX_LINE_BYTES))
    sink.emit(event(1))
    sink.close()
    assert verify_files([str(path)]).ok
    stand_in = entries(path)[1]["event"]
    assert isinstance(stand_in, dict) and "line limit" in stand_in["unwritable"]
    assert entries(path)[2]["event"]["tool"] == "tool_1"  # type: ignore[index]


def test_the_cli_keeps_a_binary_key_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2, key=KEY)
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")  # one line end, as an editor leaves it
    command = [sys.executable, "-m", "mcp_guard.cli", "audit", "verify", str(path), "--key-file", str(key_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cli_takes_a_key_from_the_environment_as_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    key = b"k\xffey \t"  # not UTF-8 (an environment cannot hold the NUL of KEY)
    write(path, 2, key=key)
    command = [sys.executable, "-m", "mcp_guard.cli", "audit", "verify", str(path), "--key-env", "AUDIT_KEY"]
    environment = {**os.environb, b"AUDIT_KEY": key}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_query_table_escapes_what_could_break_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="read\n2026-01-01  fake row"))
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="lone \ud800 surrogate\r"))
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1e300, tool="far future"))
    sink.close()
    command = [sys.executable, "-m", "mcp_guard.cli", "audit", "query", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 1 + 3 + 1  # header, three events, the count
    assert "read\\n2026" in result.stdout and "\\ud800" in result.stdout and "\r" not in result.stdout


def cut_to(path: Path, lines: int) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:lines]))


def test_a_log_cut_with_its_anchor_deleted_is_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 10, key=KEY)
    cut_to(path, 4)
    anchor_path(path).unlink()
    with pytest.raises(AuditLogError, match="no anchor"):
        FileAuditSink(path, key=KEY)
    assert "missing" in (verify_files([str(path)], KEY).problem or "")
    write(path, 1, start=10, key=KEY, adopt_unanchored=True)  # the operator's explicit word
    assert verify_files([str(path)], KEY).ok


def test_an_anchor_from_earlier_or_from_another_log_is_found_out(tmp_path: Path) -> None:
    other, path = tmp_path / "other.jsonl", tmp_path / "audit.jsonl"
    write(other, 1, key=KEY)
    write(path, 10, key=KEY)
    cut_to(path, 3)
    anchor_path(path).write_bytes(anchor_path(other).read_bytes())  # names an entry the cut log still holds
    verdict = verify_files([str(path)], KEY)
    assert not verdict.ok and "not the one anchored" in (verdict.problem or "")
    with pytest.raises(AuditLogError, match="not the one anchored"):
        FileAuditSink(path, key=KEY)


def test_a_forged_last_line_is_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3, key=KEY)
    forged = entry_line(ChainState(1_000_000, "f" * 64), "call.decided", {"tool": "forged"})
    with path.open("ab") as file:
        file.write(forged)
    with pytest.raises(AuditLogError, match="does not verify"):
        FileAuditSink(path, key=KEY)


def test_a_crash_right_after_rotating_leaves_a_whole_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    segment = stopped_right_after_rotating(path)
    assert verify_files([str(segment)]).ok  # the anchor beside the live path names the rotation
    path.write_bytes(b"")  # or the fresh file was created, and nothing written
    assert verify_files([str(segment), str(path)]).ok
    path.unlink()
    anchor_path(path).unlink()
    assert "goes on in" in (verify_files([str(segment)]).problem or "")


def test_a_crash_in_the_first_line_after_rotating_verifies_and_is_cut_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    segment = stopped_right_after_rotating(path)
    last = entries(segment)[-1]
    head = entry_line(ChainState(int(str(last["seq"])) + 1, str(last["hash"])), "chain.file", {"file": path.name})
    spliced = entry_line(ChainState(int(str(last["seq"])) + 1), "chain.file", {"file": path.name})
    for torn, intact in ((head[:30], True), (head[:-1], True), (spliced[:-1], False)):
        path.write_bytes(torn)
        verdict = verify_files([str(segment), str(path)])
        assert (verdict.ok, verdict.torn) == (intact, intact), verdict
    path.write_bytes(spliced[:-1])  # no crash leaves that: the restart refuses it rather than cut the evidence
    with pytest.raises(AuditLogError, match="does not verify"):
        write(path, 2, start=3)
    path.write_bytes(head[:30])
    write(path, 2, start=3)  # the restart cuts the torn line, then writes after it
    assert verify_files([str(segment), str(path)]).ok
    assert [entry["seq"] for entry in entries(segment, path)] == list(range(len(entries(segment, path))))


def test_archived_segments_keep_the_end_of_the_log_checked(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 12, max_bytes=600)
    segments = sorted(tmp_path.glob("audit.0*.jsonl"))
    assert len(segments) >= 3
    later = [*map(str, segments[1:]), str(path)]
    assert verify_files(later, from_start=False).ok  # the oldest segment archived elsewhere
    path.unlink()
    segments[-1].unlink()
    anchor_path(path).unlink()
    verdict = verify_files(list(map(str, segments[1:-1])), from_start=False)
    assert not verdict.ok and "goes on in" in (verdict.problem or "")


def test_a_failed_rename_seals_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mcp_guard.audit.file as sink_module

    rename, failures = os.replace, []

    def refusing(source: object, target: object) -> None:
        if len(failures) < 20 and str(target).endswith(".00001.jsonl"):
            failures.append(target)
            raise PermissionError(13, "Permission denied", str(target))  # as a read-only directory would
        rename(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(sink_module.os, "replace", refusing)
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, max_bytes=600, failure="buffer", flush_interval=0.005)
    for index in range(6):
        sink.emit(event(index))
        time.sleep(0.02)
    sink.flush(timeout=30)
    sink.close()
    monkeypatch.undo()
    segments = sorted(tmp_path.glob("audit.0*.jsonl"))
    kinds = [entry["kind"] for entry in entries(*segments, path)]
    assert len(failures) == 20 and kinds.count("chain.rotated") == len(segments)
    assert verify_files([*map(str, segments), str(path)]).ok


def test_a_failure_after_the_write_never_writes_a_batch_twice(tmp_path: Path) -> None:
    class FailingOnce(logging.Filter):
        failed = False

        def filter(self, record: logging.LogRecord) -> bool:
            if "checkpoint" in record.getMessage() and not FailingOnce.failed:
                FailingOnce.failed = True
                raise RuntimeError("a log shipper hiccup")
            return True

    logger = logging.getLogger("mcp_guard")
    failing, level = FailingOnce(), logger.level
    logger.addFilter(failing)
    logger.setLevel(logging.INFO)
    try:
        path = tmp_path / "audit.jsonl"
        write(path, 3, checkpoint_interval=0)
    finally:
        logger.removeFilter(failing)
        logger.setLevel(level)
    tools = [entry["event"].get("tool") for entry in entries(path)]  # type: ignore[union-attr]
    assert FailingOnce.failed and [tool for tool in tools if tool] == ["tool_0", "tool_1", "tool_2"]


def test_a_stopped_writer_or_a_fork_fails_the_log(tmp_path: Path) -> None:
    def stopping(checkpoint: object) -> None:
        raise SystemExit("a witness that exits")

    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, checkpoint_interval=0, witness=stopping)
    sink.emit(event(0))
    sink.flush()
    sink.emit(event(1))
    sink.flush()  # the witness exited twice; the writer lives on
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child has no writer thread: deny mode must refuse, not queue
        try:
            sink.emit(event(2))
            os.write(writer, b"accepted")
        except AuditLogError:
            os.write(writer, b"refused")
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(reader, 16) == b"refused"
    sink.emit(event(3))  # the parent's log goes on
    sink.close()
    tools = [entry["event"].get("tool") for entry in entries(path)]  # type: ignore[union-attr]
    assert [tool for tool in tools if tool] == ["tool_0", "tool_1", "tool_3"]


def test_closing_from_two_threads_closes_the_lock_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second close of the lock's descriptor could hit the same number given meanwhile to
    another log's lock, and let a second writer in there."""
    sink = FileAuditSink(tmp_path / "audit.jsonl")
    sink.emit(event(0))
    sink.flush()
    lock, closes, real_close = sink._lock, [], os.close

    def slow_close(descriptor: int) -> None:
        if descriptor == lock:
            closes.append(descriptor)
            time.sleep(0.05)  # both closers between the check and the reset, before the fix
        real_close(descriptor)

    monkeypatch.setattr(os, "close", slow_close)
    errors: list[BaseException] = []

    def closing() -> None:
        try:
            sink.close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=closing) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    assert errors == [] and closes == [lock]
    assert verify_files([str(tmp_path / "audit.jsonl")]).ok


def test_events_are_written_when_the_process_exits_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    result = run(
        """
        import sys, time
        from mcp_guard.audit.events import AuditEvent, EventKind
        from mcp_guard.audit.file import FileAuditSink
        sink = FileAuditSink(sys.argv[1])
        for index in range(2000):
            sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"t{index}"))
        """,
        str(path),
    )
    assert result.returncode == 0, result.stderr
    assert verify_files([str(path)]).ok
    assert sum(1 for entry in entries(path) if entry["kind"] == "call.decided") == 2000


def test_a_hung_witness_holds_up_no_exit_past_the_closing_timeout(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    result = run(
        """
        import sys, threading, time
        from mcp_guard.audit.events import AuditEvent, EventKind
        from mcp_guard.audit.file import FileAuditSink
        sink = FileAuditSink(sys.argv[1], checkpoint_interval=0, witness=lambda checkpoint: threading.Event().wait())
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="t"))
        time.sleep(0.3)  # the writer is in the witness now
        """,
        str(path),
        timeout=30,
    )
    assert result.returncode == 0 and "did not close in 5.0 s" in result.stderr, result
    assert verify_files([str(path)]).ok  # what was written before the witness hung


def test_a_fifo_in_place_of_the_anchor_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    anchor_path(path).unlink()
    os.mkfifo(anchor_path(path))
    assert "unreadable" in (verify_files([str(path)]).problem or "")
    with pytest.raises(AuditLogError, match="unreadable"):
        FileAuditSink(path)


def test_a_fifo_or_a_device_given_as_a_log_file_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    fifo = tmp_path / "audit.00000.jsonl"
    os.mkfifo(fifo)
    for command in (["verify", str(fifo), str(path)], ["query", str(fifo), str(path)], ["query", "/dev/zero"]):
        cli = [sys.executable, "-m", "mcp_guard.cli", "audit", *command]
        result = subprocess.run(cli, capture_output=True, text=True, timeout=20, check=False)
        assert result.returncode == 2 and "is not a regular file" in result.stderr, result


def test_query_skips_entries_with_odd_times_or_scopes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    state = ChainState()
    lines = [entry_line(state, "chain.file", {"file": path.name})]
    lines.append(entry_line(state, "call.decided", {"tool": "odd", "at": "yesterday", "requested_scopes": 7}))
    lines.append(entry_line(state, "call.decided", {"tool": "even", "at": 1_900_000_000.0, "requested_scopes": ["a"]}))
    path.write_bytes(b"".join(lines))
    for options in (["--since", "1800000000"], ["--scope", "a"]):
        command = [sys.executable, "-m", "mcp_guard.cli", "audit", "query", str(path), *options, "--format", "jsonl"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["tool"] for line in result.stdout.splitlines()] == ["even"]
    with pytest.raises(ValueError, match="max_bytes"):
        FileAuditSink(tmp_path / "zero.jsonl", max_bytes=0)


def test_a_crash_between_sealing_and_renaming_is_finished_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    crashed = run(
        """
        import os, sys, time
        from mcp_guard.audit.events import AuditEvent, EventKind
        from mcp_guard.audit.file import FileAuditSink
        rename = os.replace
        def crashing(source, target):
            if str(target).endswith(".00001.jsonl"):
                os._exit(9)  # the process dies between sealing the live file and renaming it
            rename(source, target)
        os.replace = crashing
        sink = FileAuditSink(sys.argv[1], max_bytes=1)
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool="lost in the crash"))
        sink.flush()
        """,
        str(path),
    )
    assert crashed.returncode == 9, crashed.stderr
    assert entries(path)[-1]["kind"] == "chain.rotated"
    assert verify_files([str(path)]).ok  # sealed, its anchor naming the seal: nothing is missing
    write(path, 1, start=3)  # the restart renames the sealed file and goes on
    segments = sorted(tmp_path.glob("audit.0*.jsonl"))
    kinds = [entry["kind"] for entry in entries(*segments, path)]
    assert kinds.count("chain.rotated") == len(segments) == 1
    assert verify_files([*map(str, segments), str(path)]).ok


CRASHING_WRITER = """
import os, sys, time
from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.file import FileAuditSink
path, point, when = sys.argv[1], sys.argv[2], int(sys.argv[3])
real, calls = getattr(os, point), [0]
def crashing(fd, *rest):
    calls[0] += 1
    if calls[0] == when:
        if point == "write":
            real(fd, bytes(rest[0])[: len(rest[0]) // 2])  # half the batch reaches the disk
        os._exit(9)
    return real(fd, *rest)
setattr(os, point, crashing)
sink = FileAuditSink(path, max_bytes=700, flush_interval=0.001)
for index in range(12):
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, time.time(), tool=f"t{index}"))
    sink.flush()
"""


@pytest.mark.parametrize(
    ("point", "when"),
    [("write", 2), ("write", 5), ("fsync", 4), ("fsync", 5), ("fsync", 6), ("fsync", 8), ("fsync", 9)],
)
def test_a_log_a_crash_left_behind_verifies_and_goes_on(tmp_path: Path, point: str, when: int) -> None:
    """A crash mid-write, or after a seal before its anchor: nothing written is missing, so the
    log verifies as it stands, and reopening it goes on."""
    path = tmp_path / "audit.jsonl"
    crashed = run(CRASHING_WRITER, str(path), point, str(when))
    assert crashed.returncode == 9, crashed.stderr
    verdict = verify_files(log_files(tmp_path))
    assert verdict.ok, verdict
    write(path, 3, start=100)
    assert verify_files(log_files(tmp_path)).ok


@pytest.mark.parametrize(("point", "when"), [("write", 1), ("fsync", 1), ("fsync", 3)])
def test_a_crash_before_the_first_anchor_needs_the_operators_word(tmp_path: Path, point: str, when: int) -> None:
    """The first batch is written before any anchor exists: a crash right then leaves entries
    without an anchor, which is also what deleting one leaves. Verify says so, and reopening
    takes ``adopt_unanchored=True``."""
    path = tmp_path / "audit.jsonl"
    crashed = run(CRASHING_WRITER, str(path), point, str(when))
    assert crashed.returncode == 9, crashed.stderr
    assert "anchor" in (verify_files(log_files(tmp_path)).problem or "")
    with pytest.raises(AuditLogError, match="no anchor"):
        FileAuditSink(path)
    write(path, 3, start=100, adopt_unanchored=True)
    assert verify_files(log_files(tmp_path)).ok


def log_files(directory: Path) -> list[str]:
    live = directory / "audit.jsonl"
    return [*map(str, sorted(directory.glob("audit.0*.jsonl"))), *([str(live)] if live.exists() else [])]


def test_an_anchor_saved_earlier_and_put_back_is_found_out(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2, key=KEY, max_bytes=600)
    saved = anchor_path(path).read_bytes()  # an anchor copied early in the log's life
    write(path, 10, start=2, key=KEY, max_bytes=600)
    assert len(log_files(tmp_path)) >= 3
    cut_to(path, 1)  # the live file cut to its head: everything after it gone
    anchor_path(path).write_bytes(saved)
    verdict = verify_files(log_files(tmp_path), KEY)
    assert not verdict.ok and "older than the last file" in (verdict.problem or "")
    with pytest.raises(AuditLogError, match="older than its last entries"):
        FileAuditSink(path, key=KEY)


def test_a_log_cut_back_to_a_rotated_file_is_not_continued(tmp_path: Path) -> None:
    """The live file and the later rotated files deleted, and the anchor as it stood before that
    rotation put back: the writer renames a file only once the anchor names its seal, so this
    is a cut, to the writer as to `verify`."""
    path = tmp_path / "audit.jsonl"
    saved: dict[int, bytes] = {}
    sink = FileAuditSink(path, key=KEY, max_bytes=600)
    for index in range(12):
        sink.emit(event(index))
        sink.flush()
        saved[json.loads(anchor_path(path).read_bytes())["anchor"]["seq"]] = anchor_path(path).read_bytes()
    sink.close()
    kept = Path(log_files(tmp_path)[0])
    rotation = json.loads(kept.read_bytes().splitlines()[-1])
    assert rotation["kind"] == "chain.rotated" and len(log_files(tmp_path)) >= 3
    for later in log_files(tmp_path)[1:]:
        os.remove(later)
    anchor_path(path).write_bytes(saved[rotation["seq"] - 1])
    verdict = verify_files(log_files(tmp_path), KEY)
    assert not verdict.ok and "the log goes on in" in (verdict.problem or "")
    with pytest.raises(AuditLogError, match="older than its last entries"):
        FileAuditSink(path, key=KEY)


def test_a_rotated_file_waits_for_its_seal_to_be_anchored(tmp_path: Path) -> None:
    """An anchor that cannot be written at a rotation keeps the sealed file in place: renamed,
    a crash would leave what a cut leaves. Once the anchor is written, the rotation completes."""
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, key=KEY, max_bytes=600, flush_interval=0.01, failure="buffer")
    sink.emit(event(0))
    sink.flush()
    blocked = tmp_path / "audit.jsonl.anchor.tmp"
    blocked.mkdir()  # the anchor cannot be replaced
    for index in range(1, 6):
        sink.emit(event(index))
    deadline = time.monotonic() + 10
    while b'"chain.rotated"' not in path.read_bytes():
        assert time.monotonic() < deadline, "the log never filled up and sealed"
        time.sleep(0.01)
    time.sleep(0.1)  # time enough for a rename, were one to come
    assert log_files(tmp_path) == [str(path)]  # sealed, not renamed aside
    blocked.rmdir()
    sink.close()
    assert len(log_files(tmp_path)) >= 2 and verify_files(log_files(tmp_path), KEY).ok  # renamed, and on


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer is stopped
def test_a_sealed_file_taken_up_at_restart_is_anchored_before_it_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that stopped between sealing a file and anchoring the seal left a log its
    successor takes up; the successor anchors the seal before renaming the file, so a stop
    right after (its first write failing, say) still leaves a log that opens."""
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    state, _ = resume(path, None, cut_torn=False)
    seal = entry_line(state, "chain.rotated", {"next": path.name, "as": next_segment(path).name})
    with open(path, "ab") as file:
        file.write(seal)  # sealed, and stopped before anchoring the seal

    class Stop(BaseException):
        """The process stopping, as far as the writer can tell: it writes nothing more."""

    def stopping(path: Path, data: bytes) -> None:
        raise Stop

    monkeypatch.setattr("mcp_guard.audit.file.append_whole", stopping)
    successor = FileAuditSink(path, failure="buffer", flush_interval=0.01)
    successor.emit(event(3))
    successor._thread.join(10)  # renamed aside, then stopped at its first write to the fresh file
    assert not successor._thread.is_alive() and not path.exists()
    assert json.loads(anchor_path(path).read_bytes())["anchor"]["seq"] == state.seq - 1  # the seal
    os.close(successor._lock)
    successor._lock = -1
    monkeypatch.undo()
    FileAuditSink(path).close()
    assert verify_files(log_files(tmp_path)).ok


def test_verify_prints_a_logged_file_name_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The name a ``chain.rotated`` entry gives the next file is logged text: printed raw, escape
    sequences in it could erase the verdict on a terminal and write "intact" in its place."""
    from mcp_guard.cli import main as cli

    path = tmp_path / "audit.jsonl"
    state = ChainState()
    forged = "\r\x1b[2K\x1b[32mintact: 3 entries"
    path.write_bytes(
        entry_line(state, "chain.file", {"file": "audit.jsonl"})
        + entry_line(state, "call.decided", {"event_id": "e1", "at": 1.9e9, "tool": "delete_db"})
        + entry_line(state, "chain.rotated", {"next": forged, "as": "x"})
    )
    assert cli(["audit", "verify", str(path)]) == 1
    printed = capsys.readouterr()
    assert "\x1b" not in printed.out + printed.err and "\r" not in printed.out + printed.err
    assert "\\x1b[32mintact" in printed.out + printed.err


def test_a_torn_line_is_cut_only_from_the_log_itself_never_through_a_link(tmp_path: Path) -> None:
    """A link swapped in for the live file after its checks would have had its target cut back."""
    from mcp_guard.audit.log_files import _cut_torn_line

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"first line\nsecond line without an end")
    (tmp_path / "audit.jsonl").symlink_to(victim)
    with pytest.raises(AuditLogError, match="not a regular file"):
        _cut_torn_line(tmp_path / "audit.jsonl")
    assert victim.read_bytes() == b"first line\nsecond line without an end"
