"""What the guard learns from a tool function's signature: its arguments' JSON Schema, and how
the arguments a client sends become the ones the tool receives.

Policies must judge what the tool will receive, so the guard reads a call's arguments the way
the MCP SDK does, with the SDK's own metadata: text sent for a parameter not annotated ``str``
is parsed from JSON, a parameter the SDK also accepts under another name (pydantic
``AliasChoices``) is judged under its schema name whichever name the client used, and keys the
SDK never hands on are dropped: unknown ones, and parameters a resolver fills (``Resolve``:
elicitation, sampling, roots), which no argument rule can see before the tool runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from mcp.server.mcpserver.resolve import find_resolved_parameters
from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
from mcp.server.mcpserver.utilities.func_metadata import func_metadata
from pydantic import AliasChoices, TypeAdapter
from pydantic.fields import FieldInfo

__all__ = ["ToolArguments", "signature_of"]


class ToolArguments(NamedTuple):
    """How one tool's arguments reach it.

    ``fields`` pairs each parameter's schema name with the keys the SDK reads it from, in the
    order it tries them; ``accepted`` are all those keys; ``renamed`` says whether any parameter
    is read from a key other than its schema name; ``json_keys`` are the keys whose text the SDK
    parses from JSON, with ``parse`` (its own code).
    """

    fields: tuple[tuple[str, tuple[str, ...]], ...]
    accepted: frozenset[str]
    renamed: bool
    json_keys: frozenset[str]
    parse: Callable[[dict[str, Any]], dict[str, Any]]
    loose: frozenset[str] = frozenset()
    """Parameters holding a model that takes some field under a name its schema does not show
    (an alias and its field name, or alias choices): a dotted path into them can miss a value."""
    names: tuple[frozenset[str], ...] = ()
    """The names each field goes by, parameters and the fields of the models, typed dicts and
    dataclasses they hold: its own, its aliases or alias choices, its serialization alias."""

    def redacting(self, redact: Iterable[str]) -> frozenset[str]:
        """``redact`` with every name of each field it names: a client may send a field under
        any of them, and the guard keys a parameter by its schema name, not the one sent."""
        named = frozenset(redact)
        return named.union(*(names for names in self.names if names & named))

    def apply(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``arguments`` as the tool will receive them, keyed by schema name."""
        for key in self.json_keys:
            if type(arguments.get(key)) is str:
                arguments = self.parse(arguments)
                break
        if self.renamed or not arguments.keys() <= self.accepted:
            arguments = self._received(arguments)
        return arguments

    def _received(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Each parameter from the first of its keys the call holds (a key may feed several)."""
        received = {}
        for name, keys in self.fields:
            given = next((key for key in keys if key in arguments), None)
            if given is not None:
                received[name] = arguments[given]
        return received


def signature_of(fn: Callable[..., Any]) -> tuple[dict[str, Any], ToolArguments]:
    """The JSON Schema of ``fn``'s arguments, built exactly as the SDK builds a tool's
    ``inputSchema`` (without the ``Context`` and resolved parameters it fills itself), and how
    a call's arguments reach ``fn``.

    Raises `ValueError` for a parameter read through an alias path (``AliasPath``), or two
    under one schema name: the guard could not tell which value the tool receives.
    """
    context = find_context_parameter(fn)
    skipped = [*([context] if context else []), *find_resolved_parameters(fn), *_receiver(fn)]
    model = func_metadata(fn, skip_names=skipped)
    parameters = model.arg_model.model_fields.items()
    fields = tuple((keys[0], keys) for keys in (_keys(fn, name, info) for name, info in parameters))
    shared = {name for name, _ in fields if sum(other == name for other, _ in fields) > 1}
    if shared:
        raise ValueError(
            f"tool {getattr(fn, '__name__', fn)!r} has several parameters named {sorted(shared)} in its schema; "
            "mcp-guard judges arguments by name: give each its own"
        )
    json_keys = frozenset(
        key  # the keys the SDK's own parsing looks at
        for name, info in parameters
        if info.annotation is not str
        for key in (name, info.alias)
        if key
    )
    accepted = frozenset(key for _, keys in fields for key in keys)
    renamed = any(keys != (name,) for name, keys in fields)
    loose = frozenset(
        keys[0] for (_, keys), (_, info) in zip(fields, parameters, strict=True) if _loose(info.annotation)
    )
    names = tuple(dict.fromkeys(_field_names(model.arg_model.__pydantic_core_schema__)))
    arguments = ToolArguments(fields, accepted, renamed, json_keys, model.pre_parse_json, loose, names)
    return model.arg_model.model_json_schema(by_alias=True), arguments


def _receiver(fn: Callable[..., Any]) -> list[str]:
    """The ``self`` (or ``cls``) of a function defined in a class body: decorated there, it is
    not bound yet, and the SDK reads the bound method it is registered as, without it."""
    if not inspect.isfunction(fn):
        return []
    owner = fn.__qualname__.rpartition(".")[0]
    first = next(iter(inspect.signature(fn).parameters.values()), None)
    if (
        owner
        and not owner.endswith("<locals>")  # a nested function, not a method
        and first is not None
        and first.name in ("self", "cls")
        and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)
    ):
        return [first.name]
    return []


def _keys(fn: Callable[..., Any], name: str, info: FieldInfo) -> tuple[str, ...]:
    """The keys the SDK reads ``name`` from, in the order it tries them (its schema name first)."""
    alias = info.validation_alias if info.validation_alias is not None else info.alias
    if alias is None:
        return (name,)
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    if not all(isinstance(choice, str) for choice in choices):
        raise ValueError(
            f"parameter {name!r} of tool {getattr(fn, '__name__', fn)!r} is read through an alias path; "
            "mcp-guard judges arguments by name: give it a plain alias"
        )
    return tuple(dict.fromkeys(str(choice) for choice in choices))


def _loose(annotation: Any) -> bool:
    """Whether ``annotation`` holds a model, typed dict or dataclass taking some field under
    more than one name (an alias and, by configuration, its field name; or alias choices)."""
    try:
        schema = TypeAdapter(annotation).core_schema
    except Exception:  # a class pydantic checks by isinstance alone has no fields to alias
        return False
    return _loose_schema(schema, by_name=False)


def _loose_schema(node: object, *, by_name: bool) -> bool:
    """Walk a pydantic core schema for a field read under several names."""
    if isinstance(node, list):
        return any(_loose_schema(item, by_name=by_name) for item in node)
    if not isinstance(node, dict):
        return False
    config = node.get("config")
    if isinstance(config, dict) and config.get("validate_by_name"):
        by_name = True
    if node.get("type") in _FIELD_KINDS:
        alias = node.get("validation_alias")
        if isinstance(alias, list) and (len(alias) > 1 or (alias and isinstance(alias[0], list) and len(alias[0]) > 1)):
            return True
        if alias is not None and by_name:
            return True
    return any(_loose_schema(value, by_name=by_name) for value in node.values())


def _field_names(node: object) -> Iterator[frozenset[str]]:
    """Walk a pydantic core schema for the names each field with an alias goes by."""
    if isinstance(node, list):
        for item in node:
            yield from _field_names(item)
    elif isinstance(node, dict):
        fields = node.get("fields")
        named = fields.items() if isinstance(fields, dict) else [(node.get("name"), node)]
        for name, field in named:
            if isinstance(field, dict) and field.get("type") in _FIELD_KINDS and isinstance(name, str):
                aliases = _aliases(field.get("validation_alias")) | _aliases(field.get("serialization_alias"))
                if aliases - {name}:
                    yield frozenset({name, *aliases})
        for value in node.values():
            yield from _field_names(value)


def _aliases(alias: object) -> frozenset[str]:
    """The keys an alias in a core schema reads a value from: a name, each of its choices, and
    the last key of an alias path (the one holding the value)."""
    if isinstance(alias, str):
        return frozenset({alias})
    if not isinstance(alias, list) or not alias:
        return frozenset()
    paths = alias if isinstance(alias[0], list) else [alias]
    return frozenset(path[-1] for path in paths if isinstance(path, list) and path and isinstance(path[-1], str))


_FIELD_KINDS = frozenset({"model-field", "typed-dict-field", "dataclass-field"})
