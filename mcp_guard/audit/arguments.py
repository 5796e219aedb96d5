"""Tool arguments as they may appear in a span or the audit log: redacted, bounded, never raw.

Arguments are recorded only when a guard opts in (``Guard(record_arguments=True)``). Even then
the named fields of each tool are redacted at any depth, nesting below ``max_depth`` is cut,
long strings and lists are shortened, and the whole rendering is capped at ``max_bytes``, the
walk stopping there. Huge or hostile arguments (shared references and cycles included) can
neither bloat a span nor slow the call path unboundedly.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import traceback
from collections.abc import Mapping
from typing import Any

__all__ = ["DETAIL_LIMIT", "REDACTED", "error_detail", "log_failure", "summarize_arguments"]

REDACTED = "[redacted]"
_CUT = "[...]"
_CYCLE = "[cycle]"
_LONGEST_INT_BITS = 256
"""Integers longer than this are shown by their size: rendering one costs time quadratic in its
digits, and past 4,300 digits Python refuses."""


def summarize_arguments(
    arguments: Mapping[str, Any],
    redact: frozenset[str] = frozenset(),
    *,
    max_bytes: int = 2048,
    max_depth: int = 6,
    max_items: int = 32,
    max_string: int = 256,
) -> str:
    """A compact JSON rendering of ``arguments`` within the limits (marked where it was cut).

    The walk keeps count of the bytes rendered so far (at least: escaping only adds) and cuts
    what would all fall past ``max_bytes``, so shared references cost no more than their
    rendering may hold; a container holding itself shows as ``[cycle]`` where it recurs.
    """
    spent = 0
    walking: set[int] = set()

    def shrink(value: Any, depth: int) -> Any:
        nonlocal spent
        if spent > max_bytes:  # all of it would fall past the cap
            return _CUT
        if depth < max_depth and isinstance(value, Mapping | list | tuple):
            if id(value) in walking:
                return _CYCLE
            walking.add(id(value))
            spent += 1  # its opening bracket (the closing one comes after what it holds)
            try:
                return shrink_mapping(value, depth) if isinstance(value, Mapping) else shrink_list(value, depth)
            finally:
                walking.discard(id(value))
                spent += 1
        shown = _leaf(value, max_string, depth >= max_depth)
        spent += len(shown) + 2 if isinstance(shown, str) else len(str(shown))
        return shown

    def shrink_mapping(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        nonlocal spent
        named = {str(key)[:max_string]: (key, item) for key, item in itertools.islice(value.items(), max_items)}
        shown: dict[str, Any] = {}
        for name, (key, item) in named.items():  # walked in the order rendered (keys shown alike: the last)
            spent += len(name) + 3 + (len(shown) > 0)  # quotes, colon and comma
            shown[name] = REDACTED if key in redact else shrink(item, depth + 1)
        if len(value) > max_items:
            shown[_CUT] = f"{len(value) - max_items} more"
        return shown

    def shrink_list(value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        nonlocal spent
        shown: list[Any] = []
        for item in value[:max_items]:
            spent += len(shown) > 0  # a comma
            shown.append(shrink(item, depth + 1))
        if len(value) > max_items:
            shown.append(f"{_CUT} {len(value) - max_items} more")
        return shown

    try:
        text = json.dumps(shrink(arguments, 0), ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
    except Exception as error:  # a value no rendering survives: say so rather than lose the record
        return json.dumps(f"[arguments not recordable: {type(error).__name__}]")
    return text if len(text) <= max_bytes else text[: max_bytes - len(_CUT)] + _CUT


def _leaf(value: Any, max_string: int, deep: bool) -> Any:
    """A value that is not walked into, as shown: scalars bounded, anything else named (or cut,
    past the depth limit)."""
    if isinstance(value, str):
        return value if len(value) <= max_string else value[:max_string] + _CUT
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _LONGEST_INT_BITS:
        return f"<int of {value.bit_length()} bits>"
    if value is None or isinstance(value, bool | int | float):
        return value
    return _CUT if deep else f"<{type(value).__name__}>"


DETAIL_LIMIT = 300
"""Most characters of an error an audit ``detail`` (or a log line) keeps."""


def error_detail(error: BaseException, redact: frozenset[str]) -> str:
    """What the audit log keeps of an error a call's arguments may have caused (a policy's): its
    type, and its text, bounded, unless the tool redacts arguments. An error may quote one in a
    form no redaction recognises (cut short, re-encoded, computed from it), so for such a tool
    the text is withheld."""
    if redact:
        return f"{type(error).__name__} (its text is withheld: the tool redacts arguments it may quote)"
    return f"{type(error).__name__}: {error}"[:DETAIL_LIMIT]


def log_failure(logger: logging.Logger, what: str, error: BaseException, redact: frozenset[str]) -> None:
    """Log ``what`` went wrong at error level, where policy code may have quoted a call's
    arguments in its error: its `error_detail` on one escaped line (no error text forges a log
    line), then where it happened, the stack's frames alone (code, never values)."""
    detail = error_detail(error, redact)
    logger.error("mcp-guard: %s (%r)\n%s", what, detail, "".join(traceback.format_tb(error.__traceback__)))
