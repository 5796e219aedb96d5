"""Tool arguments as they may appear in a span or the audit log: redacted, bounded, never raw.

Arguments are recorded only when a guard opts in (``Guard(record_arguments=True)``). Even then
the named fields of each tool are redacted at any depth, nesting below ``max_depth`` is cut,
long strings and lists are shortened, and the whole rendering is capped at ``max_bytes``.
Huge or hostile arguments can neither bloat a span nor slow the call path unboundedly.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "summarize_arguments"]

REDACTED = "[redacted]"
_CUT = "[...]"
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
    """A compact JSON rendering of ``arguments`` within the limits (marked where it was cut)."""

    def shrink(value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return value if len(value) <= max_string else value[:max_string] + _CUT
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _LONGEST_INT_BITS:
            return f"<int of {value.bit_length()} bits>"
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth >= max_depth:
            return _CUT
        if isinstance(value, Mapping):
            shown = {
                str(key)[:max_string]: REDACTED if key in redact else shrink(item, depth + 1)
                for key, item in itertools.islice(value.items(), max_items)
            }
            if len(value) > max_items:
                shown[_CUT] = f"{len(value) - max_items} more"
            return shown
        if isinstance(value, list | tuple):
            shown_list = [shrink(item, depth + 1) for item in value[:max_items]]
            if len(value) > max_items:
                shown_list.append(f"{_CUT} {len(value) - max_items} more")
            return shown_list
        return f"<{type(value).__name__}>"

    try:
        text = json.dumps(shrink(arguments, 0), ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
    except Exception as error:  # a value no rendering survives: say so rather than lose the record
        return json.dumps(f"[arguments not recordable: {type(error).__name__}]")
    return text if len(text) <= max_bytes else text[: max_bytes - len(_CUT)] + _CUT
