"""Claim rules shared by every token format: times with leeway, audience, strict scope, strings.

A JWT's claims and an introspection answer carry the same members (RFC 7519, RFC 7662), and
are held to the same rules here, each refusal with its own reason code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from mcp_guard.clock import TIME_BOUND
from mcp_guard.errors import Refused
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeError, parse_scope

__all__ = [
    "audience_of",
    "check_times",
    "check_unbound",
    "json_object",
    "scope_of",
    "scopes_claimed",
    "string_claim",
]


def json_object(data: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, strictly: no duplicate member names, no NaN or Infinity.

    Raises `ValueError` for anything else, including nesting too deep to parse.
    """
    text = data.decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE)) if text[:1] in _WHITESPACE else 0
    try:
        value, end = _scan(text, start)  # the decoder's own scanner, without its Python-level wrappers
    except StopIteration:
        raise ValueError("not JSON") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if end != len(text) and text[end:].strip(_WHITESPACE):
        raise ValueError("data after the JSON value")
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member name")
    return members


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
_scan: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]  # not in the stubs
_WHITESPACE = " \t\n\r"


def check_times(claims: Mapping[str, Any], now: float, leeway: float, max_age: float | None = None) -> float | None:
    """Refuse a token outside its ``nbf``..``exp`` window (with ``leeway``), or older than ``max_age``.

    Returns when the token expires: ``exp``, or for a token without one, ``iat`` plus
    ``max_age``, after which it is refused as too old (None when nothing bounds it). That is
    the principal's expiry, which bounds how long its sessions are kept. A time claim that is
    present must be a number: a ``null`` ``exp`` is not a token that never expires.
    """
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        if type(value) not in (int, float) or not -TIME_BOUND < value < TIME_BOUND:
            raise Refused(ReasonCode.CLAIM_INVALID, f"The token's '{name}' claim must be a number of seconds.")
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if exp is not None and now > exp + leeway:
        raise Refused(ReasonCode.TOKEN_EXPIRED)
    if (nbf is not None and now + leeway < nbf) or (iat is not None and now + leeway < iat):
        raise Refused(ReasonCode.TOKEN_NOT_YET_VALID)
    if iat is not None and max_age is not None and now - iat > max_age + leeway:
        raise Refused(ReasonCode.TOKEN_TOO_OLD)
    if exp is not None:
        return float(exp)
    return float(iat + max_age) if iat is not None and max_age is not None else None


def valid_until(claims: Mapping[str, Any], leeway: float, max_age: float | None) -> float:
    """The last moment a token passes `check_times`: the earlier of expiry and maximum age."""
    until = math.inf
    if claims.get("exp") is not None:
        until = claims["exp"] + leeway
    if claims.get("iat") is not None and max_age is not None:
        until = min(until, claims["iat"] + max_age + leeway)
    return float(until)


def check_unbound(claims: Mapping[str, Any], accept_bound: bool) -> None:
    """Refuse a token bound to a key or certificate (a ``cnf`` member: DPoP, RFC 9449; mutual
    TLS, RFC 8705) unless ``accept_bound``: this server cannot check the binding, so a stolen
    bound token would pass as a bearer token."""
    if "cnf" in claims and not accept_bound:
        raise Refused(ReasonCode.TOKEN_BOUND)


def audience_of(aud: object) -> tuple[str, ...]:
    """The ``aud`` claim as a tuple; refuses anything but a string or a non-empty string array."""
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        return tuple(aud)
    raise Refused(ReasonCode.CLAIM_INVALID, "The token's 'aud' claim must be a string or an array of strings.")


def scope_of(scope: object) -> frozenset[str]:
    """A ``scope`` member parsed with the strict RFC 6749 grammar."""
    try:
        if not isinstance(scope, str):
            raise ScopeError("'scope' must be a space-delimited string")
        return parse_scope(scope)
    except ScopeError as error:
        raise Refused(ReasonCode.SCOPE_MALFORMED, f"The access token's scope is invalid: {error}.") from None


def scopes_claimed(claims: Mapping[str, Any], *, accept_scp: bool) -> frozenset[str]:
    """The scopes a token's claims (or an introspection answer) grant: ``scope``, strictly, or
    the non-standard ``scp`` (an array or a string) only where ``accept_scp``; never both."""
    scope, scp = claims.get("scope"), claims.get("scp")
    if scope is not None and scp is not None:
        raise Refused(ReasonCode.SCOPE_CONFLICT)
    if scope is not None:
        return scope_of(scope)
    if scp is None:
        return frozenset()
    if not accept_scp:
        raise Refused(
            ReasonCode.SCOPE_MALFORMED, "The token carries 'scp', which this issuer may not use: use 'scope'."
        )
    if isinstance(scp, list) and all(isinstance(item, str) and " " not in item for item in scp):
        return scope_of(" ".join(scp))
    return scope_of(scp)


def string_claim(claims: Mapping[str, Any], name: str, default: str | None = None) -> str:
    """A string member; without a ``default`` it must be present and non-empty."""
    value = claims.get(name, default)
    if not isinstance(value, str) or (not value and default is None):
        raise Refused(ReasonCode.CLAIM_INVALID, f"The token's '{name}' claim must be a non-empty string.")
    return value
