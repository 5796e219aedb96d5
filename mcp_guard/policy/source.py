"""Reading a policy document's text: TOML or YAML into plain data, with the line of every key.

The line map lets each validation error point at the line that caused it. YAML is read with
PyYAML's safe loader (the ``yaml`` extra); documents with aliases, merge keys (``<<``) or
duplicate keys are refused, since an alias can multiply a small file into a huge one, and a
duplicate key, or a key a merge also gives, silently drops a rule or a setting. So are the
YAML 1.1 booleans spelled ``yes``, ``no``, ``on`` or ``off``: ``enum: [se, no, dk]`` would hold
the boolean false, not the country code; and its octal and base-60 numbers, for the same
reason: ``enum: [0755]`` would hold 493, ``maximum: 1:30`` 90. Keys are plain scalars, and
tags other than the core schema's (``!Ref``, ``!!binary``, ``!!python/...``) are refused. TOML
is read with the standard library.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_NESTING", "MAX_POLICY_BYTES", "Lines", "SourceError", "parse_source"]

MAX_POLICY_BYTES = 32 << 20
"""Largest policy document read: room for tens of thousands of rules, and a bound on a mistake."""

MAX_NESTING = 32
"""Deepest nesting of tables and arrays in a policy document (the schema needs six)."""

_TOO_DEEP = f"the document nests tables or arrays deeper than {MAX_NESTING} levels"
_CORE = "tag:yaml.org,2002:"
_MERGE = _CORE + "merge"
_BOOL = _CORE + "bool"
_NUMBERS = (_CORE + "int", _CORE + "float")
_SCALAR_TAGS = frozenset(_CORE + name for name in ("str", "int", "float", "bool", "null", "timestamp"))
"""The tags a policy's values may carry: the core schema's, and dates (refused, readably, later)."""
_COLLECTION_TAGS = frozenset({_CORE + "map", _CORE + "seq"})
_OCTAL = re.compile(r"[-+]?0[0-9_]+")

Path = tuple[str | int, ...]
Lines = dict[Path, int]


class SourceError(ValueError):
    """A policy document that cannot be read as TOML or YAML; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def parse_source(text: str, syntax: str) -> tuple[Any, Lines]:
    """The data in ``text`` (``syntax`` is ``"toml"`` or ``"yaml"``) and the line of each key path."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise SourceError(f"a policy document is at most {MAX_POLICY_BYTES} bytes")
    if syntax == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            found = re.search(r"line (\d+)", str(error))
            raise SourceError(f"not valid TOML: {error}", int(found.group(1)) if found else None) from None
        except RecursionError:
            raise SourceError(_TOO_DEEP) from None
        except ValueError as error:  # a value the parser accepts but Python cannot hold
            raise _unreadable(text, error) from None
        _check_depth(data)
        return data, _toml_lines(text)
    if syntax == "yaml":
        return _yaml(text)
    raise SourceError(f"unknown policy syntax {syntax!r}: use toml or yaml")


def _check_depth(data: object) -> None:
    """Refuse data nested deeper than a policy ever needs (walked without recursion)."""
    pending = [(data, 0)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_NESTING:
            raise SourceError(_TOO_DEEP)
        if isinstance(value, dict):
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)


def _yaml(text: str) -> tuple[Any, Lines]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - the yaml extra is installed with dev
        raise SourceError("YAML policies need PyYAML: pip install 'mcp-guard[yaml]'") from None
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            mark = event.start_mark
            if isinstance(event, yaml.AliasEvent):
                raise SourceError("YAML aliases (*name) are not allowed in a policy", mark.line + 1 if mark else None)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    raise SourceError(_TOO_DEEP, mark.line + 1 if mark else None)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise SourceError(f"not valid YAML: {error}", mark.line + 1 if mark else None) from None
    if root is None:
        return None, {}
    lines: Lines = {}
    for path, node in _walk(root, ()):
        lines.setdefault(path, node.start_mark.line + 1)
    try:
        return yaml.safe_load(text), lines
    except (ValueError, TypeError, AttributeError, yaml.YAMLError) as error:  # a date 2024-13-01, `!!str {}`
        raise _unreadable(text, error) from None


def _unreadable(text: str, error: Exception) -> SourceError:
    """The error for a value the syntax allows but Python cannot hold: most often an integer
    longer than Python converts from text (`sys.get_int_max_str_digits`), found with its line."""
    limit = sys.get_int_max_str_digits()
    found = re.search(rf"[0-9_]{{{limit + 1},}}", text) if limit else None
    if found is None:
        return SourceError(f"a value cannot be read: {error}")
    return SourceError(f"a number has more than {limit} digits", text.count("\n", 0, found.start()) + 1)


def _walk(node: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    import yaml

    yield path, node
    _check_node(node)
    if isinstance(node, yaml.MappingNode):
        keys: set[object] = set()
        for key, value in node.value:
            if key.tag == _MERGE:
                raise SourceError(
                    "YAML merge keys (<<) are not allowed in a policy: write the keys out", key.start_mark.line + 1
                )
            if not isinstance(key, yaml.ScalarNode):
                raise SourceError("a key must be plain text, not a list or a mapping", key.start_mark.line + 1)
            _check_node(key)
            if key.value in keys:
                raise SourceError(f"duplicate key {key.value!r}", key.start_mark.line + 1)
            keys.add(key.value)
            yield (*path, key.value), key
            yield from _walk(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _walk(item, (*path, index))


def _check_node(node: Any) -> None:
    """Refuse a tag outside the core schema or on the wrong kind of node (``!!float [1]``), and a
    YAML 1.1 boolean spelled as a word (``no``, ``on``) or number spelled in octal or base 60
    (``0755``, ``1:30``): its author may mean the text."""
    line = node.start_mark.line + 1
    collection = isinstance(node.value, list)
    if node.tag not in (_COLLECTION_TAGS if collection else _SCALAR_TAGS):
        raise SourceError(f"the YAML tag {node.tag!r} is not allowed here in a policy", line)
    if collection:
        return
    if node.tag == _BOOL and node.value.lower() not in ("true", "false"):
        raise SourceError(
            f"{node.value!r} reads as a YAML boolean: quote it ('{node.value}') for text, or write true or false", line
        )
    if node.tag in _NUMBERS and (":" in node.value or _OCTAL.fullmatch(node.value)):
        raise SourceError(
            f"{node.value!r} reads as a YAML 1.1 octal or base-60 number: quote it ('{node.value}') for text, "
            "or write the number in decimal",
            line,
        )


_HEADER = re.compile(r"\s*\[(\[?)([^\[\]]*)\]")
_KEY = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=""")
_PART = re.compile(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_\-]+)""")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _toml_lines(text: str) -> Lines:
    """The line of each table header and key, by a line scan.

    Sub-tables and arrays of tables inside an array of tables (``[rules.limit]``,
    ``[[rules.arguments]]``) belong to its latest entry. Lines inside multi-line strings are
    skipped; keys inside multi-line values or inline tables are attributed to the line of the
    key that holds them.
    """
    lines: Lines = {}
    table: Path = ()
    latest: dict[Path, int] = {}  # each array of tables, by resolved path: its latest index
    depth = 0  # brackets a multi-line value leaves open
    quote: str | None = None  # the delimiter of an open multi-line string
    for number, line in enumerate(text.splitlines(), 1):
        if quote is not None:
            if line.count(quote) % 2:
                quote = None
            continue
        header = _HEADER.match(line) if depth == 0 else None
        if header:
            parts = _parts(header.group(2))
            if header.group(1):
                array = (*_resolved(parts[:-1], latest), *parts[-1:])
                latest[array] = latest.get(array, -1) + 1
                table = (*array, latest[array])
            else:
                table = _resolved(parts, latest)
            lines.setdefault(table, number)
            continue
        if depth == 0 and (key := _KEY.match(line)):
            lines.setdefault((*table, *_parts(key.group(1))), number)
        code = _STRINGS.sub("", line.split("#", 1)[0]) if '"""' not in line and "'''" not in line else line
        for delimiter in ('"""', "'''"):
            if line.count(delimiter) % 2:
                quote = delimiter
                code = line.split(delimiter, 1)[0]
        depth = max(0, depth + code.count("[") + code.count("{") - code.count("]") - code.count("}"))
    return lines


def _resolved(parts: tuple[str, ...], latest: dict[Path, int]) -> Path:
    """A dotted table name as a path, each array of tables it passes through at its latest entry."""
    path: Path = ()
    for part in parts:
        path = (*path, part)
        if path in latest:
            path = (*path, latest[path])
    return path


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(next(group for group in match.groups() if group is not None) for match in _PART.finditer(dotted))
