"""Claim rules shared by every token format: times with leeway, audience, strict scope, strings.

A JWT's claims and an introspection answer carry the same members (RFC 7519, RFC 7662), and
are held to the same rules here, each refusal with its own reason code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mcp_guard.errors import Refused
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeError, parse_scope

__all__ = ["audience_of", "check_times", "scope_of", "string_claim"]


def check_times(claims: Mapping[str, Any], now: float, leeway: float, max_age: float | None = None) -> float | None:
    """Refuse a token outside its ``nbf``..``exp`` window (with ``leeway``), or older than ``max_age``.

    Returns ``exp`` (None when absent).
    """
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
            raise Refused(ReasonCode.CLAIM_INVALID, f"The token's '{name}' claim must be a number of seconds.")
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if exp is not None and now > exp + leeway:
        raise Refused(ReasonCode.TOKEN_EXPIRED)
    if (nbf is not None and now + leeway < nbf) or (iat is not None and now + leeway < iat):
        raise Refused(ReasonCode.TOKEN_NOT_YET_VALID)
    if iat is not None and max_age is not None and now - iat > max_age + leeway:
        raise Refused(ReasonCode.TOKEN_TOO_OLD)
    return float(exp) if exp is not None else None


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


def string_claim(claims: Mapping[str, Any], name: str, default: str | None = None) -> str:
    """A string member; without a ``default`` it must be present and non-empty."""
    value = claims.get(name, default)
    if not isinstance(value, str) or (not value and default is None):
        raise Refused(ReasonCode.CLAIM_INVALID, f"The token's '{name}' claim must be a non-empty string.")
    return value
