"""Checks on the settings a rule is built with, shared by every built-in rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from mcp_guard.text import excerpt

__all__ = ["collection"]

T = TypeVar("T")


def collection(values: Iterable[T], what: str) -> tuple[T, ...]:
    """The items of ``values``, refusing one string where a collection is meant: a string would be
    read as its characters, or tested by substring, so ``subjects="alice-admin"`` would admit
    ``"alice"`` and ``tools="send_mail"`` would select no tool."""
    if isinstance(values, str):
        raise ValueError(f"{what} must be a collection of values, not one string ({excerpt(values)})")
    return tuple(values)
