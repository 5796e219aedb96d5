"""RFC 6749 scope grammar, strictly; explicit hierarchy only."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_guard import scopes
from mcp_guard.scopes import (
    MAX_SCOPE_TOKEN_LENGTH,
    MAX_SCOPES,
    ScopeError,
    ScopeHierarchy,
    check_scope_token,
    format_scope,
    parse_scope,
    scope_set,
)

SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
token_chars = st.sampled_from([chr(c) for c in (0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F))])
scope_tokens = st.text(token_chars, min_size=1, max_size=40)


def test_parses_single_space_separated_tokens() -> None:
    assert parse_scope("files:read files:write openid") == {"files:read", "files:write", "openid"}


def test_empty_string_is_no_scopes() -> None:
    assert parse_scope("") == frozenset()


@pytest.mark.parametrize(
    "value",
    [
        "a  b",  # doubled space
        " a",  # leading space
        "a ",  # trailing space
        "a\tb",  # tab
        "a\nb",  # newline
        "a\u00a0b",  # non-breaking space
        "a\u2003b",  # em space
        "a\u3000b",  # ideographic space
        'a"b',  # quote
        "a\\b",  # backslash
        "a\x00b",  # NUL
        "a\x7fb",  # DEL
        "files:r\u00e9ad",  # non-ASCII letter
        "\uff46\uff49\uff4c\uff45\uff53",  # full-width forms
        "a\u200bb",  # zero-width space
        " ",
    ],
)
def test_rejects_anything_outside_the_grammar(value: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(value)


def test_error_names_the_offending_character() -> None:
    with pytest.raises(ScopeError, match=r"\\xa0"):
        check_scope_token("files:read\u00a0admin")


def test_rejects_non_strings_and_oversized_values() -> None:
    with pytest.raises(ScopeError):
        parse_scope(["a"])  # type: ignore[arg-type]
    with pytest.raises(ScopeError):
        check_scope_token(7)
    with pytest.raises(ScopeError, match="longer"):
        check_scope_token("a" * (MAX_SCOPE_TOKEN_LENGTH + 1))
    with pytest.raises(ScopeError, match="more than"):
        parse_scope(" ".join(f"s{i}" for i in range(MAX_SCOPES + 1)))
    with pytest.raises(ScopeError, match="more than"):
        scope_set([f"s{i}" for i in range(MAX_SCOPES + 1)])


def test_scope_set_accepts_strings_and_iterables_strictly() -> None:
    assert scope_set("a b") == {"a", "b"}
    assert scope_set(["a", "b"]) == {"a", "b"}
    assert scope_set(None) == frozenset()
    with pytest.raises(ScopeError):
        scope_set(["a b"])  # one list item may not hide two scopes


@given(st.sets(scope_tokens, max_size=20))
def test_format_then_parse_round_trips(tokens: set[str]) -> None:
    assert parse_scope(format_scope(tokens)) == tokens


@given(st.text(max_size=60))
def test_random_text_parses_only_into_grammatical_tokens(value: str) -> None:
    try:
        parsed = parse_scope(value)
    except ScopeError:
        return
    assert all(SCOPE_TOKEN.fullmatch(token) for token in parsed)
    assert format_scope(parsed) == " ".join(sorted(value.split(" "))) if value else parsed == frozenset()


def test_hierarchy_comes_only_from_the_explicit_map() -> None:
    hierarchy = ScopeHierarchy({"files:admin": ["files:write"], "files:write": "files:read"})
    assert hierarchy.expand(frozenset({"files:admin"})) == {"files:admin", "files:write", "files:read"}
    assert hierarchy.expand(frozenset({"files:write"})) == {"files:write", "files:read"}
    assert hierarchy.expand(frozenset({"files:read"})) == {"files:read"}
    # nothing is inferred from the shape of a scope
    assert ScopeHierarchy().expand(frozenset({"files:write"})) == {"files:write"}


def test_hierarchy_tolerates_cycles_and_validates_its_map() -> None:
    hierarchy = ScopeHierarchy({"a": "b", "b": "a"})
    assert hierarchy.expand(frozenset({"a"})) == {"a", "b"}
    assert hierarchy.implied_by("a") == {"b"}
    with pytest.raises(ScopeError):
        ScopeHierarchy({"files write": "files:read"})
    with pytest.raises(ScopeError):
        ScopeHierarchy({"files:write": "files:read\tx"})


def test_valid_scope_strings_are_remembered_and_invalid_ones_never() -> None:
    first = parse_scope("files:read notes:read")
    assert parse_scope("files:read notes:read") is first
    for _ in range(2):
        with pytest.raises(ScopeError):
            parse_scope("files:read  notes:read")
    for index in range(3000):
        assert parse_scope(f"s{index} t{index}") == {f"s{index}", f"t{index}"}
    assert len(scopes._PARSED) <= scopes._PARSED_LIMIT
    assert parse_scope("files:read notes:read") == first


def test_only_plain_short_scope_strings_are_remembered() -> None:
    class Folded(str):
        __slots__ = ()

        def __hash__(self) -> int:
            return hash(self.lower())

        def __eq__(self, other: object) -> bool:
            return isinstance(other, str) and self.lower() == other.lower()

    assert parse_scope(Folded("Files:Admin")) == {"Files:Admin"}
    assert parse_scope("files:admin") == {"files:admin"}  # never answered by the look-alike
    long = " ".join(f"scope-{index:04d}" for index in range(60))
    assert len(long) > scopes._REMEMBERED_LENGTH
    assert len(parse_scope(long)) == 60
    assert long not in scopes._PARSED
