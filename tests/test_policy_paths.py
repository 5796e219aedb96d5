"""File paths stay inside their roots: canonicalised through real symlinks, refused on text first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_guard.policy.paths import MAX_PATH_LENGTH, PathRoots
from mcp_guard.text import excerpt


@pytest.fixture
def root(tmp_path: Path) -> Path:
    inside = tmp_path / "root"
    (inside / "docs").mkdir(parents=True)
    (tmp_path / "root2").mkdir()
    (tmp_path / "secret").write_text("x")
    return inside


def test_paths_inside_the_root_pass(root: Path) -> None:
    roots = PathRoots([str(root)])
    for value in (root, root / "docs", root / "docs" / "new.txt", root / "docs" / ".." / "a.txt", root / "."):
        assert roots.violation(str(value)) is None, value


def test_names_in_other_scripts_and_decomposed_accents_pass(root: Path) -> None:
    """Only look-alikes that normalisation turns into special characters are refused."""
    roots = PathRoots([str(root)])
    for value in ("docs/café.txt", "docs/cafe\u0301.txt", "docs/\u0444\u0430\u0439\u043b", "docs/\ufb01le.txt"):
        assert roots.violation(value) is None, value


def test_relative_paths_resolve_against_the_first_root(root: Path, tmp_path: Path) -> None:
    roots = PathRoots([str(root), str(tmp_path / "root2")])
    assert roots.violation("docs/a.txt") is None
    assert roots.violation("a.txt") is None
    assert roots.violation("../secret") is not None
    assert roots.violation(str(tmp_path / "root2" / "b.txt")) is None  # any root for absolute paths


def test_dot_dot_and_sibling_prefixes_stay_outside(root: Path, tmp_path: Path) -> None:
    roots = PathRoots([str(root)])
    for value in (
        root / ".." / "secret",
        root / "docs" / ".." / ".." / "secret",
        tmp_path / "root2" / "x",  # shares the prefix "root" but not the component
        tmp_path,
        Path("/"),
    ):
        message = roots.violation(str(value))
        assert message is not None and "outside the allowed roots" in message, value


def test_a_symlink_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "out").symlink_to(tmp_path)
    (root / "docs" / "back").symlink_to(root / "docs")
    roots = PathRoots([str(root)])
    assert roots.violation(str(root / "escape")) is not None
    assert roots.violation(str(root / "out" / "secret")) is not None
    assert roots.violation("out/root2") is not None
    assert roots.violation(str(root / "docs" / "back" / "x")) is None  # a link that stays inside


def test_a_root_given_through_a_symlink_is_canonicalised(root: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(root)
    roots = PathRoots([str(tmp_path / "alias")])
    assert roots.roots == (os.path.realpath(root),)
    assert roots.violation(str(root / "docs" / "a")) is None
    assert roots.violation(str(tmp_path / "alias" / "a")) is None


def test_a_symlink_loop_does_not_hang(root: Path) -> None:
    (root / "loop").symlink_to(root / "loop")
    roots = PathRoots([str(root)])
    assert roots.violation(str(root / "loop" / ".." / ".." / "secret")) is not None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "not a string but NoneType"),
        (7, "not a string but int"),
        (b"/tmp", "not a string but bytes"),
        ("", "is empty"),
        ("docs/\x00.txt", "NUL byte"),
        ("docs/a\nb", "U+000A"),
        ("docs/\x1b[31m", "U+001B"),
        ("docs/\x7f", "U+007F"),
        ("docs/\u202etxt.exe", "U+202E"),
        ("docs/\u200b", "U+200B"),
        ("docs\\..\\..\\secret", "backslash"),
        ("\uff0e\uff0e\uff0fsecret", "look-alike of a separator"),  # NFKC folds it into ../secret
        ("docs/\u2024\u2024/secret", "look-alike of a '.' or '..' component"),  # one dot leader each
        ("\uff5e/.ssh", "begins with '~', which a tool may expand to a home directory (read with its look-alikes"),
        ("file\uff1a///etc/passwd", "begins with a URI scheme"),
        ("\ufb01le:///etc/passwd", "begins with a URI scheme"),  # the "fi" ligature
        ("\uff46\uff49\uff4c\uff45:../x", "begins with a URI scheme"),
        ("\uff05\uff12\uff46", "percent-encoded separator"),
        ("%ef%bc%8e%ef%bc%8e/secret", "look-alike of a '.' or '..' component, which a tool may fold into one (percent"),
        ("..%2fsecret", "percent-encoded"),
        ("..%2Fsecret", "percent-encoded"),
        ("..%5csecret", "percent-encoded"),
        ("%2e%2e/secret", "percent-encoded"),
        ("..%252fsecret", "percent-encoded"),
        ("..%25252Fsecret", "percent-encoded"),
        ("..%c0%afsecret", "percent-encoded"),
        ("..%e0%80%afsecret", "percent-encoded"),
        ("..%u2215secret", "percent-encoded"),
        ("..%25u002fsecret", "percent-encoded"),
        ("%%32%65%%32%65/secret", "percent-encoded"),  # '%' '%32' '%65' decodes to '%2e'
        ("%2%65%2%65/secret", "percent-encoded"),
        ("..%%32%66..%%32%66secret", "percent-encoded"),
        ("..%f0%80%80%afsecret", "percent-encoded"),  # a 4-byte overlong '/'
        ("docs%00.txt", "percent-encoded"),
        ("..%" + "25" * 6 + "2fsecret", "percent-encoded more than 4 times over"),
        ("a" * (MAX_PATH_LENGTH + 1), f"longer than {MAX_PATH_LENGTH}"),
        ("~/.bashrc", "begins with '~'"),  # a tool that expands it reads a home directory
        ("~root/.ssh/authorized_keys", "begins with '~'"),
        ("file:///etc/passwd", "URI scheme"),  # a tool that takes URIs reads /etc/passwd
        ("FILE:/etc/passwd", "URI scheme"),
        ("s3+https://bucket/key", "URI scheme"),
        ("%7e/.ssh/id_rsa", "begins with '~', which a tool may expand to a home directory (percent-encoded)"),
        ("file%3a///etc/passwd", "as ./name) (percent-encoded)"),
        ("%2566ile:///etc/passwd", "as ./name) (percent-encoded)"),  # decoded twice
        (" file:///etc/passwd", "begins or ends with whitespace"),  # a tool may strip it first
        ("docs/notes.txt ", "begins or ends with whitespace"),
        ("%20~/.ssh/id_rsa", "begins or ends with whitespace, which a tool may strip (percent-encoded)"),
        ("%09file:///etc/passwd", "contains a control or invisible character (percent-encoded)"),
        ("%C2%A0/etc/passwd", "contains a control or invisible character (percent-encoded)"),  # a no-break space
        ("%E3%80%80/etc/passwd", "contains a control or invisible character (percent-encoded)"),
        ("%1F/etc/passwd", "contains a control or invisible character (percent-encoded)"),
        ("%A0/etc/passwd", "holds bytes that are not UTF-8 (percent-encoded)"),  # a Latin-1 space
        ("file:secret/key", "URI scheme"),  # a tool that takes URIs opens it from its own directory
        ("file:../outside.txt", "URI scheme"),
        ("notes:draft.txt", "a name with a colon as ./name"),
    ],
)
def test_suspicious_text_is_refused_before_the_filesystem(
    root: Path, monkeypatch: pytest.MonkeyPatch, value: object, problem: str
) -> None:
    roots = PathRoots([str(root)])

    def untouchable(path: str) -> str:
        raise AssertionError(f"the filesystem was consulted for {path!r}")

    monkeypatch.setattr(os.path, "realpath", untouchable)
    message = roots.violation(value)
    assert message is not None and problem in message


def test_ordinary_percent_signs_and_unicode_names_pass(root: Path) -> None:
    roots = PathRoots([str(root)])
    assert roots.violation("docs/100%.txt") is None
    assert roots.violation("docs/%20name.txt") is None
    assert roots.violation("docs/50%off%2520.txt") is None  # decodes to a space, twice over
    assert roots.violation("docs/r\u00e9sum\u00e9 \u6587\u66f8.txt") is None
    assert roots.violation("docs/~draft.txt") is None  # only a leading '~' expands
    assert roots.violation("docs/notes:2026.txt") is None  # a colon past the first component
    assert roots.violation("./notes:draft.txt") is None  # a name with a colon, written as no URI can be
    assert roots.violation("docs/my notes.txt") is None  # whitespace inside a name
    assert roots.violation("docs/my%20notes.txt") is None  # and encoded
    assert roots.violation("docs/%25252541.txt") is None  # encoded four times over, as many as allowed
    assert "more than 4 times over" in str(roots.violation("docs/%2525252541.txt"))


def test_messages_are_short_and_escaped(root: Path) -> None:
    roots = PathRoots([str(root)])
    for value in ("/" + "\u00e9" * 10_000_000, "/etc/" + "x" * 10_000, "\u202e" * 500, "/etc/\u0440asswd"):
        message = roots.violation(value)
        assert message is not None and message.isascii() and len(message) < 160, message[:200]
    assert excerpt("\U0001f600" * 200).isascii() and len(excerpt("\U0001f600" * 200)) <= 82
    assert excerpt("short") == "'short'"
    assert excerpt("x' is allowed; y 'z") == "'x\\' is allowed; y \\'z'"  # cannot seem to end early
    assert excerpt('say "hi"') == "'say \"hi\"'" and excerpt("a'b\"c") == "'a\\'b\"c'"


@pytest.mark.parametrize("roots", [[], ["relative/dir"], [""], ["/srv/\x00"], [7]])
def test_bad_roots_are_refused(roots: list[object]) -> None:
    with pytest.raises(ValueError, match="root"):
        PathRoots(roots)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=80), st.binary(max_size=10), st.integers(), st.none(), st.floats()))
def test_any_value_gets_an_answer(root: Path, value: object) -> None:
    message = PathRoots([str(root)]).violation(value)
    assert message is None or (isinstance(message, str) and message.isascii())
