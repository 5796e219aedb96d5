"""The ``mcp-guard policy`` commands, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_guard import AuditEvent, Decision, EventKind
from mcp_guard import __version__ as mcp_guard_version
from mcp_guard.audit.file import FileAuditSink
from mcp_guard.cli import main

ROOT = Path(__file__).resolve().parent.parent
ASSISTANT = str(ROOT / "examples" / "policies" / "assistant.toml")


def mcp_guard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mcp_guard.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def test_check_validates_files_and_names_each_problem(tmp_path: Path) -> None:
    good = mcp_guard("policy", "check", ASSISTANT, ASSISTANT.replace(".toml", ".yaml"))
    assert good.returncode == 0
    assert good.stdout.splitlines()[0].endswith("ok (policy assistant revision 2026-11-21: 4 tools, 8 rules)")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'version = 1\n[[rules]]\nid = "x"\ntools = ["a"]\narguments = [{ argument = "q", pattern = "(a|ab)*" }]\n'
    )
    refused = mcp_guard("policy", "check", ASSISTANT, str(bad))
    assert refused.returncode == 1
    assert f"{bad}: line 5: rules.0.arguments.0:" in refused.stdout
    assert "ok" in refused.stdout.splitlines()[0]
    huge = tmp_path / "huge.toml"
    huge.write_text('version = 1\n[[rules]]\nid = "x"\narguments = [{ argument = "q", pattern = "a{4294967295}" }]\n')
    overflowing = mcp_guard("policy", "check", str(huge))
    assert overflowing.returncode == 1 and "Traceback" not in overflowing.stderr
    assert "the repetition number is too large" in overflowing.stdout


def test_explain_prints_the_decision_and_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["policy", "explain", ASSISTANT, "--tool", "read_secret", "--scopes", "secrets:read mail:send"]
    args += ["--claims", '{"groups": ["dev"]}', "--actor", "agent-9", "--at", "2026-11-23T10:00:00+00:00"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert text.startswith("read_secret: denied by assistant 2026-11-21")
    assert "approved scopes: -" in text
    rows = [line.split(maxsplit=3) for line in text.splitlines() if line.startswith(("scopes.", "secrets-"))]
    assert [row[:3] for row in rows] == [
        ["scopes.required", "scopes", "pass"],
        ["secrets-for-ops", "principal", "refuse"],
        ["secrets-not-delegated", "delegation", "refuse"],
        ["secrets-in-office-hours", "time_window", "pass"],
    ]
    assert rows[1][3] == "Rule 'secrets-for-ops' refuses tool 'read_secret': this caller may not call it."
    allowed = ["policy", "explain", ASSISTANT, "--tool", "send_mail", "--scopes", "mail:send files:read"]
    assert main([*allowed, "--args", '{"to": ["a@example.com"]}', "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decision"] == "trimmed" and report["approved_scopes"] == "mail:send"
    assert [rule["id"] for rule in report["rules"]] == [
        "scopes.required",
        "no-egress-after-secrets",
        "few-recipients",
        "mail-rate",
        "risk",
    ]
    assert main([*allowed, "--after", "read_secret"]) == 1
    assert "it may not run after tool read_secret or a tool tagged secrets in this session" in capsys.readouterr().out


def test_explain_reads_the_act_claim_and_weighs_risk_as_the_guard_does(capsys: pytest.CaptureFixture[str]) -> None:
    ops = ["policy", "explain", ASSISTANT, "--tool", "read_secret", "--scopes", "secrets:read"]
    ops += ["--at", "2026-11-23T10:00:00+00:00", "--format", "json"]
    assert main([*ops, "--claims", '{"groups": ["ops"]}']) == 0
    capsys.readouterr()
    assert main([*ops, "--claims", '{"groups": ["ops"], "act": {"sub": "bot"}}']) == 1  # a decoded token pasted in
    assert json.loads(capsys.readouterr().out)["reasons"][0]["code"] == "delegation_forbidden"
    assert main([*ops, "--claims", '{"act": {"sub": "bot"}}', "--actor", "other"]) == 2
    assert "name different actors" in capsys.readouterr().err
    risky = [*ops, "--claims", '{"groups": ["ops"]}', *["--after", "read_secret"] * 3]  # 3 x 25, then 25 of 100
    assert main(risky) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["reasons"][0]["code"] == "session_risk_exceeded" and report["rules"][-1]["result"] == "refuse"


def test_explain_refuses_bad_input_as_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    odd = (["--at", "yesterday"], ["--at", "1e300"], ["--at", "nan"], ["--args", deep], ["--claims", deep])
    for extra in (["--args", "[1, 2]"], ["--claims", "{nope"], *odd):
        with pytest.raises(SystemExit) as caught:
            main(["policy", "explain", ASSISTANT, "--tool", "read_file", *extra])
        assert caught.value.code == 2
    assert main(["policy", "explain", str(ROOT / "missing.toml"), "--tool", "x"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_matrix_lists_tools_scopes_risk_and_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "matrix", ASSISTANT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["tool", "risk", "requires", "may", "use", "tags", "rules"]
    assert lines[3].split() == [
        "read_secret",
        "admin",
        "secrets:read",
        "-",
        "secrets",
        "secrets-for-ops,secrets-not-delegated,secrets-in-office-hours",
    ]
    assert main(["policy", "matrix", ASSISTANT, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["tool"] for row in rows] == ["fetch_page", "read_file", "read_secret", "send_mail"]


def disagreement(tool: str | None = "t", event_id: str | None = None, **facts: object) -> AuditEvent:
    """A ``policy.disagreed`` event with the facts the guard writes, as ``facts`` overrides them."""
    written: dict[str, object] = {
        "candidate_policy_id": "c",
        "candidate_policy_version": "1",
        "candidate_decision": "allowed",
        "candidate_rule_ids": ["r"],
    }
    event = AuditEvent.build(
        EventKind.POLICY_DISAGREED, 1_900_000_000.0, tool=tool, decision=Decision.deny("x"), facts=written | facts
    )
    return event if event_id is None else event._replace(event_id=event_id)


def test_diff_escapes_logged_values_and_leaves_out_odd_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit.jsonl"
    sink = FileAuditSink(log)
    for event in (
        disagreement("t\nexample of forged: mcp-guard audit show X", event_id="e-1\nforged"),
        disagreement(candidate_decision="allowed\nforged", candidate_rule_ids=[]),
        disagreement(candidate_rule_ids=5),
        disagreement(candidate_rule_ids="abc"),
        disagreement(candidate_rule_ids=["r", 7]),
        disagreement(candidate_policy_id=None),
        disagreement(tool=None),
    ):
        sink.emit(event)
    sink.close()
    assert main(["policy", "diff", str(log), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["disagreements"], summary["odd_entries"]) == (2, 5)
    assert summary["by_candidate_rule"] == {"r": 1, "-": 1}
    assert main(["policy", "diff", str(log)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "2 disagreements",
        "5 policy.disagreed entries left out: their facts are not as mcp-guard writes them "
        "(check the log with mcp-guard audit verify)",
    ]
    assert "t\\nexample of forged: mcp-guard audit show X  1" in lines
    assert "denied -> allowed\\nforged  1" in lines
    assert f"example of denied -> allowed: mcp-guard audit show e-1\\nforged {log}" in lines
    assert [line for line in lines if "forged" in line and "\\n" not in line] == []


def test_diff_shows_long_names_in_full(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Combination ids run long (``all_of(...)``): two candidates must not print as one."""
    log = tmp_path / "audit.jsonl"
    sink = FileAuditSink(log)
    for suffix in ("1", "2"):
        sink.emit(disagreement(candidate_policy_id="all_of(" + "member, " * 12 + suffix + ")"))
    sink.close()
    assert main(["policy", "diff", str(log)]) == 0
    shown = capsys.readouterr().out
    assert shown.count("member, member, " * 6 + "1)") == 1 and shown.count("member, member, " * 6 + "2)") == 1


def test_schema_prints_the_committed_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((ROOT / "docs" / "policy.schema.json").read_text())


def test_cedar_schema_comes_from_a_servers_registered_tools(tmp_path: Path) -> None:
    pytest.importorskip("cedarpy")
    (tmp_path / "files_server.py").write_text(
        "from mcp_guard import Guard\n"
        "guard = Guard()\n"
        "@guard.tool(scopes='files:read')\n"
        "def read_file(path: str, limit: int = 10) -> str:\n"
        "    return path\n"
    )
    result = mcp_guard("policy", "cedar-schema", "files_server:guard", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    context = schema["McpGuard"]["actions"]["read_file"]["appliesTo"]["context"]
    assert context["attributes"]["arguments"]["attributes"]["limit"]["type"] == "Long"
    assert context["attributes"]["arguments"]["attributes"]["path"] == {"type": "String"}
    assert mcp_guard("policy", "cedar-schema", "files_server", cwd=tmp_path).returncode == 2
    assert mcp_guard("policy", "cedar-schema", "files_server:nothing", cwd=tmp_path).returncode == 2
    missing = mcp_guard("policy", "cedar-schema", "no_such_server:guard", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "cannot import 'no_such_server'" in missing.stderr
    (tmp_path / "broken_server.py").write_text("guard = (\n")
    broken = mcp_guard("policy", "cedar-schema", "broken_server:guard", cwd=tmp_path)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr and "SyntaxError" in broken.stderr


def test_the_command_names_its_version() -> None:
    result = mcp_guard("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"mcp-guard {mcp_guard_version}")


@pytest.mark.parametrize("entries", [3000, 3])
def test_a_reader_going_away_stops_the_output_quietly(tmp_path: Path, entries: int) -> None:
    """``mcp-guard audit query LOG | head``: no error about the closed pipe, and the exit
    status of a program stopped by SIGPIPE, whether the output fills the pipe or only the
    buffer flushed at the end (stdout buffered, as it is by default)."""
    log = tmp_path / "audit.jsonl"
    sink = FileAuditSink(log)
    for index in range(entries):  # 3000: far more output than a pipe holds
        sink.emit(AuditEvent.build(EventKind.CALL_DECIDED, 1_900_000_000.0 + index, tool=f"tool_{index}"))
    sink.close()
    command = [sys.executable, "-m", "mcp_guard.cli", "audit", "query", str(log)]
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment) as reading:
        assert reading.stdout is not None and reading.stderr is not None
        if entries > 100:
            assert reading.stdout.readline()
        reading.stdout.close()  # before the short output is even written
        errors = reading.stderr.read()
        assert reading.wait(timeout=60) == 141
    assert errors == b""
