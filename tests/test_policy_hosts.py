"""URL hosts against an allowlist: one ASCII form, exact matches, look-alikes refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_guard.policy.hosts import MAX_URL_LENGTH, HostAllowlist

ALLOW = HostAllowlist(["api.example.com", "*.docs.example.org", "127.0.0.1", "::1", "b\u00fccher.example"])


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com",
        "https://api.example.com/v1/items?q=1#top",
        "https://api.example.com:8443/",
        "HTTPS://API.Example.COM/x",
        "https://api.example.com:/x",
        "https://a.docs.example.org/",
        "https://a.b.docs.example.org/deep",
        "https://127.0.0.1/",
        "https://[::1]:8443/x",
        "https://[0:0:0:0:0:0:0:1]/",
        "https://b\u00fccher.example/",
        "https://B\u00dcCHER.example/",
        "https://xn--bcher-kva.example/",
        "https://api.example.com#@evil.com",
    ],
)
def test_allowed_urls_pass(url: str) -> None:
    assert ALLOW.url_violation(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://api.example.com/", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("https://api.example.com@evil.com/", "user information"),
        ("https://user:pw@api.example.com/", "user information"),
        ("https://evil.com%2f@api.example.com/", "user information"),
        ("https:///x", "no host"),
        ("https:api.example.com", "no host"),
        ("https://:443/", "no host"),
        ("https://ex\u0430mple.com/", "not allowed"),  # Cyrillic a
        ("https://api.ex\u0430mple.com/", "not allowed"),
        ("https://api.example\u3002com/", "full-width or ideographic dot"),
        ("https://api.example\uff0ecom/", "full-width or ideographic dot"),
        ("https://api.example\uff61com/", "full-width or ideographic dot"),
        ("https://\uff41\uff50\uff49.example.com/", "disguised"),  # full-width letters
        ("https://api.example.com./", "ending with a dot"),
        ("https://api.example.com.evil.com/", "not allowed"),
        ("https://evilapi.example.com/", "not allowed"),
        ("https://docs.example.org/", "not allowed"),  # the wildcard's apex
        ("https://xdocs.example.org/", "not allowed"),
        ("https://evil.com\\@api.example.com/", "backslash"),
        ("https://evil.com\\.api.example.com/", "backslash"),
        ("https://api.example.com /", "whitespace"),
        ("https://api.example.com\t/", "whitespace"),
        ("https://api.example.com\n.evil.com/", "whitespace"),
        ("https://api.example.com\u00a0/", "whitespace"),
        ("https://%61pi.example.com/", "percent-encoded"),
        ("https://[::1/", "not a valid URL"),
        ("https://[127.0.0.1]/", "not a valid URL"),
        ("https://[::1]x/", "after its bracketed|not a valid URL"),  # some urlsplit versions refuse it first
        ("https://api.example.com:99999/", "invalid port"),
        ("https://api.example.com:0/", "invalid port"),
        ("https://api.example.com:8x/", "invalid port"),
        ("https://127.1/", "not allowed"),
        ("https://2130706433/", "not allowed"),
        ("https://[::ffff:127.0.0.1]/", "not allowed"),
        ("https://a_b.docs.example.org/", "not a valid host name"),
        ("https://-a.docs.example.org/", "not a valid host name"),
        ("https://bu\u0308cher.example/", "disguised"),  # decomposed umlaut
        ("https://b\u00fc\u200dcher.example/", "invisible"),  # a joiner IDNA would drop
        ("https://" + "a" * MAX_URL_LENGTH, f"longer than {MAX_URL_LENGTH}"),
        (None, "not a string"),
        (b"https://api.example.com", "not a string"),
    ],
)
def test_other_urls_are_refused(url: object, problem: str) -> None:
    message = ALLOW.url_violation(url)
    assert message is not None and any(phrase in message for phrase in problem.split("|")), message


def test_user_information_is_never_quoted() -> None:
    """It is often a password: the refusal reaches the caller, spans and logs."""
    assert ALLOW.url_violation("https://user:hunter2@api.example.com/") == "URL carries user information"
    for url in (
        "http://alice:hunter2@api.example.com/x",  # refused for its scheme first
        "https://alice:hun ter2@api.example.com/x",  # for whitespace
        "https://alice:hunter2@[::1/x",  # as no valid URL
        "https://alice:hun#ter2@api.example.com/x",  # the "#" hides the password from the authority
    ):
        message = ALLOW.url_violation(url)
        assert message is not None and "hunter2" not in message and "hun" not in message, message


def test_host_values_with_and_without_ports() -> None:
    for host in ("api.example.com", "API.example.com:443", "x.docs.example.org", "127.0.0.1:80", "[::1]:80", "::1"):
        assert ALLOW.host_violation(host) is None, host
    for host in (
        "evil.com",
        "api.example.com.",
        "api.example.com:99999",
        "api.example.com:1:2",
        "",
        "[::1",
        "[127.0.0.1]",
    ):
        assert ALLOW.host_violation(host) is not None, host
    assert ALLOW.host_violation(42) == "host is not a string but int"


def test_entries_are_normalised() -> None:
    allow = HostAllowlist(["API.Example.COM.", "*.EXAMPLE.net", "xn--bcher-kva.example"], schemes=["HTTPS", "wss"])
    assert allow.schemes == ("https", "wss")
    assert allow.url_violation("https://api.example.com/") is None
    assert allow.url_violation("wss://a.example.net/") is None
    assert allow.url_violation("https://b\u00fccher.example/") is None
    assert allow.url_violation("https://example.net/") is not None


def test_a_look_alike_passes_only_when_allowlisted_exactly() -> None:
    look_alike = "ex\u0430mple.com"
    allow = HostAllowlist([look_alike])
    assert allow.url_violation(f"https://{look_alike}/") is None
    assert allow.url_violation("https://example.com/") is not None


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "*.com",
        "*.127.0.0.1",
        "*.0.1",  # no domain ends in a number: it would match 127.0.0.1 and 10.0.0.1
        "*.example.1",
        "*.*.example.com",
        "exa mple.com",
        "a..b",
        "-a.com",
        "a_b.com",
        "\uff41pi.com",
        "%61.com",
    ],
)
def test_invalid_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="host entry"):
        HostAllowlist([entry])


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="no hosts"):
        HostAllowlist([])
    with pytest.raises(ValueError, match="no URL schemes"):
        HostAllowlist(["a.com"], schemes=[])
    with pytest.raises(ValueError, match="not a scheme name"):
        HostAllowlist(["a.com"], schemes=["ht tp"])


def test_messages_are_short_and_escaped() -> None:
    for url in ("https://" + "\u00e9" * 2000, "https://evil.com/" + "x" * 2000, "https://\u202eevil.com"):
        message = ALLOW.url_violation(url)
        assert message is not None and message.isascii() and len(message) < 200, message


@given(st.one_of(st.text(max_size=80), st.from_regex(r"https://[a-z.\u0430\u3002:@\[\]%0-9]{0,30}/?", fullmatch=True)))
def test_any_text_gets_an_answer(value: str) -> None:
    for message in (ALLOW.url_violation(value), ALLOW.host_violation(value)):
        assert message is None or (isinstance(message, str) and message.isascii())
