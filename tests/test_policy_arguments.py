"""Argument constraints: exact JSON types, ranges, lengths, enumerations, patterns, sizes, paths
and hosts; contradictions refused when built; any input answered without raising or hanging."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.policy.arguments import MAX_DEPTH, ArgumentConstraint
from mcp_guard.policy.regex import MAX_SUBJECT_LENGTH


def check(constraint: ArgumentConstraint, value: Any) -> str | None:
    return constraint.violation({constraint.argument: value})


def test_types_are_exact_json_types() -> None:
    kinds: dict[str, set[type]] = {
        "string": {str},
        "integer": {int},
        "number": {int, float},
        "boolean": {bool},
        "array": {list},
        "object": {dict},
        "null": {type(None)},
    }
    values = ["", "x", 0, -5, 10**30, 1.5, True, False, [], [1, "a"], {}, {"a": [1]}, None]
    for name, types in kinds.items():
        constraint = ArgumentConstraint("v", type=name)  # type: ignore[arg-type]
        for value in values:
            assert (check(constraint, value) is None) == (type(value) in types), (name, value)
    assert check(ArgumentConstraint("v", type="integer"), True) == "argument 'v': must be an integer, not a boolean"
    assert check(ArgumentConstraint("v", type="integer"), 1.0) == "argument 'v': must be an integer, not a number"
    assert check(ArgumentConstraint("v", type="number"), False) == "argument 'v': must be a number, not a boolean"


def test_ranges_apply_to_finite_numbers_only() -> None:
    limit = ArgumentConstraint("limit", type="integer", minimum=1, maximum=100)
    assert check(limit, 1) is None and check(limit, 100) is None
    assert check(limit, 0) == "argument 'limit': must be at least 1"
    assert check(limit, 101) == "argument 'limit': must be at most 100"
    assert check(limit, 10**400) == "argument 'limit': must be at most 100"
    ratio = ArgumentConstraint("ratio", minimum=0, maximum=0.5)
    assert check(ratio, 0.25) is None and check(ratio, 0) is None
    for value in (math.nan, math.inf, -math.inf):
        assert check(ratio, value) == "argument 'ratio': must be a finite number"
    for value in (True, "0.1", [0.1], None):
        assert check(ratio, value) == "argument 'ratio': must be a number"


def test_lengths_count_characters_items_and_keys() -> None:
    sized = ArgumentConstraint("v", min_length=1, max_length=2)
    for value in ("ab", "\U0001f600", [1], {"a": 1, "b": 2}):
        assert check(sized, value) is None, value
    assert check(sized, "") == "argument 'v': must be at least 1 characters long"
    assert check(sized, "abc") == "argument 'v': must be at most 2 characters long"
    assert check(sized, [1, 2, 3]) == "argument 'v': must have at most 2 items"
    assert check(sized, {}) == "argument 'v': must have at least 1 keys"
    assert check(sized, 12) is not None and check(sized, None) is not None


def test_enumerations_are_exact_and_type_sensitive() -> None:
    mode = ArgumentConstraint("mode", enum=("read", 1, True, None, 2.5))
    for value in ("read", 1, True, None, 2.5):
        assert check(mode, value) is None, value
    for value in ("READ", "read ", 1.0, False, 0, "1", 2, [1], {"read": 1}):
        message = check(mode, value)
        assert message is not None and message.startswith("argument 'mode': must be one of 'read', 1, True"), value
    assert check(ArgumentConstraint("n", enum=(1,)), True) is not None


def test_patterns_match_whole_strings_up_to_a_cap() -> None:
    name = ArgumentConstraint("name", type="string", pattern=r"[a-z0-9_-]{1,64}")
    assert check(name, "report_2024") is None
    assert check(name, "report 2024") == "argument 'name': does not match the pattern '[a-z0-9_-]{1,64}'"
    assert check(name, "a" * 65) is not None  # fullmatch, not search
    anything = ArgumentConstraint("text", pattern=r"[\s\S]*")
    assert check(anything, "x" * MAX_SUBJECT_LENGTH) is None
    message = check(anything, "x" * (MAX_SUBJECT_LENGTH + 1))
    assert message is not None and "too long to match a pattern" in message
    assert check(anything, 5) == "argument 'text': must be a string"


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=True))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=25,
)


@given(json_values)
def test_max_bytes_is_the_compact_ascii_json_size(value: Any) -> None:
    size = _json_size(value)
    assert check(ArgumentConstraint("v", max_bytes=size), value) is None
    if size > 1:
        message = check(ArgumentConstraint("v", max_bytes=size - 1), value)
        assert message == f"argument 'v': is larger than {size - 1} bytes as JSON"


def test_sizes_are_measured_with_an_early_exit() -> None:
    small = ArgumentConstraint("v", max_bytes=1000)
    for value in ("x" * 10_000_000, list(range(1_000_000)), {str(i): i for i in range(100_000)}, [["x" * 600] * 2]):
        assert check(small, value) == "argument 'v': is larger than 1000 bytes as JSON"
    assert (
        check(ArgumentConstraint("v", max_bytes=10**9), 10**5000)
        == "argument 'v': is larger than 1000000000 bytes as JSON"
    )
    assert check(ArgumentConstraint("v", max_bytes=10**9), [10**5000]) is not None


def _nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return outer


def test_nesting_is_bounded_without_recursion() -> None:
    plain = ArgumentConstraint("v")
    assert check(plain, _nested(MAX_DEPTH)) is None
    assert check(plain, _nested(MAX_DEPTH + 1)) == f"argument 'v': is nested deeper than {MAX_DEPTH} levels"
    assert check(plain, _nested(100_000)) is not None
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert check(plain, cyclic) is not None
    assert check(plain, {"a": {"b": _nested(MAX_DEPTH)}}) is not None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({1: "a"}, "object key that is not a string"),
        ({None: 1}, "object key that is not a string"),
        (b"bytes", "not a JSON value but bytes"),
        (bytearray(b"x"), "not a JSON value but bytearray"),
        ((1, 2), "not a JSON value but tuple"),
        ({1, 2}, "not a JSON value but set"),
        (object(), "not a JSON value but object"),
        ([1, b"x"], "not JSON (bytes)"),
        ({"a": [math.nan]}, "not finite"),
        (math.inf, "must be a finite number"),
    ],
)
def test_values_that_are_not_json_are_refused(value: Any, problem: str) -> None:
    message = check(ArgumentConstraint("v"), value)
    assert message is not None and problem in message


def test_absent_arguments_pass_unless_required() -> None:
    assert ArgumentConstraint("v", type="integer").violation({}) is None
    assert ArgumentConstraint("v", required=True).violation({}) == "argument 'v' is required"
    assert ArgumentConstraint("v", required=True).violation({"v": None}) is None


def test_dotted_paths_read_nested_objects() -> None:
    depth = ArgumentConstraint("options.depth", type="integer", maximum=3, required=True)
    assert depth.violation({"options": {"depth": 2}}) is None
    assert depth.violation({"options": {"depth": 9}}) == "argument 'options.depth': must be at most 3"
    assert depth.violation({"options": {}}) == "argument 'options.depth' is required"
    assert depth.violation({}) == "argument 'options.depth' is required"
    assert depth.violation({"options": "deep"}) == "argument 'options.depth': 'options' must be an object"
    assert depth.violation({"options": [{"depth": 1}]}) is not None
    three = ArgumentConstraint("a.b.c", enum=("x",))
    assert three.violation({"a": {"b": {"c": "x"}}}) is None
    assert three.violation({"a": {"b": 5}}) == "argument 'a.b.c': 'a.b' must be an object"
    assert three.violation({"a.b.c": "y"}) is None  # the dot separates keys


class _Unreadable(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("no")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no")

    def __len__(self) -> int:
        return 1


def test_arguments_that_cannot_be_read_are_refused() -> None:
    constraint = ArgumentConstraint("v")
    assert constraint.violation(_Unreadable()) == "argument 'v': the arguments could not be read"
    assert constraint.violation(None) is not None  # type: ignore[arg-type]
    assert constraint.violation({}) is None


def test_paths_must_stay_inside_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    path = ArgumentConstraint("path", type="string", required=True, path_roots=(str(root),))
    assert check(path, str(root / "a.txt")) is None
    assert check(path, "a.txt") is None
    for value in (str(root / ".." / "x"), str(root / "out" / "x"), "a%2f..%2f..%2fx", "a\x00b", "x" * 10_000_000):
        message = check(path, value)
        assert message is not None and message.startswith("argument 'path': path ") and len(message) < 200
    assert check(path, 5) == "argument 'path': must be a string, not an integer"


def test_urls_must_have_an_allowed_host() -> None:
    url = ArgumentConstraint("url", hosts=("docs.example.com", "*.python.org"), schemes=("https", "http"))
    assert check(url, "https://docs.example.com/a") is None
    assert check(url, "http://peps.python.org/") is None
    for value in ("https://python.org/", "ftp://docs.example.com/", "https://docs.example.com@evil.com/", ["x"]):
        assert check(url, value) is not None, value


@pytest.mark.parametrize(
    ("settings_", "problem"),
    [
        ({"minimum": 5, "maximum": 1}, "minimum 5 is above maximum 1"),
        ({"min_length": 3, "max_length": 1}, "min_length 3 is above max_length 1"),
        ({"min_length": -1}, "min_length must be a whole number"),
        ({"max_bytes": -5}, "max_bytes must be a whole number"),
        ({"max_bytes": 0}, "max_bytes must be at least 1"),
        ({"max_length": True}, "max_length must be a whole number"),
        ({"minimum": math.nan}, "minimum must be a finite number"),
        ({"maximum": math.inf}, "maximum must be a finite number"),
        ({"minimum": True}, "minimum must be a number"),
        ({"type": "integer", "minimum": 1.2, "maximum": 1.8}, "no integer lies between 1.2 and 1.8"),
        ({"type": "string", "minimum": 1}, "type 'string' and a range contradict"),
        ({"type": "integer", "pattern": "[0-9]+"}, "type 'integer' and a pattern contradict"),
        ({"type": "boolean", "max_length": 3}, "type 'boolean' and a length contradict"),
        ({"minimum": 0, "max_length": 3}, "a range and a length contradict"),
        ({"minimum": 0, "hosts": ("a.com",)}, "a range and hosts contradict"),
        ({"type": "array", "path_roots": ("/srv",)}, "type 'array' and path_roots contradict"),
        ({"path_roots": ("/srv",), "hosts": ("a.com",)}, "path_roots and hosts cannot both apply"),
        ({"schemes": ("http",)}, "schemes apply only together with hosts"),
        ({"type": "text"}, "unknown type 'text'"),
        ({"pattern": "(a+)+"}, "can move into the next repetition"),
        ({"pattern": "(unclosed"}, "invalid regular expression"),
        ({"path_roots": ("relative",)}, "is not absolute"),
        ({"path_roots": "/srv"}, "path_roots must be a collection of values, not one string"),
        ({"enum": "ro"}, "enum must be a collection of values, not one string"),
        ({"hosts": ("*.com",)}, "wildcard on a top-level domain"),
        ({"enum": ()}, "enum is empty"),
        ({"enum": ([1],)}, "enum value of type an array"),
        ({"enum": (math.nan,)}, "must be a finite number"),
        ({"enum": (5,), "minimum": 10}, "enum value 5 contradicts the other settings: must be at least 10"),
        ({"enum": ("x",), "type": "integer"}, "enum value 'x' contradicts the other settings: must be an integer"),
        ({"enum": (True,), "type": "integer"}, "must be an integer, not a boolean"),
        ({"enum": ("abc",), "max_length": 2}, "must be at most 2 characters long"),
        ({"enum": ("ABC",), "pattern": "[a-z]+"}, "does not match the pattern"),
        ({"enum": ("http://a.com/",), "hosts": ("a.com",)}, "does not use an allowed scheme"),
        ({"enum": ("long string",), "max_bytes": 5}, "larger than 5 bytes"),
    ],
)
def test_contradictions_are_refused_when_built(settings_: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=r"^argument 'v': ") as refused:
        ArgumentConstraint("v", **settings_)
    assert problem in str(refused.value)


@pytest.mark.parametrize("argument", ["", "a..b", ".a", "a.", "x" * 257])
def test_bad_argument_paths_are_refused(argument: str) -> None:
    with pytest.raises(ValueError, match="argument path"):
        ArgumentConstraint(argument)


def test_constraints_are_frozen_values() -> None:
    first = ArgumentConstraint("v", type="integer", minimum=1, enum=(1, 2))
    second = ArgumentConstraint("v", type="integer", minimum=1, enum=(1, 2))
    assert first == second and hash(first) == hash(second)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.minimum = 5  # type: ignore[misc]
    assert "_regex" not in repr(first)


non_json = st.one_of(
    st.floats(),
    st.binary(max_size=5),
    st.sets(st.integers(), max_size=3),
    st.tuples(st.integers()),
    st.builds(object),
    st.integers(min_value=-(10**6000), max_value=10**6000),
)
anything = st.recursive(
    json_values | non_json,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=3), st.integers(), st.none()), children, max_size=4)
    ),
    max_leaves=15,
)
CONSTRAINTS = [
    ArgumentConstraint("v"),
    ArgumentConstraint("v", required=True, type="integer", minimum=-5, maximum=5),
    ArgumentConstraint("v", type="number", minimum=0),
    ArgumentConstraint("v", min_length=1, max_length=3, max_bytes=40),
    ArgumentConstraint("v", enum=("a", 1, 1.5, True, None)),
    ArgumentConstraint("v", type="string", pattern=r"[a-z]+(-[a-z]+)*", max_bytes=64),
    ArgumentConstraint("v.w", type="object", max_bytes=200),
    ArgumentConstraint("v", hosts=("example.com", "*.example.org")),
    ArgumentConstraint("v", path_roots=("/srv/data",)),
]


@settings(max_examples=300, deadline=None)
@given(anything)
def test_any_value_gets_a_short_answer(value: Any) -> None:
    for constraint in CONSTRAINTS:
        for arguments in ({"v": value}, {"v": {"w": value}}):
            message = constraint.violation(arguments)
            assert message is None or (isinstance(message, str) and len(message) < 300 and message.isascii())


@given(st.text())
def test_any_text_gets_a_short_answer(value: str) -> None:
    for constraint in CONSTRAINTS:
        message = check(constraint, value)
        assert message is None or (isinstance(message, str) and len(message) < 300 and message.isascii())
