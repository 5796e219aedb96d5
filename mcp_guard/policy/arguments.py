"""Constraints on one argument of a tool call: type, range, length, enumeration, pattern, size,
file-path roots and URL hosts.

Arguments arrive JSON-decoded, but the caller chooses them, so `ArgumentConstraint.violation`
never raises and its work is bounded on any input. Only exact JSON types count (dict with
string keys, list, str, int, float, bool, None); anything else is refused, and so are NaN and
the infinities. Containers are walked iteratively and refused past `MAX_DEPTH` levels of
nesting; a size is measured with an early exit; a string is length-capped before a pattern runs,
and patterns that can backtrack catastrophically are refused when the constraint is built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any, Final, Literal, TypeAlias

from mcp_guard.model import collection
from mcp_guard.policy.hosts import HostAllowlist
from mcp_guard.policy.paths import PathRoots
from mcp_guard.policy.regex import MAX_SUBJECT_LENGTH, compile_safe
from mcp_guard.text import excerpt

__all__ = ["MAX_DEPTH", "MISSING", "ArgumentConstraint", "ArgumentPath", "EnumValue", "JsonType"]

JsonType = Literal["string", "integer", "number", "boolean", "array", "object", "null"]
EnumValue = str | int | float | bool | None
_Kinds: TypeAlias = frozenset[type]
_Members: TypeAlias = frozenset[tuple[type, EnumValue]]

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a constrained argument."""

_MAX_PATH = 256
_CHOICES = 120
_MAX_INT_BITS = 14_000  # narrower ints stay under Python's 4300-digit limit on int-to-text conversion
MISSING: Final[Any] = object()
"""What `ArgumentPath.find` answers for an argument the call does not give."""

_JSON_TYPES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}
_KINDS: dict[str, _Kinds] = {name: frozenset({kind}) for kind, name in _JSON_TYPES.items()}
_KINDS["number"] = frozenset({int, float})
_ARTICLED: dict[str | None, str] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_SCALARS = frozenset({str, int, float, bool, type(None)})
_NUMBERS = frozenset({"integer", "number"})
_SIZED = frozenset({"string", "array", "object"})
_TEXT = frozenset({"string"})


class ArgumentPath:
    """A dotted path into a call's arguments (``message.to``), split and checked once.

    `find` answers the value there, `MISSING` when some key on the way is absent, or raises
    `ValueError` naming the part that is not an object (so a path through a string is refused,
    never silently taken as absent).
    """

    __slots__ = ("_key", "_nested", "text")

    def __init__(self, text: str) -> None:
        segments = _segments(text)
        self.text = text
        self._key = segments[0]
        self._nested = tuple((".".join(segments[:i]), segments[i]) for i in range(1, len(segments)))

    @property
    def root(self) -> str:
        """The top-level argument the path starts at."""
        return self._key

    def find(self, arguments: Mapping[str, Any]) -> Any:
        value = arguments.get(self._key, MISSING)
        for parent, key in self._nested:
            if value is MISSING:
                break
            if type(value) is not dict:
                raise ValueError(f"{parent!r} must be an object")
            value = value.get(key, MISSING)
        return value


@dataclass(frozen=True, slots=True)
class ArgumentConstraint:
    """What one argument, found by a dotted path (``"options.depth"``), must be.

    An absent argument passes unless ``required``. A range applies to numbers (never a bool),
    lengths to the characters of a string, the items of an array or the keys of an object.
    ``enum`` matches exactly and by type (``True`` is not ``1``, ``1`` is not ``1.0``). ``pattern``
    must match a whole string. ``max_bytes`` bounds the value's size as compact, ASCII-only JSON.
    ``path_roots`` and ``hosts`` require a path inside a root or a URL with an allowed host (see
    `PathRoots` and `HostAllowlist`). Path segments name object keys only; digits do not index
    arrays. Contradictory settings raise `ValueError` when the constraint is built.
    """

    argument: str
    type: JsonType | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    enum: tuple[EnumValue, ...] | None = None
    pattern: str | None = None
    max_bytes: int | None = None
    path_roots: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ("https",)

    _path: ArgumentPath = field(init=False, repr=False, compare=False)
    _kinds: _Kinds | None = field(init=False, repr=False, compare=False)
    _ranged: bool = field(init=False, repr=False, compare=False)
    _measured: bool = field(init=False, repr=False, compare=False)
    _textual: bool = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _paths: PathRoots | None = field(init=False, repr=False, compare=False)
    _hosts: HostAllowlist | None = field(init=False, repr=False, compare=False)
    _members: _Members | None = field(init=False, repr=False, compare=False)
    _longest: int = field(init=False, repr=False, compare=False)
    _choices: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        path = ArgumentPath(self.argument)
        for name in ("path_roots", "hosts", "schemes"):
            object.__setattr__(self, name, collection(getattr(self, name), f"argument {self.argument!r}: {name}"))
        if self.type is not None and self.type not in _KINDS:
            raise self._error(f"unknown type {self.type!r}; use one of {', '.join(_KINDS)}")
        self._check_range()
        self._check_sizes()
        self._check_compatible()
        setting = object.__setattr__
        setting(self, "_path", path)
        setting(self, "_kinds", None if self.type is None else _KINDS[self.type])
        setting(self, "_ranged", self.minimum is not None or self.maximum is not None)
        setting(self, "_measured", self.min_length is not None or self.max_length is not None)
        setting(self, "_textual", bool(self.pattern is not None or self.path_roots or self.hosts))
        try:
            setting(self, "_regex", None if self.pattern is None else compile_safe(self.pattern))
            setting(self, "_paths", PathRoots(self.path_roots) if self.path_roots else None)
            setting(self, "_hosts", HostAllowlist(self.hosts, self.schemes) if self.hosts else None)
        except ValueError as error:
            raise self._error(str(error)) from error
        self._set_enum()

    def violation(self, arguments: Mapping[str, Any]) -> str | None:
        """None when the call's arguments satisfy the constraint, else a short reason naming the argument."""
        try:
            value = self._path.find(arguments)
        except ValueError as error:
            return f"argument {self.argument!r}: {error}"
        except Exception:  # a mapping type of the caller's own that fails to read is refused, not raised
            return f"argument {self.argument!r}: the arguments could not be read"
        if value is MISSING:
            return f"argument {self.argument!r} is required" if self.required else None
        problem = self._problem(value)
        return None if problem is None else f"argument {self.argument!r}: {problem}"

    def _problem(self, value: Any) -> str | None:
        kind = type(value)
        if self._kinds is not None and kind not in self._kinds:
            return f"must be {_ARTICLED[self.type]}, not {_kind_name(kind)}"
        if kind is int or kind is float:
            return self._number_problem(value)
        if kind is str:
            return self._string_problem(value)
        if kind is list or kind is dict:
            return self._container_problem(value)
        if kind is bool or value is None:
            return self._literal_problem(value)
        return f"is not a JSON value but {_kind_name(kind)}"

    def _number_problem(self, value: float) -> str | None:
        if type(value) is float and not math.isfinite(value):
            return "must be a finite number"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {_number_text(self.minimum)}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {_number_text(self.maximum)}"
        problem = self._scalar_problem(value)
        if problem is not None:
            return problem
        if self.max_bytes is not None:
            size = _number_size(value)
            if size is None or size > self.max_bytes:
                return f"is larger than {self.max_bytes} bytes as JSON"
        return None

    def _scalar_problem(self, value: float | bool | None) -> str | None:
        """What a number, boolean or null breaks: a length or text rule, or the enumeration."""
        if self._measured:
            return "must be a string, an array or an object to have a length"
        if self._textual:
            return "must be a string"
        if self._members is not None and (type(value), value) not in self._members:
            return f"must be one of {self._choices}"
        return None

    def _string_problem(self, value: str) -> str | None:
        if self._ranged:
            return "must be a number"
        length = len(value)
        if self.min_length is not None and length < self.min_length:
            return f"must be at least {self.min_length} characters long"
        if self.max_length is not None and length > self.max_length:
            return f"must be at most {self.max_length} characters long"
        if self.max_bytes is not None and _string_size(value, self.max_bytes) > self.max_bytes:
            return f"is larger than {self.max_bytes} bytes as JSON"
        if self._members is not None and (length > self._longest or (str, value) not in self._members):
            return f"must be one of {self._choices}"
        if self._regex is not None:
            if length > MAX_SUBJECT_LENGTH:
                return f"is longer than {MAX_SUBJECT_LENGTH} characters, too long to match a pattern"
            if self._regex.fullmatch(value) is None:
                return f"does not match the pattern {excerpt(self._regex.pattern)}"
        if self._paths is not None:
            return self._paths.violation(value)
        if self._hosts is not None:
            return self._hosts.url_violation(value)
        return None

    def _container_problem(self, value: list[Any] | dict[Any, Any]) -> str | None:
        if self._ranged:
            return "must be a number"
        if self._textual:
            return "must be a string"
        if self._members is not None:
            return f"must be one of {self._choices}"
        count = len(value)
        unit = "items" if type(value) is list else "keys"
        if self.min_length is not None and count < self.min_length:
            return f"must have at least {self.min_length} {unit}"
        if self.max_length is not None and count > self.max_length:
            return f"must have at most {self.max_length} {unit}"
        return _walk(value, self.max_bytes)

    def _literal_problem(self, value: bool | None) -> str | None:
        if self._ranged:
            return "must be a number"
        problem = self._scalar_problem(value)
        if problem is not None:
            return problem
        if self.max_bytes is not None and (5 if value is False else 4) > self.max_bytes:
            return f"is larger than {self.max_bytes} bytes as JSON"
        return None

    def _check_range(self) -> None:
        for name in ("minimum", "maximum"):
            bound = getattr(self, name)
            if bound is None:
                continue
            if type(bound) not in (int, float):
                raise self._error(f"{name} must be a number, not {_kind_name(type(bound))}")
            try:
                finite = math.isfinite(bound)
            except OverflowError:
                finite = False
            if not finite:
                raise self._error(f"{name} must be a finite number")
        low, high = self.minimum, self.maximum
        if low is None or high is None:
            return
        if low > high:
            raise self._error(f"minimum {_number_text(low)} is above maximum {_number_text(high)}")
        if self.type == "integer" and math.ceil(low) > math.floor(high):
            raise self._error(f"no integer lies between {_number_text(low)} and {_number_text(high)}")

    def _check_sizes(self) -> None:
        for name in ("min_length", "max_length", "max_bytes"):
            size = getattr(self, name)
            if size is not None and (type(size) is not int or size < 0):
                raise self._error(f"{name} must be a whole number, at least 0")
        if self.max_bytes == 0:
            raise self._error("max_bytes must be at least 1: no JSON value is empty")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise self._error(f"min_length {self.min_length} is above max_length {self.max_length}")

    def _check_compatible(self) -> None:
        """Refuse settings that no single value can satisfy together."""
        if self.path_roots and self.hosts:
            raise self._error("path_roots and hosts cannot both apply: a value is a path or a URL")
        if self.schemes != ("https",) and not self.hosts:
            raise self._error("schemes apply only together with hosts")
        demands: list[tuple[str, frozenset[str | None]]] = []
        if self.type is not None:
            demands.append((f"type {self.type!r}", frozenset({self.type})))
        if self.minimum is not None or self.maximum is not None:
            demands.append(("a range", _NUMBERS))
        if self.min_length is not None or self.max_length is not None:
            demands.append(("a length", _SIZED))
        for name, given in (
            ("a pattern", self.pattern is not None),
            ("path_roots", self.path_roots),
            ("hosts", self.hosts),
        ):
            if given:
                demands.append((name, _TEXT))
        for index, (name, kinds) in enumerate(demands):
            for earlier, earlier_kinds in demands[:index]:
                if kinds.isdisjoint(earlier_kinds):
                    raise self._error(f"{earlier} and {name} contradict each other: no value satisfies both")

    def _set_enum(self) -> None:
        """Precompute the enumeration, refusing values the other settings would refuse anyway."""
        setting = object.__setattr__
        setting(self, "_members", None)
        setting(self, "_longest", 0)
        setting(self, "_choices", "")
        if self.enum is None:
            return
        setting(self, "enum", collection(self.enum, f"argument {self.argument!r}: enum"))
        if not self.enum:
            raise self._error("enum is empty: no value could pass")
        for entry in self.enum:
            if type(entry) not in _SCALARS:
                raise self._error(
                    f"enum value of type {_kind_name(type(entry))} is not a string, number, boolean or null"
                )
            problem = self._problem(entry)
            if problem is not None:
                raise self._error(f"enum value {_show(entry)} contradicts the other settings: {problem}")
        choices = ", ".join(_show(entry) for entry in self.enum)
        setting(self, "_members", frozenset((type(entry), entry) for entry in self.enum))
        setting(self, "_longest", max((len(entry) for entry in self.enum if type(entry) is str), default=0))
        setting(self, "_choices", choices if len(choices) <= _CHOICES else choices[: _CHOICES - 3] + "...")

    def _error(self, problem: str) -> ValueError:
        return ValueError(f"argument {self.argument!r}: {problem}")


def _segments(argument: object) -> tuple[str, ...]:
    """The keys of a dotted argument path, refusing empty ones."""
    if not isinstance(argument, str) or not argument:
        raise ValueError("an argument path must be a non-empty string")
    if len(argument) > _MAX_PATH:
        raise ValueError(f"argument path {excerpt(argument)} is longer than {_MAX_PATH} characters")
    segments = tuple(argument.split("."))
    if "" in segments:
        raise ValueError(f"argument path {excerpt(argument)} has an empty segment")
    return segments


def _walk(value: list[Any] | dict[Any, Any], budget: int | None) -> str | None:
    """Why a container is refused: a value that is not JSON, nesting deeper than `MAX_DEPTH`, or
    (given a ``budget``) more than that many bytes as JSON, found without encoding past the budget."""
    too_large = f"is larger than {budget} bytes as JSON"
    size = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind is list or kind is dict:
                if len(stack) > MAX_DEPTH:
                    return f"is nested deeper than {MAX_DEPTH} levels"
                size += len(item) + 1 if item else 2
                if kind is dict:
                    for key in item:
                        if type(key) is not str:
                            return "has an object key that is not a string"
                        if budget is not None:
                            size += _string_size(key, budget - size) + 1
                            if size > budget:
                                return too_large
                    stack.append(iter(item.values()))
                else:
                    stack.append(iter(item))
                if budget is not None and size > budget:
                    return too_large
                break
            if kind is str:
                if budget is not None:
                    size += _string_size(item, budget - size)
            elif kind is int or kind is float:
                if kind is float and not math.isfinite(item):
                    return "holds a number that is not finite"
                if budget is not None:
                    width = _number_size(item)
                    if width is None:
                        return "holds an integer too large for JSON"
                    size += width
            elif kind is bool or item is None:
                size += 5 if item is False else 4
            else:
                return f"holds a value that is not JSON ({_kind_name(kind)})"
            if budget is not None and size > budget:
                return too_large
        else:
            stack.pop()
    return None


def _string_size(text: str, room: int) -> int:
    """The size of ``text`` as an ASCII JSON string; past ``room``, a lower bound found without encoding."""
    if len(text) + 2 > room:
        return len(text) + 2
    return len(encode_basestring_ascii(text))


def _number_size(number: float) -> int | None:
    """The size of ``number`` as JSON, or None for an integer too wide to convert to text."""
    if type(number) is float:
        return len(repr(number))
    if int(number).bit_length() > _MAX_INT_BITS:
        return None
    return len(str(number))


def _number_text(number: float) -> str:
    if type(number) is int and abs(number) < 10**30:
        return str(number)
    try:
        return f"{number:.15g}"
    except OverflowError:
        return "a very large integer"


def _show(value: EnumValue) -> str:
    if isinstance(value, str):
        return excerpt(value)
    if type(value) is int or type(value) is float:
        return _number_text(value)
    return repr(value)


def _kind_name(kind: type) -> str:
    return _ARTICLED.get(_JSON_TYPES.get(kind)) or kind.__name__[:40]
