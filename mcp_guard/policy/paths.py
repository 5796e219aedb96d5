"""File paths confined to directory roots, checked the way the filesystem will read them.

A path is refused on its text alone, before it touches the filesystem, when it is not a
non-empty string of at most `MAX_PATH_LENGTH` printable characters, when it begins or ends
with whitespace, or begins with ``~`` or a URI scheme (``file:``), written out or
percent-encoded, or when it holds a backslash, a look-alike NFKC folds into a separator, a dot
component or a refused start (``\uff0e\uff0e\uff0f`` is ``../``), or a percent-encoded separator, dot or NUL: a
tool that strips, expands, parses or decodes it once more must not find a different path. The escapes are decoded as often as a tool might (``%252f``, and split
spellings such as ``%%32%66`` or ``%2%66``, become ``/`` in the second round), and overlong UTF-8
(``%c0%af``, ``%e0%80%af``, ``%f0%80%80%af``) and ``%uXXXX`` escapes count too. Otherwise it
is canonicalised with `os.path.realpath`, which resolves ``..`` and every symlink that exists,
and must then lie inside a root, compared component by component (``/data/root2`` is not
inside ``/data/root``). A relative path is resolved against the first root.

The check runs when the call is decided; a symlink created between the decision and the tool's
own ``open`` is beyond it, so tools that write should still open without following links.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from mcp_guard.text import excerpt

__all__ = ["MAX_PATH_LENGTH", "PathRoots"]

MAX_PATH_LENGTH = 4096
"""Longest path accepted, in characters (Linux's ``PATH_MAX``)."""

_DECODINGS = 4
"""Most rounds of percent-decoding a path may need before it stops changing."""

_DISGUISED = re.compile(rb"[\xc0\xc1]|\xe0[\x80-\x9f]|\xf0[\x80-\x8f]|%u[0-9a-f]{4}", re.IGNORECASE)
"""An overlong UTF-8 lead (bytes C0 or C1, E0 then 80-9F, F0 then 80-8F), which no valid text
holds, or an IIS-style ``%uXXXX`` escape."""

_SPECIAL = (b".", b"/", b"\\", b"\x00")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*:")
"""A URI scheme (RFC 3986), as a path may begin: a tool that takes URIs opens ``file:///etc/passwd``,
and ``file:../x`` relative to its own directory. A name such as ``notes:draft.txt`` reads as one
too: give it as ``./notes:draft.txt``."""


class PathRoots:
    """Directory roots, canonicalised once; `violation` says why a path is not inside any."""

    __slots__ = ("_roots",)

    def __init__(self, roots: Iterable[str]) -> None:
        canonical: list[str] = []
        for root in roots:
            if not isinstance(root, str):
                raise ValueError(f"path root is not a string but {type(root).__name__}")
            problem = _text_problem(root) or (None if os.path.isabs(root) else "is not absolute")
            if problem is not None:
                raise ValueError(f"path root {excerpt(root)} {problem}")
            canonical.append(os.path.realpath(root))
        if not canonical:
            raise ValueError("no path roots given")
        self._roots = tuple(dict.fromkeys(canonical))

    @property
    def roots(self) -> tuple[str, ...]:
        """The canonical roots, in the order given (the first resolves relative paths)."""
        return self._roots

    def violation(self, value: object) -> str | None:
        """None when ``value`` is a path inside one of the roots, else why not."""
        if not isinstance(value, str):
            return f"path is not a string but {type(value).__name__}"
        problem = _text_problem(value)
        if problem is not None:
            return f"path {excerpt(value)} {problem}"
        try:
            resolved = os.path.realpath(os.path.join(self._roots[0], value))
        except (OSError, ValueError):
            return f"path {excerpt(value)} cannot be resolved"
        for root in self._roots:
            if os.path.commonpath((root, resolved)) == root:
                return None
        return f"path {excerpt(value)} is outside the allowed roots"


def _text_problem(value: str) -> str | None:
    """Why ``value`` is refused as a path on its text alone, or None."""
    if not value:
        return "is empty"
    if len(value) > MAX_PATH_LENGTH:
        return f"is longer than {MAX_PATH_LENGTH} characters"
    if "\x00" in value:
        return "contains a NUL byte"
    if not value.isprintable():
        bad = next(char for char in value if not char.isprintable())
        return f"contains the control or invisible character U+{ord(bad):04X}"
    if "\\" in value:
        return "contains a backslash"
    problem = _read_otherwise(value.encode())
    if problem is not None:
        return problem
    return _encoding_problem(value) if "%" in value else None


def _read_otherwise(text: bytes) -> str | None:
    """Why a tool may read ``text`` as something other than a path: bytes that are not UTF-8 (a
    tool may read them as Latin-1, where ``\xa0`` is a space), a control or invisible character,
    a character Unicode compatibility normalisation (NFKC, as a tool or filesystem may apply it)
    turns into a dot, separator or other special one (``\uff0e\uff0e\uff0f`` is ``../``),
    whitespace at either end (it may strip it, Unicode spaces included), a leading ``~`` (a home
    directory) or URI scheme (``file:///etc/passwd``)."""
    try:
        shown = text.decode("utf-8")
    except UnicodeDecodeError:
        return "holds bytes that are not UTF-8"
    if not shown.isprintable():
        return "contains a control or invisible character"
    if not shown.isascii():
        folded = unicodedata.normalize("NFKC", shown)
        problem = _folded_problem(shown, folded) if folded != shown else None
        if problem is not None:
            return problem
    if shown != shown.strip():
        return "begins or ends with whitespace, which a tool may strip"
    if text.startswith(b"~"):
        return "begins with '~', which a tool may expand to a home directory"
    if _SCHEME.match(text):
        return "begins with a URI scheme: give a plain path (a name with a colon as ./name)"
    return None


def _folded_problem(shown: str, folded: str) -> str | None:
    """Why ``shown`` is refused for what Unicode compatibility normalisation (NFKC) makes of it:
    a separator or a ``.`` or ``..`` component it did not have, or text refused as it stands
    (a scheme, a leading ``~``, percent-escapes of a separator). A look-alike in the middle of a
    name (``report\uff5e1.txt``) changes nothing a tool would read differently."""
    if any(folded.count(char) > shown.count(char) for char in "/\\"):
        return "holds a look-alike of a separator, which a tool may fold into one"
    dots = {".", ".."}
    if sum(part in dots for part in folded.split("/")) > sum(part in dots for part in shown.split("/")):
        return "holds a look-alike of a '.' or '..' component, which a tool may fold into one"
    problem = _read_otherwise(folded.encode()) or (_encoding_problem(folded) if "%" in folded else None)
    return None if problem is None else f"{problem} (read with its look-alikes folded, NFKC)"


def _encoding_problem(value: str) -> str | None:
    """Why ``value`` is refused for what its percent-escapes decode to, however often a tool
    decodes them: a round that brings in a dot, separator or NUL, or a disguised spelling of one,
    or makes it begin with ``~`` or a URI scheme; or more rounds than `_DECODINGS` (no path is
    encoded that often but to hide something)."""
    text = value.encode()
    for _ in range(_DECODINGS + 1):  # the last round only shows the text has stopped changing
        decoded = unquote_to_bytes(text)
        if _DISGUISED.search(decoded) or any(decoded.count(char) > text.count(char) for char in _SPECIAL):
            return "contains a percent-encoded separator, dot or NUL"
        problem = _read_otherwise(decoded)
        if problem is not None:
            return f"{problem} (percent-encoded)"
        if decoded == text:
            return None
        text = decoded
    return f"is percent-encoded more than {_DECODINGS} times over"
