"""URLs and host names checked against an allowlist, by their one ASCII form.

Entries are exact host names (``api.example.com``), ``*.`` wildcards that match any subdomain
but not the name itself (``*.example.com``), or IP literals (matched exactly, never by a
wildcard). They are normalised once: lower case, a trailing dot dropped, international names
IDNA-encoded (``xn--...``).

A value's host is compared in the same ASCII form, exactly, so look-alikes never match: a
Cyrillic letter gives a different ``xn--`` name, ``example.com.evil.com`` and
``evilexample.com`` are other names. Stricter than a resolver, a value is also refused when its
host ends with a dot, holds a full-width or ideographic dot (U+3002, U+FF0E, U+FF61, which IDNA
would read as ``.``), a percent sign, or a non-ASCII label that IDNA changes beyond lower-casing
(full-width Latin letters or a sharp s mapped to ASCII, an invisible joiner dropped): a client
that reads the name differently must not reach another host. A URL must also use an allowed
scheme and carry no user information (``https://good.com@evil.com``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from encodings import idna
from urllib.parse import urlsplit

from mcp_guard.text import excerpt

__all__ = ["MAX_URL_LENGTH", "HostAllowlist"]

MAX_URL_LENGTH = 2048
"""Longest URL or host value accepted, in characters."""

_MAX_HOST_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_PORT = re.compile(r"[0-9]{1,5}")
_WIDE_DOTS = frozenset("\u3002\uff0e\uff61")


class HostAllowlist:
    """Allowed hosts and URL schemes; `url_violation` and `host_violation` say why a value is not allowed."""

    __slots__ = ("_exact", "_schemes", "_suffixes")

    def __init__(self, hosts: Iterable[str], schemes: Iterable[str] = ("https",)) -> None:
        exact: set[str] = set()
        suffixes: set[str] = set()
        for entry in hosts:
            if not isinstance(entry, str):
                raise ValueError(f"host entry is not a string but {type(entry).__name__}")
            wildcard = entry.startswith("*.")
            name = entry[2:] if wildcard else entry
            name = name[:-1] if name.endswith(".") else name
            host, problem = _canonical_host(name.lower())
            if problem is None and wildcard and (_is_ip(host) or host.rpartition(".")[2].isdigit()):
                problem = "puts a wildcard on an IP address"  # a numeric last label names no domain
            if problem is None and wildcard and "." not in host:
                problem = "puts a wildcard on a top-level domain"
            if problem is not None:
                raise ValueError(f"host entry {excerpt(entry)} {problem}")
            if wildcard:
                suffixes.add("." + host)
            else:
                exact.add(host)
        if not exact and not suffixes:
            raise ValueError("no hosts given")
        allowed: list[str] = []
        for scheme in schemes:
            if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme.lower()):
                shown = excerpt(scheme) if isinstance(scheme, str) else type(scheme).__name__
                raise ValueError(f"URL scheme {shown} is not a scheme name")
            allowed.append(scheme.lower())
        if not allowed:
            raise ValueError("no URL schemes given")
        self._exact = frozenset(exact)
        self._suffixes = frozenset(suffixes)
        self._schemes = tuple(dict.fromkeys(allowed))

    @property
    def schemes(self) -> tuple[str, ...]:
        """The allowed URL schemes, lower case."""
        return self._schemes

    def url_violation(self, value: object) -> str | None:
        """None when ``value`` is a URL with an allowed scheme and host and no user information."""
        if not isinstance(value, str):
            return f"URL is not a string but {type(value).__name__}"
        # A URL holding "@" may carry user information (often a password, which a "#", "?" or
        # "/" in it can hide from the parsed authority), so it is never quoted.
        shown = "URL (not quoted: it holds '@')" if "@" in value else f"URL {excerpt(value)}"
        problem = _text_problem(value)
        if problem is not None:
            return f"{shown} {problem}"
        try:
            parts = urlsplit(value)
        except ValueError:
            return f"{shown} is not a valid URL"
        if parts.scheme not in self._schemes:
            allowed = ", ".join(self._schemes)
            return f"{shown} does not use an allowed scheme ({allowed})"
        if "@" in parts.netloc:
            return "URL carries user information"
        return self._netloc_violation(parts.netloc, shown)

    def host_violation(self, value: object) -> str | None:
        """None when ``value`` is an allowed host name or IP literal, optionally with a ``:port``."""
        if not isinstance(value, str):
            return f"host is not a string but {type(value).__name__}"
        problem = _text_problem(value)
        if problem is not None:
            return f"host {excerpt(value)} {problem}"
        if ":" in value and not value.startswith("[") and _is_ip(value):
            return self._host_violation(value, f"host {excerpt(value)}")
        return self._netloc_violation(value, f"host {excerpt(value)}")

    def _netloc_violation(self, netloc: str, subject: str) -> str | None:
        """Check ``host``, ``host:port``, ``[ipv6]`` or ``[ipv6]:port``."""
        if netloc.startswith("["):
            host, bracket, port = netloc[1:].partition("]")
            if not bracket or ":" not in host or not _is_ip(host):
                return f"{subject} has an invalid bracketed IP address"
            if port and not port.startswith(":"):
                return f"{subject} has text after its bracketed IP address"
            port = port[1:]
        else:
            host, _, port = netloc.partition(":")
            if ":" in port:
                return f"{subject} has more than one port"
        if port and not (_PORT.fullmatch(port) and 0 < int(port) <= 65535):
            return f"{subject} has an invalid port"
        return self._host_violation(host, subject)

    def _host_violation(self, host: str, subject: str) -> str | None:
        if not host:
            return f"{subject} has no host"
        if host.endswith("."):
            return f"{subject} has a host ending with a dot"
        canonical, problem = _canonical_host(host)
        if problem is not None:
            return f"{subject} has a host that {problem}"
        if canonical in self._exact:
            return None
        dot = canonical.find(".")
        while dot != -1:
            if canonical[dot:] in self._suffixes:
                return None
            dot = canonical.find(".", dot + 1)
        return f"{subject} has host {excerpt(canonical)}, which is not allowed"


def _text_problem(value: str) -> str | None:
    """Why ``value`` is refused as a URL or host on its text alone, or None."""
    if len(value) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if not value.isprintable() or " " in value:
        return "contains whitespace or a control or invisible character"
    if "\\" in value:
        return "contains a backslash"
    return None


def _canonical_host(host: str) -> tuple[str, str | None]:
    """The host's lower-case ASCII form, or the reason it has none we can trust."""
    if _is_ip(host):
        return str(ipaddress.ip_address(host)), None
    if "%" in host:
        return host, "is percent-encoded"
    if not _WIDE_DOTS.isdisjoint(host):
        return host, "contains a full-width or ideographic dot"
    labels = []
    for label in host.split("."):
        if not label.isascii():
            try:
                encoded = idna.ToASCII(label).decode("ascii")
                stable = idna.ToUnicode(encoded) == label.lower()
            except UnicodeError:
                return host, "is not a valid international domain name"
            if not stable:
                return host, "changes under IDNA beyond lower case (a disguised name)"
            label = encoded
        label = label.lower()
        if not _LABEL.fullmatch(label):
            return host, "is not a valid host name"
        labels.append(label)
    canonical = ".".join(labels)
    if len(canonical) > _MAX_HOST_LENGTH:
        return host, "is too long"
    return canonical, None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
