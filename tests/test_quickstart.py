"""`make demo` keeps working: the quickstart walkthrough runs and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parent.parent / "examples" / "quickstart" / "demo.py"


def test_the_quickstart_walkthrough(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path
    )
    out = result.stdout
    assert "tools/list shows: ['read_note']" in out
    assert "allowed  read_note" in out
    assert "DENIED   write_note: [-32003]" in out and "'missing_scopes': ['notes:write']" in out
    assert "Unknown tool 'wipe_notes'." in out and "Unknown tool 're\\u0430d_note'." in out
    assert "with scopes [notes:write]" in out  # trimmed from three granted scopes
    assert "'reason': 'session_revoked'" in out
    assert "decision=trimmed" in out and "status=ERROR" in out
    assert "session.revoked" in out
    assert "quickstart-audit.jsonl; mcp-guard audit verify says:" in out
    chained = (tmp_path / "quickstart-audit.jsonl").read_text()
    for bearer in ("reader-token", "writer-token", "admin-token"):  # what the clients sent
        assert bearer not in chained
    assert "intact: " in out
