"""The caller as a tool sees it, read-only.

One trimmed token (and the user holding it) serves every call a token makes with the same
approved scopes, so no tool may change by mistake what the next call's tool sees: the token is
a frozen model, its scope list and claims (nested values too) refuse changes, a field its
verifier's class adds is read-only as well (a set is a frozenset, a model a frozen copy) or,
any other object, a deep copy (never the verifier's own), and the user refuses new attributes. Tool code runs in the
server's process, so this guards against mistakes, not against code set on getting past it
(``list.append(token.scopes, ...)``). Copies (``copy``, ``deepcopy``, pickling) are plain,
mutable lists and dicts: a tool that wants to change its copy may.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, NoReturn, cast

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from pydantic import BaseModel, ConfigDict

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


_UNCHANGING = frozenset({str, int, float, bool, complex, bytes, type(None)})


def read_only(value: Any) -> Any:
    """``value`` read-only all the way down, sharing nothing changeable with it.

    Lists and tuples become `ReadOnlyList`, dicts `ReadOnlyDict`, sets frozensets, a bytearray
    bytes, a pydantic model a frozen copy of it, and any other object a deep copy (which raises
    when the object cannot be copied). Lists and dicts are walked without recursion, so claims
    nested any depth are no error; one reached twice is copied once (a cycle stays a cycle).
    """
    made: dict[int, Any] = {}  # id of each list and dict met, and its read-only copy
    pending: list[tuple[Any, Any]] = []  # copies made empty, to be filled

    def converted(item: Any) -> Any:
        if type(item) in _UNCHANGING:
            return item
        if not isinstance(item, list | tuple | dict):
            return _frozen(item)
        shell = made.get(id(item))
        if shell is None:
            shell = ReadOnlyDict.__new__(ReadOnlyDict) if isinstance(item, dict) else ReadOnlyList.__new__(ReadOnlyList)
            made[id(item)] = shell
            pending.append((item, shell))
        return shell

    top = converted(value)
    while pending:
        source, shell = pending.pop()
        if type(shell) is ReadOnlyDict:  # filled through dict's and list's methods: its own refuse
            dict.update(shell, [(key, converted(item)) for key, item in source.items()])
        else:
            list.extend(shell, [converted(item) for item in source])
    return top


def _frozen(value: Any) -> Any:
    """A value other than a list or dict, read-only and the caller's own (see `read_only`)."""
    if isinstance(value, set | frozenset):
        return frozenset(copy.deepcopy(value))
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, BaseModel):
        cls = _read_only_class(type(value))
        if cls is None:
            raise TypeError(f"{type(value).__name__} cannot be made read-only")
        return cls.model_construct(**read_only(dict(value)))
    return copy.deepcopy(value)


def _rebuilt(cls: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    return cls.model_construct(**values)


def _as_plain(self: BaseModel) -> tuple[Any, ...]:
    """Pickle a read-only model as a plain, mutable one of its original class."""
    return _rebuilt, (type(self).__mro__[1], copy.deepcopy(dict(self)))


class ReadOnlyAccessToken(AccessToken):
    """An access token whose fields cannot be reassigned (its lists and dicts are read-only too)."""

    model_config = ConfigDict(frozen=True)
    __reduce__ = _as_plain


_READ_ONLY: dict[type[BaseModel], type[BaseModel] | None] = {
    AccessToken: ReadOnlyAccessToken,
    ReadOnlyAccessToken: ReadOnlyAccessToken,
}
"""Each model class met, and its frozen subclass (None when it cannot be made); a frozen one, itself."""


def read_only_token(original: AccessToken, /, **fields: Any) -> AccessToken:
    """``original`` with ``fields`` replaced, read-only through and through (`read_only`), and
    still of its verifier's own class (a frozen subclass of it), with every field that class adds.

    Private attributes are not carried over: a verifier may keep the raw token in one. A class
    that cannot be subclassed plainly gives a `ReadOnlyAccessToken` with the standard fields.
    """
    cls = _read_only_class(type(original)) or ReadOnlyAccessToken
    values = {**dict(original), **fields}
    if cls is ReadOnlyAccessToken:
        values = {name: values[name] for name in AccessToken.model_fields}
    return cast(AccessToken, cls.model_construct(**read_only(values)))


def _read_only_class(model_class: type[BaseModel]) -> type[BaseModel] | None:
    """The frozen subclass of ``model_class``, made once; None (logged once) when it cannot be made."""
    if model_class in _READ_ONLY:
        return _READ_ONLY[model_class]
    namespace = {"model_config": ConfigDict(frozen=True), "__reduce__": _as_plain}
    made: type[BaseModel] | None
    try:
        made = type(f"ReadOnly{model_class.__name__}", (model_class,), namespace)
        _READ_ONLY[made] = made
    except Exception:
        logger.exception(
            "mcp-guard: class %s cannot be made read-only: tools see a token of it with its standard fields, "
            "and a call whose token holds a value of it is refused",
            model_class,
        )
        made = None
    _READ_ONLY[model_class] = made
    return made


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
