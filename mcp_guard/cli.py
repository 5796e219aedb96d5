"""The ``mcp-guard`` command.

    mcp-guard audit verify FILE... [--checkpoint SEQ:HASH]... [--starts-later] [--ends-earlier]
                                          prove the chain intact, or name its first broken entry
    mcp-guard audit query FILE... [filters] [--format table|jsonl]
    mcp-guard audit show EVENT_ID FILE...
    mcp-guard policy check FILE...        validate policy files, naming each problem's line
    mcp-guard policy explain FILE --tool T [--scopes S] [--args JSON] [--claims JSON] ...
                                          the decision on one call and every rule's answer
    mcp-guard policy matrix FILE          tools x scopes x risk, and the rules on each tool
    mcp-guard policy diff LOG...          what a shadow policy would have decided otherwise
    mcp-guard policy schema               the JSON Schema of policy files
    mcp-guard policy cedar-schema MODULE:GUARD
                                          the Cedar schema of a server's registered tools

Audit files are given in chain order (rotated segments first, the live file last): the whole
log, unless ``--starts-later`` (older segments archived) or ``--ends-earlier`` (no live file)
says otherwise. HMAC'd logs need their key: ``--key-file PATH`` (its bytes, less one trailing
line end) or ``--key-env NAME`` (its bytes, as they are). ``audit query`` and ``audit show``
read only whole entries (a last line without its line end, or a line that is no entry, is
skipped) and do not verify them: run ``audit verify`` for that. ``audit verify`` and ``policy
check`` exit 1 when they find a problem, ``policy explain`` when the call would be denied;
every command exits 2 on a usage error, and 141 quietly when its reader goes away (``| head``),
as a program stopped by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from mcp_guard import __version__
from mcp_guard.audit.chain import Checkpoint, read_entries, verify_files
from mcp_guard.policy.commands import add_policy_commands, instant
from mcp_guard.policy.report import table
from mcp_guard.text import escaped

__all__ = ["main"]

_STOPPED_BY_SIGPIPE = 128 + 13

_COLUMNS = ("at", "kind", "subject", "client_id", "tool", "decision", "reasons", "session_id")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.run(args))
        sys.stdout.flush()  # here, not at exit: a reader gone away is seen below
        return status
    except BrokenPipeError:  # the reader went away: no more output, and no error about it at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return _STOPPED_BY_SIGPIPE
    except (OSError, ValueError) as error:
        print(f"mcp-guard: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-guard", description="Authorization and audit for MCP servers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    audit = commands.add_parser("audit", help="verify and search the chained audit log").add_subparsers(
        required=True, metavar="ACTION"
    )

    verify = audit.add_parser("verify", help="prove the chain intact, or name its first broken entry")
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=_checkpoint,
        metavar="SEQ:HASH",
        help="a checkpoint kept elsewhere, which the chain must contain (repeatable)",
    )
    verify.add_argument(
        "--starts-later",
        action="store_true",
        help="the first file is not the log's first (older segments archived): it need not start at entry 0",
    )
    verify.add_argument(
        "--ends-earlier",
        action="store_true",
        help="the last file is not the live file (a run of archived segments): no anchor, no end to reach",
    )
    _key_options(verify)
    verify.set_defaults(run=_verify)

    query = audit.add_parser("query", help="find events (in whole entries, unverified: run verify for that)")
    query.add_argument("files", nargs="+", metavar="FILE")
    for name in ("session", "subject", "client", "tool", "scope", "kind"):
        query.add_argument(f"--{name}")
    query.add_argument("--decision", choices=["allowed", "trimmed", "denied"])
    query.add_argument("--since", type=instant, help="ISO 8601 time or seconds since the epoch")
    query.add_argument("--until", type=instant, help="ISO 8601 time or seconds since the epoch")
    query.add_argument("--format", choices=["table", "jsonl"], default="table")
    query.set_defaults(run=_query)

    show = audit.add_parser("show", help="print one event in full (from whole entries, unverified)")
    show.add_argument("event_id", metavar="EVENT_ID")
    show.add_argument("files", nargs="+", metavar="FILE")
    show.set_defaults(run=_show)

    add_policy_commands(commands, _events)
    return parser


def _checkpoint(text: str) -> Checkpoint:
    try:
        return Checkpoint.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _key_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--key-file", help="file holding the HMAC key")
    group.add_argument("--key-env", help="environment variable holding the HMAC key")


def _key(args: argparse.Namespace) -> bytes | None:
    if args.key_file:
        with open(args.key_file, "rb") as file:
            key = file.read().removesuffix(b"\n").removesuffix(b"\r")
        if not key:
            raise ValueError(f"the key file {args.key_file} holds no key")
        return key
    if args.key_env:  # its bytes as the process got them: a key need not be text
        value = os.environb.get(os.fsencode(args.key_env))
        if not value:
            raise ValueError(f"the environment variable {args.key_env} holds no key")
        return value
    return None


def _verify(args: argparse.Namespace) -> int:
    verdict = verify_files(
        list(args.files), _key(args), args.checkpoint, from_start=not args.starts_later, to_end=not args.ends_earlier
    )
    print(verdict)
    return 0 if verdict.ok else 1


def _events(files: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The audit events in ``files``, chain bookkeeping entries left out.

    Only whole entries are read (`read_entries`): a torn last line or a line that is no entry
    is skipped, so nothing shows that `verify` would not count. Nothing is verified here.
    """
    for path in files:
        for entry in read_entries(path):
            if not str(entry.get("kind", "")).startswith("chain.") and isinstance(entry.get("event"), dict):
                yield entry["event"]


def _query(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.since > args.until:
        print("mcp-guard: --since is later than --until: no event lies between them", file=sys.stderr)
        return 2
    wanted = {
        "session_id": args.session,
        "subject": args.subject,
        "client_id": args.client,
        "tool": args.tool,
        "kind": args.kind,
        "decision": args.decision,
    }
    rows = []
    for event in _events(args.files):
        if any(value is not None and event.get(field) != value for field, value in wanted.items()):
            continue
        if args.scope is not None and not any(
            _holds(event.get(name), args.scope) for name in ("requested_scopes", "approved_scopes", "missing_scopes")
        ):
            continue
        at = _seconds(event.get("at"))
        if (args.since is not None or args.until is not None) and at is None:
            continue  # no time to compare (a NaN would pass every bound): it matches no time range
        if (args.since is not None and at < args.since) or (args.until is not None and at > args.until):
            continue
        if args.format == "jsonl":
            print(json.dumps(event, sort_keys=True))
        else:
            rows.append({column: _cell(column, event.get(column)) for column in _COLUMNS})
    if args.format == "table":
        print(table(rows, _COLUMNS))
        print(f"{len(rows)} events")
    return 0


def _holds(scopes: object, scope: str) -> bool:
    """Whether a logged scope set (a list of strings, if the entry is sound) holds ``scope``."""
    return isinstance(scopes, list) and scope in scopes


def _show(args: argparse.Namespace) -> int:
    """Print the event with the id asked for; every one of them, should the files hold several
    (a writer gives each id once: more is two logs given together, or an entry forged)."""
    found = 0
    for event in _events(args.files):
        if event.get("event_id") == args.event_id:
            print(json.dumps(event, indent=2, sort_keys=True))
            found += 1
    if found > 1:
        print(f"mcp-guard: {found} events have the id {args.event_id!r}", file=sys.stderr)
    elif not found:
        print(f"mcp-guard: no event {args.event_id!r}", file=sys.stderr)
    return 0 if found else 1


def _seconds(value: object) -> float | None:
    """A logged time as finite seconds; None for anything else (text, a bool, NaN, an integer
    too large for a float: a planted entry must not stop a search of the whole log)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def _cell(column: str, value: object) -> str:
    """One table cell, on one line and in ASCII: a logged value can neither break the table nor
    pass for another row (control characters, lone surrogates and look-alikes are escaped)."""
    seconds = _seconds(value) if column == "at" else None
    if seconds is not None:
        try:
            return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            pass
    if isinstance(value, list):
        text = ",".join(str(item) for item in value) or "-"
    else:
        text = "-" if value is None else str(value)
    return escaped(text, 40)


if __name__ == "__main__":
    raise SystemExit(main())
