"""Patterns that can backtrack catastrophically are refused when compiled; common safe ones are not."""

from __future__ import annotations

import contextlib
import re
import string
import sys
import time
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.policy import regex
from mcp_guard.policy.regex import MAX_PATTERN_LENGTH, MAX_SUBJECT_LENGTH, UnsafePattern, compile_safe

OWASP_REDOS = [
    r"(a+)+$",
    r"([a-zA-Z]+)*",
    r"(a|aa)+",
    r"(a|a?)+",
    r"(.*a){20}",
    r"^(([a-z])+.)+[A-Z]([a-z])+$",
]

UNSAFE = [
    r"[a-z](?:(?=[a-z])?[a-z])*",  # an optional lookaround inside a repeat: exponential
    r"(?=x)??",
    r"(?=x){0,1}a",
    r"(?<!x)?a",
    r"(?:(?=a)(?!b))?a",
    r"(?:a(?=a)?)+",
    r"(?:\b|)" * 27 + "[a-z]b",  # the same optional nothing, written as alternatives
    r"(?:(?=a)|)a",
    r"(?:^|)a",
    "".join(rf"(?:\b|{chr(c)}?)" for c in range(0x3B1, 0x3B1 + 24)) + "z!",  # empty two ways, in a chain
    r"(?:\b|x)?a",
    r"(?:x?)?a",
    r"(?:|x?)a",
    r"(?:(?=\w)|x{0,1})a",
    r".*(?=(?=.*x))",  # a lookaround inside a lookaround hides its repeat
    r"(?:a(?=(?=.*b)))*b",
    r"[ab]*(?<=(?=[ab]*x)a)",
    r"(a+)+",  # nested unbounded quantifiers
    r"(a*)*",
    r"(?:a|b*)+",
    r"(a+){2,5}",  # a bounded outer repeat is still polynomial
    r"(a|ab)*",  # alternatives in a repeated group that match the same text
    r"(a|a)+",
    r"(ab|a)+",
    r"(.|a)*",
    r"(\w+\s?)*",
    r"(a?){20}",  # the classic (a?){n}a{n}
    r"\d+\d+",  # overlapping repeats in a row
    r".*.*",
    r"\d+\d*",
    r".*x.*",  # the middle can shift
    r"\S+@\S+",
    r"\d+(-\d+)?\d+",  # an optional middle does not separate
    r"[a-z]{0,255}[a-z]{0,255}",  # bounded repeats multiply too
    r"(/[^/]+)*(/[a-z]+)*",
    r"(?i)a+A+",  # case-insensitively the same letter
    r"(?:(?!.*x).)*",  # a lookaround that runs at every repetition
    "(?:a|)" * 24 + "a" * 24,  # an alternative that matches empty text is an optional part
    "(?:a|aa)" * 20 + "b",  # alternatives that start alike end at different places
    "(?:ab|[ab]b)-" * 7,  # alternatives that match the same text: 2 ways each, 128 in a row
    "(?:(?:ab|[ab]b)|x)?-" * 7,  # the same, nested and optional
    "(?:a|ab)(?:c|bc)d" * 7,  # "abc" two ways: the end of one part shifts into the next
    r"(?:[a-z]*(?:c|bc)-)+",  # two ways in each repetition
    r"(?:[a-z]*(?:c|bc)-){5}",
    r"(?:(?:ab|[ab]b)-)+",
    r"(?:(?:c|bc)-[a-z]*)+",  # the end of one repetition shifts into the next
    r"[a-z]*(?=[a-z]*(?=[a-z]*!))",  # a lookaround after a varying part runs at every step back
    r"x+(?:(?=x*y)z|w)",
    r"[A-Z][a-z]*(?: [A-Z]?[a-zA-Z][a-z]*)*",  # the middle shifts between repeats sharing no character
    r"(?:,[a-z]*[a-z0-9][0-9]*)*",
    r"(?:,[ab]*b[ab]a*)*",  # bba: a shift hands each part's character to the part after it
    "a?[ab]b?," * 30,  # no repeated group, but 2**30 ways to fail
    r"(?:,(?:[A-Z]?[a-zA-Z]|\d)[a-z]*)*",  # the same shift out of an alternative's end
    r"(?s)(?:[xa]{0,255}\.?[.-][+-]+_){2,}",
    r"[ab]*[ab]{500}",  # a long fixed count reruns at every step back
    r"[ab]*(?=(?:a|bc){4096})",
    r"(?:a(?!(?:a(?!(?:a|bc){4096})|bc){4096}))*",
    r"(?:(?=(?:(?=[ab]{64})[ab]){64})[ab]){64}",  # nested fixed lookaheads: 64**2 steps a try, 64**k at depth k
    r"[a-z]*(?:(?=(?:(?=[a-z]{64})[a-z]){64})[a-z]){64}",
    r"[a-z]*(?=[a-z]{64}[0-9]{64})",  # a long fixed lookaround reruns at every step back
]

SAFE = {
    r"[a-z0-9_-]{1,64}": (["abc_1-2"], ["", "ABC", "a" * 65]),
    r"^\d{4}-\d{2}-\d{2}$": (["2024-01-31"], ["2024-1-31", "2024-01-31\n"]),
    r"(foo|bar)": (["foo", "bar"], ["foobar", "baz"]),
    "(?:ab|[ab]b)-" * 6: (["ab-" * 6, "bb-" * 6], ["ab-" * 5 + "ab!"]),  # 64 ways: within the limit
    r"(?:https|http)://[a-z]+": (["https://a", "http://b"], ["htt://a"]),  # alike, but never the same text
    r"[a-z]+(?:ing|ed)": (["walked", "going"], ["walk"]),  # one shift: two ways at most
    r"(?>ab|[ab]b)-" * 8: (["ab-" * 8], ["ab-" * 7 + "ab!"]),  # an atomic group is matched one way
    "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-" * 3: (["Jan-Jun-Jul-"], ["Jan-Jun-Jux-"]),  # never alike
    "(?:" + "|".join(f"read_{index}" for index in range(70)) + ")": (["read_69", "read_7"], ["read_70"]),
    r"[^/]+(/[^/]+)*": (["a", "a/b/c"], ["/a", "a//b", "a/"]),
    r"[a-z]+(-[a-z]+)*": (["my-slug"], ["my--slug", "-x"]),
    r"[\w.+-]+@[\w-]+(\.[\w-]+)+": (["a.b+c@example.co.uk"], ["a@b", "@example.com"]),
    r"(\d{1,3}\.){3}\d{1,3}": (["192.168.0.1"], ["1.2.3", "1234.1.1.1"]),
    r"https://[a-z0-9.-]+(/.*)?": (["https://example.com/x?y"], ["http://example.com"]),
    r"\w+\s+\w+": (["hello world"], ["hello"]),
    r"(?i)[a-z]+(-[a-z]+)*": (["Hello-World"], ["hello_world"]),
    r"^(?!.*\.\.)[a-z.]+$": (["a.b.c"], ["a..b"]),
    r"(ab|cd)+": (["abcdab"], ["abc"]),
    r"(GET|POST|PUT) /[a-z]+": (["PUT /x"], ["PATCH /x"]),
    r"(?:https?)?x": (["httpsx", "x"], ["httpx1"]),
    r"(,\d+)*,\d+": ([",1,2,3"], [",1,", "1"]),
    r"(?:(?!--).)*": (["a-b-c"], ["a--b"]),
    r"\d+\.\d+": (["3.14"], ["3.", ".5"]),
    r"[a-z]{1,10}[0-9]{0,5}": (["abc123"], ["123"]),
    r"[a-z0-9]*[a-z][0-9]*": (["ab12"], ["12"]),
    r"[a-z]*@[a-z]*": (["a@b"], ["a@b@c"]),
    r"sha256:[0-9a-f]{64}": (["sha256:" + "0" * 64], ["sha256:" + "0" * 63]),
    r"[a-z]+-[0-9a-f]{64}": (["k-" + "a" * 64], ["k-" + "a" * 65]),
    r"(?:\w+\.)*\w+": (["a.b.c", "a"], ["a.", ".a", "a..b"]),  # a repetition ends with what the rest cannot match
    r"(?:/[\w.-]+)+/?": (["/a/b.c/"], ["a/b", "//"]),
    r"(?:0x)?[0-9a-fA-F]+": (["0x1F", "ff"], ["0x", "x1"]),
    r"(?:\d+h)?(?:\d+m)?(?:\d+s)?": (["1h30m", "45s", ""], ["1m1h", "h"]),
    r"(?:\d{4}[- ]?){3}\d{4}": (["1234 5678-9012 3456", "1234567890123456"], ["1234  5678 9012 3456"]),
    r"\{?[0-9a-fA-F]{8}(?:-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}\}?": (
        ["{12345678-1234-1234-1234-123456789abc}"],
        ["x"],
    ),
}


@pytest.mark.parametrize("pattern", OWASP_REDOS + UNSAFE)
def test_refuses_patterns_that_backtrack_catastrophically(pattern: str) -> None:
    with pytest.raises(UnsafePattern):
        compile_safe(pattern)


def accepted_and_matching(pattern: str, examples: tuple[list[str], list[str]]) -> None:
    """``pattern`` is accepted, and matches the first examples and none of the second."""
    compiled = compile_safe(pattern)
    matching, other = examples
    assert all(compiled.fullmatch(text) for text in matching)
    assert not any(compiled.fullmatch(text) for text in other)


@pytest.mark.parametrize("pattern", sorted(SAFE))
def test_accepts_common_safe_patterns(pattern: str) -> None:
    accepted_and_matching(pattern, SAFE[pattern])


def test_messages_name_the_construct_and_its_offset() -> None:
    with pytest.raises(UnsafePattern, match=r"can move into the next repetition.*'\(a\+\)\+' at offset 3"):
        compile_safe(r"^x-(a+)+$")
    with pytest.raises(UnsafePattern, match=r"in a row.*'\\d\+\\d\+' at offset 0"):
        compile_safe(r"\d+\d+")
    with pytest.raises(UnsafePattern, match=r"alternatives.*'\(a\|ab\)\*'"):
        compile_safe(r"(a|ab)*")


def test_nested_lookarounds_are_refused_before_their_cost_multiplies() -> None:
    """Each level of a fixed lookahead nested in a repeated one multiplies the work of one try by
    64; one level is accepted and cheap, the next is refused, however deep the nesting."""
    level = "[ab]{64}"
    for depth in range(1, 6):
        level = "(?:(?=" + level + ")[ab]){64}"
        if depth == 1:
            compiled = compile_safe(level)
            started = time.perf_counter()
            assert compiled.fullmatch("a" * 448) is None and compiled.match("a" * 127)
            assert time.perf_counter() - started < 0.1
        else:
            with pytest.raises(UnsafePattern, match="lookaround with a long or varying repeat"):
                compile_safe(level)


_TOGETHER = "lookarounds and fixed parts costing more than 64 steps together"

SPLIT_UP = {
    r"(?i)[a-zé]*" + r"[a-zé]{64}" * 16: "repeats in a row",  # one refused [a-zé]{1024}, in 16 parts
    r"[a-z]*(?=[a-z]{64})(?=[0-9]{64})": _TOGETHER,  # one refused (?=[a-z]{64}[0-9]{64}), in two
    r"(?i)[a-z]*" + r"(?=[a-z]{64})" * 76: _TOGETHER,
    r"(?i)(?:" + r"(?=[a-z]{64})" * 75 + r"[a-z])*": _TOGETHER,  # each repetition runs them all
    r"[a-z]*[a-z]{40}(?=[a-z]{40})": _TOGETHER,  # a fixed part and a lookaround add up too
    r"[a-z]*(?=[a-z]{40})[a-z]{40}": "repeats in a row",
    r"(?:[a-z]*[a-z]{30})?[a-z]{40}": "repeats in a row",  # inside the varying part and after it
    r"(?:[a-z]*(?=[a-z]{40})|x)(?=[a-z]{40})": _TOGETHER,
    r"(?:(?:(?=[a-z]{40})[a-z])?(?=[0-9]{40})[0-9])*": _TOGETHER,
}

WITHIN_THE_LIMIT = {
    r"(?i)[a-zé]*[a-zé]{64}": (["é" * 70], ["é" * 63]),
    r"[a-z]*[a-z]{32}[a-z]{32}": (["a" * 64], ["a" * 63]),
    r"[a-z]*(?=[a-z]{32})(?=[0-9]{32})": ([], ["a" * 64]),
    r"(?:(?=[a-z]{32})(?=[a-z]{32})[a-z])*": ([""], ["a" * 40]),
    r"[a-z]*(?=[a-z]{30})[a-z]{30}(?=\d{2})\d{2}": (["a" * 30 + "12"], ["a" * 29 + "12"]),
    r"(?i)[a-zé]*-" + r"[a-zé]{64}" * 15: (["ab-" + "é" * 960], ["ab-" + "é" * 959]),  # "-" stops the shift
    r"^" + r"(?=[a-z]{64})" * 10 + r"[a-z]*$": (["a" * 64], ["a" * 63]),  # at the start they run once
    r"[a-z]*-(?:(?=[a-z]{60})[0-9])*": (["ab-"], ["ab-1"]),
}


@pytest.mark.parametrize("pattern", sorted(SPLIT_UP))
def test_parts_that_run_again_add_up(pattern: str) -> None:
    """The work of one part refused for its cost is refused too when split into parts each within the limit."""
    with pytest.raises(UnsafePattern, match=re.escape(SPLIT_UP[pattern])):
        compile_safe(pattern)


@pytest.mark.parametrize("pattern", sorted(WITHIN_THE_LIMIT))
def test_parts_that_run_again_within_the_limit_are_accepted(pattern: str) -> None:
    accepted_and_matching(pattern, WITHIN_THE_LIMIT[pattern])


def _accepted(pattern: str) -> bool:
    try:
        compile_safe(pattern)
    except UnsafePattern:
        return False
    return True


@given(st.lists(st.tuples(st.integers(min_value=1, max_value=70), st.booleans()), min_size=1, max_size=12))
def test_splitting_a_part_that_runs_again_keeps_its_verdict(parts: list[tuple[int, bool]]) -> None:
    """After a varying part, fixed repeats and lookaheads costing ``total`` steps together are judged as
    one repeat of ``total``; inside a repeated part, lookaheads as one lookahead of ``total``."""
    total = sum(count for count, _ in parts)
    written = "".join(f"(?=[a-z]{{{count}}})" if looks else f"[a-z]{{{count}}}" for count, looks in parts)
    lookaheads = "".join(f"(?=[a-z]{{{count}}})" for count, _ in parts)
    assert _accepted(f"[a-z]*[a-z]{{{total}}}") == (total <= 64)
    assert _accepted("[a-z]*" + written) == (total <= 64), written
    assert _accepted(f"(?:(?=[a-z]{{{total}}})[a-z])*") == (total <= 64)
    assert _accepted(f"(?:{lookaheads}[a-z])*") == (total <= 64), lookaheads


class _OverBudget(Exception):
    """The analysis made more calls than allowed."""


def _accepted_within(pattern: str, calls: int) -> bool:
    """Whether ``pattern`` is accepted, raising `_OverBudget` as soon as judging it has made more
    than ``calls`` calls of functions in the analysis (parsing and compiling aside)."""
    made = 0

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal made
        if event == "call" and frame.f_code.co_filename == regex.__file__:
            made += 1
            if made > calls:
                raise _OverBudget(f"more than {calls} calls")

    previous = sys.getprofile()
    sys.setprofile(count)
    try:
        return _accepted(pattern)
    finally:
        sys.setprofile(previous)


_LETTERS = string.ascii_lowercase * 40
_DISTINCT = "".join(map(chr, range(0x4E00, 0x4E00 + MAX_PATTERN_LENGTH)))

LONGEST = {  # linear to match or refused, each with a long run of parts a varying part can shift through
    "[a-z]*abc...": ("[a-z]*" + _LETTERS[:994], True),
    "(?:[a-z]*abc...)+": ("(?:[a-z]*" + _LETTERS[:989] + ")+", False),
    ".*\u4e00\u4e01...": (".*" + _DISTINCT[:998], True),
    "\u4e00[^\u4e00]*\u4e01[^\u4e01]*...": ("".join(f"{char}[^{char}]*" for char in _DISTINCT[:166]), True),
}


@pytest.mark.parametrize("name", sorted(LONGEST))
def test_the_longest_patterns_are_judged_in_quadratic_work(name: str) -> None:
    """Judging a pattern of close to `MAX_PATTERN_LENGTH` characters makes at most two calls per pair
    of its characters: each pair of parts is compared in a few integer operations, however many
    parts lie between them. Reading those parts again for each pair took minutes."""
    pattern, accepted = LONGEST[name]
    assert MAX_PATTERN_LENGTH - 6 <= len(pattern) <= MAX_PATTERN_LENGTH
    assert _accepted_within(pattern, calls=2 * MAX_PATTERN_LENGTH**2) is accepted


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?P<x>a)(?P=x)", r"(a)?(?(1)b|c)"])
def test_refuses_backreferences(pattern: str) -> None:
    with pytest.raises(UnsafePattern, match="backreference"):
        compile_safe(pattern)


def test_refuses_invalid_and_overlong_patterns() -> None:
    with pytest.raises(UnsafePattern, match=r"invalid regular expression: missing \), unterminated subpattern"):
        compile_safe("(ab")
    with pytest.raises(UnsafePattern, match=r"nested more than \d+ deep"):
        compile_safe("(" * 400 + ")" * 400)
    with pytest.raises(UnsafePattern, match="nested too deeply"):
        compile_safe("(" * 499 + ")" * 499)
    with pytest.raises(UnsafePattern, match="invalid regular expression: the repetition number is too large"):
        compile_safe("a{4294967295}")
    with pytest.raises(UnsafePattern, match=f"the limit is {MAX_PATTERN_LENGTH}"):
        compile_safe("a" * (MAX_PATTERN_LENGTH + 1))
    assert compile_safe("a" * MAX_PATTERN_LENGTH).fullmatch("a" * MAX_PATTERN_LENGTH)
    assert issubclass(UnsafePattern, ValueError)


@pytest.mark.parametrize("pattern", [r"\d+\s+", r"\w+\s+", r"\d+\D+", r"\w+\W+", r"\s+\S+", r"\d+\W+"])
def test_disjoint_character_classes_separate_repeats(pattern: str) -> None:
    compile_safe(pattern)


def test_the_disjoint_classes_share_no_character_in_the_bmp() -> None:
    classes = {name: re.compile(rf"\{name}") for name in "dDwWsS"}
    ascii_classes = {name: re.compile(rf"\{name}", re.ASCII) for name in "dDwWsS"}
    for table in (classes, ascii_classes):
        for first, second in ("dD", "wW", "sS", "ds", "ws", "dW"):
            both = [c for c in map(chr, range(0x10000)) if table[first].match(c) and table[second].match(c)]
            assert both == [], (first, second)


_atoms = st.sampled_from(["a", "b", ".", r"\d", r"\w", "[ab]", "[^a]", "x", "-", "/", "[^/]", r"\b", "(?!b)"])
_quantifiers = st.sampled_from(["", "", "*", "+", "?", "{2,5}", "{3}", "{0,40}", "*?", "+?"])


def _grouped(parts: list[str], quantifier: str, alternation: bool) -> str:
    return "(?:" + ("|" if alternation else "").join(parts) + ")" + quantifier


_patterns = st.recursive(
    _atoms,
    lambda inner: st.builds(_grouped, st.lists(inner, min_size=1, max_size=3), _quantifiers, st.booleans()),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(_patterns, st.sampled_from(["a", "ab", "1", "a-", "x", "/a", "ba"]), st.sampled_from(["", "!", "\n"]))
def test_accepted_patterns_match_worst_case_subjects_quickly(pattern: str, unit: str, end: str) -> None:
    try:
        compiled = compile_safe(pattern)
    except UnsafePattern:
        return
    subject = (unit * MAX_SUBJECT_LENGTH)[: MAX_SUBJECT_LENGTH - len(end)] + end
    started = time.perf_counter()
    compiled.fullmatch(subject)
    assert time.perf_counter() - started < 0.25, pattern


@given(st.text(max_size=60))
def test_any_text_compiles_or_is_refused(pattern: str) -> None:
    with contextlib.suppress(UnsafePattern):
        assert isinstance(compile_safe(pattern), re.Pattern)
