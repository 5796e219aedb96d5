"""OAuth scopes by RFC 6749 section 3.3, parsed strictly, and an explicit scope hierarchy.

    scope       = scope-token *( SP scope-token )
    scope-token = 1*( %x21 / %x23-5B / %x5D-7E )

Only a single ASCII space separates tokens. Tabs, newlines, non-breaking or other Unicode
spaces, quotes, backslashes and control characters are errors, never separators: a lax
``str.split()`` would turn ``"files:read\\u00a0admin"`` into two grants. Scope hierarchy comes
only from a map the server author writes (``files:write`` implies ``files:read`` when they
say so); nothing is inferred from the shape of a scope string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from mcp_guard.memo import remember

__all__ = [
    "MAX_SCOPES",
    "MAX_SCOPE_TOKEN_LENGTH",
    "SCOPE_TOKEN_PATTERN",
    "ScopeError",
    "ScopeHierarchy",
    "check_scope_token",
    "format_scope",
    "parse_scope",
    "scope_set",
]

MAX_SCOPE_TOKEN_LENGTH = 256
"""Longest scope token accepted; real scopes are short, and the cap bounds the work per token."""

MAX_SCOPES = 256
"""Most scope tokens accepted in one scope value."""

SCOPE_TOKEN_PATTERN = r"[\x21\x23-\x5b\x5d-\x7e]+"
"""RFC 6749 ``scope-token = 1*( %x21 / %x23-5B / %x5D-7E )``, as a regular expression."""

_SCOPE_TOKEN = re.compile(SCOPE_TOKEN_PATTERN)
_SCOPE = re.compile(f"{SCOPE_TOKEN_PATTERN}(?: {SCOPE_TOKEN_PATTERN})*")


class ScopeError(ValueError):
    """A scope value that does not follow the RFC 6749 grammar."""


def check_scope_token(token: object) -> str:
    """Return ``token`` when it is one valid scope-token, else raise `ScopeError` saying why."""
    if not isinstance(token, str):
        raise ScopeError(f"a scope must be a string, not {type(token).__name__}")
    if not token:
        raise ScopeError("a scope must not be empty")
    if len(token) > MAX_SCOPE_TOKEN_LENGTH:
        raise ScopeError(f"a scope is longer than {MAX_SCOPE_TOKEN_LENGTH} characters")
    if _SCOPE_TOKEN.fullmatch(token) is None:
        bad = next(ch for ch in token if _SCOPE_TOKEN.fullmatch(ch) is None)
        raise ScopeError(
            f"scope {ascii(token)[:80]} contains {bad!a}; RFC 6749 allows only printable ASCII "
            "without space, '\"' or '\\'"
        )
    return token


def parse_scope(value: str) -> frozenset[str]:
    """Parse a space-delimited scope string strictly.

    The empty string is no scopes (some authorization servers send ``scope: ""``). Leading,
    trailing or doubled spaces are errors, as is any other whitespace. Every token a client
    holds carries the same few scope strings, so valid ones are remembered (a bounded set).
    """
    parsed = _PARSED.get(value) if type(value) is str else None
    if parsed is not None:
        return parsed
    if not isinstance(value, str):
        raise ScopeError(f"a scope value must be a string, not {type(value).__name__}")
    if not value:
        return frozenset()
    tokens = value.split(" ")
    if len(tokens) > MAX_SCOPES:
        raise ScopeError(f"more than {MAX_SCOPES} scopes in one value")
    if _SCOPE.fullmatch(value) is None or max(map(len, tokens)) > MAX_SCOPE_TOKEN_LENGTH:
        for token in tokens:  # find, and name, what is wrong
            if not token:
                raise ScopeError("scopes must be separated by exactly one space, with none at either end")
            check_scope_token(token)
    parsed = frozenset(tokens)
    if type(value) is str and len(value) <= _REMEMBERED_LENGTH:  # a subclass could answer for other strings
        remember(_PARSED, value, parsed, _PARSED_LIMIT)
    return parsed


_PARSED: dict[str, frozenset[str]] = {}
_PARSED_LIMIT = 1024
_REMEMBERED_LENGTH = 512
"""Longest scope string remembered: real ones are short, and the bound caps the memo's memory."""


def scope_set(scopes: str | Iterable[str] | None) -> frozenset[str]:
    """Normalise what an author writes: a space-delimited string, or an iterable of tokens."""
    if scopes is None:
        return frozenset()
    if isinstance(scopes, str):
        return parse_scope(scopes)
    tokens = list(scopes)
    if len(tokens) > MAX_SCOPES:
        raise ScopeError(f"more than {MAX_SCOPES} scopes in one value")
    return frozenset(check_scope_token(token) for token in tokens)


def format_scope(scopes: Iterable[str]) -> str:
    """The canonical scope string: sorted tokens joined by single spaces."""
    return " ".join(sorted(scopes))


class ScopeHierarchy:
    """Which scopes a granted scope implies, from an explicit map only.

    ``ScopeHierarchy({"files:write": ["files:read"], "files:admin": ["files:write"]})`` makes
    ``files:admin`` imply both others. The closure is computed once; `expand` is memoised per
    distinct granted set, so the per-call cost is one dict lookup.
    """

    __slots__ = ("_closure", "_memo")

    _MEMO_LIMIT = 4096

    def __init__(self, implies: Mapping[str, str | Iterable[str]] | None = None) -> None:
        direct = {check_scope_token(scope): scope_set(implied) for scope, implied in (implies or {}).items()}
        self._closure: dict[str, frozenset[str]] = {scope: _reachable(scope, direct) for scope in direct}
        self._memo: dict[frozenset[str], frozenset[str]] = {}

    def implied_by(self, scope: str) -> frozenset[str]:
        """Every scope that ``scope`` implies, itself excluded."""
        return self._closure.get(scope, frozenset())

    def expand(self, granted: frozenset[str]) -> frozenset[str]:
        """``granted`` plus everything it implies."""
        expanded = self._memo.get(granted)
        if expanded is None:
            expanded = granted.union(*(self._closure.get(scope, ()) for scope in granted))
            remember(self._memo, granted, expanded, self._MEMO_LIMIT)
        return expanded


def _reachable(start: str, direct: Mapping[str, frozenset[str]]) -> frozenset[str]:
    seen: set[str] = set()
    pending = list(direct.get(start, ()))
    while pending:
        scope = pending.pop()
        if scope not in seen:
            seen.add(scope)
            pending.extend(direct.get(scope, ()))
    seen.discard(start)
    return frozenset(seen)
