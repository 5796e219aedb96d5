"""Cedar types from JSON Schema: the schema `cedar_schema` generates for a server's tools, and
the shape of each tool's arguments that `CedarPolicy` checks and converts values by.

A tool's input schema (as the MCP SDK builds it from the function's signature) maps string to
String, integer to Long, boolean to Boolean, arrays of those to Sets and objects with properties
to Records (``$ref`` and Optional followed). Anything Cedar cannot type (a number, a map, a
tuple, a model that refers back to itself) is left out of the schema, and `CedarPolicy` refuses
a call that gives it a value: a policy can still test it with ``has``, which would never hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from mcp_guard.model import ToolSpec

__all__ = ["NAMESPACE", "UNDECLARED", "Shape", "arguments_type", "cedar_schema"]

NAMESPACE = "McpGuard"
"""The Cedar namespace `CedarPolicy` maps calls into."""

_SCALARS = {"string": "String", "integer": "Long", "boolean": "Boolean"}
_MAX_DEPTH = 16
_MAX_NODES = 10_000
"""How many JSON Schema nodes typing one tool's arguments may visit: each ``$ref`` is expanded
where it is used, so models using one another several times over fan out exponentially. Past it,
none of the tool's arguments is typed."""


class Shape(NamedTuple):
    """What a tool's input schema says an argument value is, to check and convert it by."""

    kind: str | None
    """The Cedar type (``String``, ``Long``, ``Boolean``, ``Set``, ``Record``); None: not declared."""
    element: Shape | None = None
    """A Set's element."""
    members: Mapping[str, Shape | None] = MappingProxyType({})
    """A Record's declared properties; None for one Cedar cannot type (the generated schema leaves
    it out, and a value for it refuses the call)."""


UNDECLARED = Shape(None)
"""A value the input schema does not declare: shown as sent, whatever its JSON type."""


def cedar_schema(tools: Iterable[ToolSpec], namespace: str = NAMESPACE) -> dict[str, Any]:
    """A Cedar JSON schema for ``tools``: the principal and session types, and one action per tool.

    Each action's ``context.arguments`` is typed from the tool's input schema: string, integer,
    boolean, arrays of those and objects with properties (``$ref`` and Optional followed). An
    argument Cedar cannot type (a number, a map, a tuple, a reference back to a model being typed,
    anything untyped) is left out, and `CedarPolicy` refuses a call that gives it a value; an
    optional or nullable one is not required.
    """
    strings = {"type": "Set", "element": {"type": "String"}}
    actions = {}
    for tool in tools:
        context = {
            "arguments": arguments_type(tool.input_schema)[0],
            "scopes": strings,
            "tool_risk": {"type": "String"},
            "tool_tags": strings,
            "time": {"type": "Long"},
        }
        actions[tool.name] = {
            "appliesTo": {
                "principalTypes": ["Principal"],
                "resourceTypes": ["Session"],
                "context": {"type": "Record", "attributes": context},
            }
        }
    principal = {
        **{name: {"type": "String"} for name in ("issuer", "subject", "client_id", "actor")},
        "scopes": strings,
        "delegated": {"type": "Boolean"},
        "groups": strings,
        "roles": strings,
    }
    session = {"call_count": {"type": "Long"}, "denied_count": {"type": "Long"}, "purpose": {"type": "String"}}
    return {
        namespace: {
            "entityTypes": {
                "Principal": {"shape": {"type": "Record", "attributes": principal}},
                "Session": {"shape": {"type": "Record", "attributes": session}},
            },
            "actions": actions,
        }
    }


def arguments_type(input_schema: Mapping[str, Any] | None) -> tuple[dict[str, Any], Shape]:
    """The Cedar Record type of a tool's arguments, and their shape (nothing declared without a schema).

    An input schema whose type would take more than `_MAX_NODES` nodes types none of its
    arguments: each is one Cedar cannot type.
    """
    if input_schema is None:
        return {"type": "Record", "attributes": {}}, UNDECLARED
    try:
        typed = _Typing(input_schema).type(input_schema, 0)
    except _TooLarge:
        properties = input_schema.get("properties")
        untypeable = dict.fromkeys(properties if isinstance(properties, Mapping) else (), None)
        return {"type": "Record", "attributes": {}}, Shape("Record", members=untypeable)
    if typed is None or typed[1].kind != "Record":
        return {"type": "Record", "attributes": {}}, UNDECLARED
    return typed


class _TooLarge(Exception):
    """Typing an input schema visited more than `_MAX_NODES` nodes."""


class _Typing:
    """One input schema being typed: the ``$ref`` definitions being expanded, and the nodes visited.

    Each use of a ``$ref`` is expanded anew (the Cedar type is a tree), so the nodes visited are
    the nodes of the type: counting them bounds both the work and the schema's size.
    """

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.expanding: set[str] = set()
        self.nodes = 0

    def type(self, node: object, depth: int) -> tuple[dict[str, Any], Shape] | None:
        """The Cedar type and shape of one JSON Schema node; None when Cedar cannot type it."""
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise _TooLarge
        if depth > _MAX_DEPTH or not isinstance(node, Mapping):
            return None
        reference = node.get("$ref")
        if reference is not None:
            return self._expand(reference, depth)
        for combinator in ("allOf", "anyOf", "oneOf"):
            options = node.get(combinator)
            if options is not None:
                return self.type(options[0], depth + 1) if isinstance(options, list) and len(options) == 1 else None
        kind = node.get("type")
        if isinstance(kind, str) and kind in _SCALARS:
            return {"type": _SCALARS[kind]}, Shape(_SCALARS[kind])
        if kind == "array":
            element = self.type(node.get("items"), depth + 1)
            return None if element is None else ({"type": "Set", "element": element[0]}, Shape("Set", element[1]))
        properties = node.get("properties")
        if kind != "object" or not isinstance(properties, Mapping):
            return None
        required = node.get("required")
        required = set(required) if isinstance(required, list) else set()
        attributes: dict[str, Any] = {}
        members: dict[str, Shape | None] = {}
        for name, schema in properties.items():
            schema, nullable = _without_null(schema)
            typed = self.type(schema, depth + 1)
            if typed is None:
                members[name] = None
                continue
            attributes[name] = typed[0] if name in required and not nullable else {**typed[0], "required": False}
            members[name] = typed[1]
        return {"type": "Record", "attributes": attributes}, Shape("Record", members=members)

    def _expand(self, reference: object, depth: int) -> tuple[dict[str, Any], Shape] | None:
        """The type of the definition a ``$ref`` names; None for one that refers back to a
        definition being expanded: Cedar has no recursive types."""
        if not isinstance(reference, str) or reference in self.expanding:
            return None
        self.expanding.add(reference)
        typed = self.type(_definition(reference, self.root), depth + 1)
        self.expanding.remove(reference)
        return typed


def _definition(reference: object, root: Mapping[str, Any]) -> object:
    """The schema a local ``$ref`` (``#/$defs/Name`` or ``#/definitions/Name``) points at, else None."""
    if not isinstance(reference, str):
        return None
    for prefix in ("#/$defs/", "#/definitions/"):
        if reference.startswith(prefix):
            definitions = root.get(prefix[2:-1])
            return definitions.get(reference[len(prefix) :]) if isinstance(definitions, Mapping) else None
    return None


def _without_null(schema: object) -> tuple[object, bool]:
    """A property's schema with a ``null`` alternative removed, and whether there was one."""
    if not isinstance(schema, Mapping):
        return schema, False
    kind = schema.get("type")
    if isinstance(kind, list) and "null" in kind:
        rest = [k for k in kind if k != "null"]
        return ({**schema, "type": rest[0]} if len(rest) == 1 else schema), len(rest) == 1
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            if len(rest) == 1 and len(options) > 1:
                return rest[0], True
    return schema, False
