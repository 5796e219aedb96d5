"""`mcp-guard audit query` time ranges: what a time means, and entries with no time to compare."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mcp_guard.audit.events import AuditEvent, EventKind
from mcp_guard.audit.file import FileAuditSink
from mcp_guard.cli import main as cli

NOV_19, NOV_21 = datetime(2026, 11, 19, 12, tzinfo=UTC).timestamp(), datetime(2026, 11, 21, 12, tzinfo=UTC).timestamp()


def queried(path: Path, capsys: pytest.CaptureFixture[str], *options: str) -> list[str]:
    assert cli(["audit", "query", str(path), "--format", "jsonl", *options]) == 0
    return [json.loads(row)["tool"] for row in capsys.readouterr().out.splitlines()]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    for at, tool in ((NOV_19, "before"), (NOV_21, "after")):
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, at, tool=tool))
    sink.close()
    return path


def test_a_basic_format_iso_date_is_a_date_not_seconds(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert queried(log, capsys, "--since", "2026-11-20T00:00:00Z") == ["after"]
    assert queried(log, capsys, "--since", "20261120") == ["after"]  # not 20,261,120 s after 1970
    assert queried(log, capsys, "--until", "20261120") == ["before"]  # midnight, in any time zone, lies between
    assert queried(log, capsys, "--since", str(NOV_21 - 1)) == ["after"]  # seconds still read as seconds


@pytest.mark.parametrize("bound", ["nan", "inf", "-inf", "soon"])
def test_a_bound_that_is_no_time_is_refused(log: Path, bound: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["audit", "query", str(log), f"--since={bound}"])
    assert exited.value.code == 2 and f"not a time: {bound!r}" in capsys.readouterr().err


@pytest.mark.parametrize("at", ["NaN", "Infinity", "true", '"2026-11-21"', "1" + "0" * 400])
def test_an_entry_without_a_comparable_time_matches_no_range(
    log: Path, at: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = log.read_text()
    log.write_text(text.replace(f'"at":{NOV_19!r}', f'"at":{at}', 1))  # as an editor could leave it
    assert queried(log, capsys, "--since", "1970-01-02") == ["after"]
    assert queried(log, capsys, "--until", "2100-01-01") == ["after"]
    assert queried(log, capsys) == ["before", "after"]  # with no range, it is listed
    assert cli(["audit", "query", str(log)]) == 0  # and in the table, as logged (an integer too big for a float too)
    assert "2 events" in capsys.readouterr().out


def test_times_are_utc_whatever_the_hosts_zone(
    log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert cli(["audit", "query", str(log)]) == 0
        table = capsys.readouterr().out
        assert "2026-11-21T12:00:00+00:00" in table and "2026-11-19T12:00:00+00:00" in table
        assert queried(log, capsys, "--since", "2026-11-21T11:30") == ["after"]  # 11:30 UTC, not New York
        assert queried(log, capsys, "--since", "2026-11-21T06:30-05:00") == ["after"]  # an offset is kept
        assert queried(log, capsys, "--until", "2026-11-21T11:30") == ["before"]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_reversed_range_is_refused_rather_than_answered_with_nothing(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["audit", "query", str(log), "--since", "2026-11-21", "--until", "2026-11-19"]) == 2
    assert "--since is later than --until" in capsys.readouterr().err


def test_show_prints_every_event_with_the_id(tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two logs given together may hold an id twice: both events are shown, and the count said."""
    event_id = json.loads(log.read_bytes().splitlines()[1])["event"]["event_id"]
    copy = tmp_path / "copy" / "audit.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(log.read_bytes())
    assert cli(["audit", "show", event_id, str(log), str(copy)]) == 0
    printed = capsys.readouterr()
    assert printed.out.count(f'"event_id": "{event_id}"') == 2 and "2 events have the id" in printed.err


def test_a_sink_opened_by_a_relative_path_keeps_its_file_when_the_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sink = FileAuditSink("audit.jsonl")
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, NOV_19, tool="here"))
    sink.flush()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, NOV_21, tool="still here"))
    sink.close()
    assert not (tmp_path / "elsewhere" / "audit.jsonl").exists()
    assert cli(["audit", "verify", str(tmp_path / "audit.jsonl")]) == 0
