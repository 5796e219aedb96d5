"""The caller as a tool sees it, read-only.

One trimmed token (and the user holding it) serves every call a token makes with the same
approved scopes, so no tool may change by mistake what the next call's tool sees: the token is
a frozen model, its scope list and claims (nested values too) refuse changes, and the user
refuses new attributes. Tool code runs in the server's process, so this guards against
mistakes, not against code set on getting past it (``list.append(token.scopes, ...)``).
Copies (``copy``, ``deepcopy``, pickling) are plain, mutable lists and dicts: a tool that
wants to change its copy may.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, NoReturn, cast

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from pydantic import ConfigDict

__all__ = ["ReadOnlyAccessToken", "ReadOnlyUser", "read_only", "read_only_token"]

logger = logging.getLogger("mcp_guard")

_ITEM_CHANGES = ("__init__", "__setitem__", "__delitem__", "pop", "clear")
_LIST_CHANGES = (*_ITEM_CHANGES, "append", "extend", "insert", "remove", "sort", "reverse", "__iadd__", "__imul__")
_DICT_CHANGES = (*_ITEM_CHANGES, "popitem", "setdefault", "update", "__ior__")


def _refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(f"the caller a tool sees is read-only ({type(self).__name__})")


class ReadOnlyList(list[Any]):
    """A list that refuses changes; it copies, deep-copies and pickles as a plain list."""

    __slots__ = ()

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return copy.deepcopy(list(self), memo)

    def __reduce__(self) -> tuple[type[list[Any]], tuple[list[Any]]]:
        return list, (list(self),)


class ReadOnlyDict(dict[str, Any]):
    """A dict that refuses changes; it copies, deep-copies and pickles as a plain dict."""

    __slots__ = ()

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (dict(self),)


for _name in _LIST_CHANGES:
    setattr(ReadOnlyList, _name, _refuse)
for _name in _DICT_CHANGES:
    setattr(ReadOnlyDict, _name, _refuse)


def read_only(value: Any) -> Any:
    """``value`` with every list and dict in it (at any depth) made read-only."""
    if isinstance(value, list | tuple):
        items = ReadOnlyList.__new__(ReadOnlyList)
        list.extend(items, (read_only(item) for item in value))  # its own methods refuse
        return items
    if isinstance(value, dict):
        members = ReadOnlyDict.__new__(ReadOnlyDict)
        dict.update(members, ((key, read_only(item)) for key, item in value.items()))
        return members
    return value


def _rebuilt(cls: type[AccessToken], values: dict[str, Any]) -> AccessToken:
    return cls.model_construct(**values)


def _as_plain(self: AccessToken) -> tuple[Any, ...]:
    """Pickle a read-only token as a plain, mutable one of its verifier's own class."""
    return _rebuilt, (type(self).__mro__[1], copy.deepcopy(dict(self)))


class ReadOnlyAccessToken(AccessToken):
    """An access token whose fields cannot be reassigned (its lists and dicts are read-only too)."""

    model_config = ConfigDict(frozen=True)
    __reduce__ = _as_plain


_READ_ONLY: dict[type[AccessToken], type[AccessToken]] = {AccessToken: ReadOnlyAccessToken}


def read_only_token(original: AccessToken, /, **fields: Any) -> AccessToken:
    """``original`` with ``fields`` replaced, read-only through and through, and still of its
    verifier's own class (a frozen subclass of it), with every field that class adds.

    Private attributes are not carried over: a verifier may keep the raw token in one. A class
    that cannot be subclassed plainly gives a `ReadOnlyAccessToken` with the standard fields.
    """
    cls = _READ_ONLY.get(type(original))
    if cls is None:
        cls = _READ_ONLY[type(original)] = _read_only_class(type(original))
    values = {**dict(original), **fields}
    if cls is ReadOnlyAccessToken:
        values = {name: values[name] for name in AccessToken.model_fields}
    return cls.model_construct(**{name: read_only(value) for name, value in values.items()})


def _read_only_class(verifier_class: type[AccessToken]) -> type[AccessToken]:
    namespace = {"model_config": ConfigDict(frozen=True), "__reduce__": _as_plain}
    try:
        return cast(type[AccessToken], type(f"ReadOnly{verifier_class.__name__}", (verifier_class,), namespace))
    except Exception:
        logger.exception(
            "mcp-guard: token class %s cannot be made read-only; tools see its standard fields", verifier_class
        )
        return ReadOnlyAccessToken


class ReadOnlyUser(AuthenticatedUser):
    """The authenticated user holding a read-only token; its attributes cannot be reassigned."""

    def __init__(self, token: AccessToken) -> None:
        super().__init__(token)
        self.__dict__["_sealed"] = True

    def __setattr__(self, name: str, value: object) -> None:
        if self.__dict__.get("_sealed"):
            raise AttributeError(f"the caller a tool sees is read-only: {name!r} cannot be set")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"the caller a tool sees is read-only: {name!r} cannot be deleted")
