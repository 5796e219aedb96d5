"""Untrusted text in messages, logs and audit records: escaped and bounded.

A requested tool name, a path or a URL can be any string a client sends, so it is shown with
non-ASCII and control characters escaped (a look-alike shows its disguise: ``re\\u0430d``) and
cut to a few dozen characters, with only that prefix ever escaped however long the value is.
"""

from __future__ import annotations

__all__ = ["escaped", "excerpt"]

LIMIT = 80


def escaped(value: str, limit: int = LIMIT) -> str:
    """At most ``limit`` characters of ``value``, escaped by `ascii` (a ``'`` included, so quoted
    text cannot seem to end early), with ``...`` marking a cut."""
    shown = ascii(value[:limit])
    shown = shown[1:-1] if shown[0] == "'" else shown[1:-1].replace("'", "\\'")
    if len(shown) > limit or len(value) > limit:
        shown = shown[: limit - 3] + "..."
    return shown


def excerpt(value: str) -> str:
    """``value`` `escaped` and quoted, for messages that name it."""
    return f"'{escaped(value)}'"
