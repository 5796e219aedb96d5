"""A policy that asks Cedar (through ``cedarpy``) whether each tool call may go ahead.

Install it with ``pip install 'mcp-guard[cedar]'``. The required scopes are checked first,
exactly as `ScopePolicy` checks them; only a call that holds them reaches Cedar. Each call is
shown to Cedar in the ``McpGuard`` namespace:

- principal ``McpGuard::Principal::"<subject>"`` with ``issuer``, ``subject``, ``client_id``
  (String), ``scopes`` (Set<String>, as granted), ``actor`` (the current actor, ``""`` when the
  subject acts itself), ``delegated`` (Boolean), ``groups`` and ``roles`` (Set<String>, from the
  token claims of those names when they are lists of strings, else empty);
- action ``McpGuard::Action::"<tool name>"``: the action is the tool, so a schema can type
  each tool's arguments;
- resource ``McpGuard::Session::"<session id>"`` with ``call_count``, ``denied_count`` (Long)
  and ``purpose`` (String);
- context ``arguments`` (a Record of the call's arguments), ``scopes`` (Set<String>: the
  approved scopes the call runs with), ``tool_risk`` (``"read"``, ``"write"`` or ``"admin"``),
  ``tool_tags`` (Set<String>) and ``time`` (Long, epoch seconds).

Arguments map str to String, int to Long, bool to Boolean, lists to Sets and objects to
Records. Cedar has no float or null: a null is left out (an absent optional argument), as is
every argument the tool's input schema types as something Cedar cannot (a number, a map, a
tuple: `cedar_schema` leaves those out too, so no validated policy can name them). Any other
value Cedar cannot hold (a float where the schema promises an integer, an integer beyond 64
bits, a null inside a list, an object with a key Cedar reserves such as ``__entity``) refuses
the call (``argument_rejected``): dropping it could step around a ``forbid`` that tests ``has``.
So does a value whose JSON type is not the one the input schema declares (``"5"`` for an
integer): the SDK might coerce it, and the policy would have judged another value.

Any Cedar error refuses the call (``policy_error``), even when other policies permit it.
Listing tools asks only the scopes: before a call there are no arguments to show Cedar.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from mcp_guard.model import CallRequest, Decision, Principal, Reason, ToolSpec
from mcp_guard.policy.scopes import ScopePolicy
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeHierarchy

if TYPE_CHECKING:
    import cedarpy

__all__ = ["NAMESPACE", "CedarPolicy", "CedarUnavailable", "cedar_schema"]

NAMESPACE = "McpGuard"
"""The Cedar namespace `CedarPolicy` maps calls into."""

_PRINCIPAL = f"{NAMESPACE}::Principal"
_ACTION = f"{NAMESPACE}::Action"
_SESSION = f"{NAMESPACE}::Session"


_RESERVED = frozenset({"__entity", "__extn", "__expr"})
"""Record keys Cedar's JSON reads as entity or extension escapes, not as data."""

_quote = json.JSONEncoder().encode
"""A string as a JSON string literal."""

_CONTEXT_DUMP = re.compile(r"context `.*` is not valid", re.DOTALL)
"""Cedar's request-validation error quotes the whole context, argument values included."""

_SCALARS = {"string": "String", "integer": "Long", "boolean": "Boolean"}
_LONG = (-(2**63), 2**63 - 1)
_MAX_DEPTH = 16
_CACHE_LIMIT = 4096
_MESSAGE_LIMIT = 300


class CedarUnavailable(ImportError):
    """``cedarpy`` is not installed: `CedarPolicy` refuses to start rather than decide without Cedar."""


class _Shape(NamedTuple):
    """What a tool's input schema says an argument value is, to check and convert it by."""

    kind: str | None
    """The Cedar type (``String``, ``Long``, ``Boolean``, ``Set``, ``Record``); None: not declared."""
    element: _Shape | None = None
    """A Set's element."""
    members: Mapping[str, _Shape | None] = MappingProxyType({})
    """A Record's declared properties; None for one Cedar cannot type (left out of the context)."""


_ANY = _Shape(None)
"""A value the input schema does not declare: shown as sent, whatever its JSON type."""

_EXPECTED = {"String": "a string", "Long": "an integer", "Boolean": "a boolean", "Set": "a list", "Record": "an object"}


class _Unrepresentable(Exception):
    """An argument value Cedar cannot hold; ``path`` names where it sits."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str] = []


class _Known(NamedTuple):
    principal: Principal
    entities: cedarpy.Entities
    uid: dict[str, str]


class _Tool(NamedTuple):
    spec: ToolSpec
    action: dict[str, str]
    shape: _Shape
    entity: str
    """The action's entity as JSON when the schema puts it in action groups, else ``""``."""


class _Scoped(NamedTuple):
    scoped: Decision
    context: str
    """The context members fixed by the tool and the approved scopes, as the end of a JSON object."""
    allowed: dict[tuple[str, ...], Decision]


class CedarPolicy:
    """Decide calls with Cedar policies, after the tool's required scopes (see the module docs).

    ``policies`` is Cedar policy text, parsed once; ``@id("...")`` annotations name the rules a
    decision cites. ``schema`` (Cedar schema text, or its JSON as a string or mapping), or else
    ``tools`` to generate one with `cedar_schema`, makes the policies validated against it here
    and every request validated against it per call. ``hierarchy`` widens granted scopes, as for
    `ScopePolicy`. Raises `ValueError` for policies or a schema that do not parse or validate,
    and `CedarUnavailable` without ``cedarpy``.

    The principal's entity is parsed once per `Principal`; the session's, once per call, and
    only when some policy reads the resource (no policy can tell the difference otherwise).
    """

    def __init__(
        self,
        policies: str,
        *,
        tools: Iterable[ToolSpec] = (),
        schema: str | Mapping[str, Any] | None = None,
        hierarchy: ScopeHierarchy | Mapping[str, str | Iterable[str]] | None = None,
        id: str = "cedar",
        version: str = "1",
    ) -> None:
        try:
            import cedarpy
        except ImportError as missing:
            raise CedarUnavailable("CedarPolicy needs the cedarpy package: pip install 'mcp-guard[cedar]'") from missing
        self.id = id
        self.version = version
        self._scopes = ScopePolicy(hierarchy, id=id, version=version)
        self._is_authorized = cedarpy.is_authorized
        self._parse_entities = cedarpy.Entities.from_json_str
        try:
            self._policies = cedarpy.PolicySet.from_str(policies)
            read = json.loads(cedarpy.policies_to_json_str(policies))
        except ValueError as error:
            raise ValueError(f"the Cedar policies do not parse: {error}") from error
        conditions = [p["conditions"] for kind in ("staticPolicies", "templates") for p in read[kind].values()]
        self._reads_principal = _reads(conditions, "principal", _PRINCIPAL)
        self._reads_session = _reads(conditions, "resource", _SESSION)
        tools = tuple(tools)
        if tools and schema is not None:
            raise ValueError("give tools (to generate the Cedar schema from) or a schema, not both")
        if tools:
            schema = cedar_schema(tools)
        self._schema = _parse_schema(schema) if schema is not None else None
        self._action_parents: dict[str, list[Any]] = {}
        if self._schema is not None:
            _validate(policies, self._schema)
            for entity in json.loads(str(self._parse_entities("[]", self._schema))):
                if entity["uid"]["type"] == _ACTION and entity["parents"]:
                    self._action_parents[entity["uid"]["id"]] = entity["parents"]
        self._nobody = self._parse_entities("[]")
        self._principals: dict[int, _Known] = {}
        self._tools: dict[int, _Tool] = {}
        self._scoped: dict[int, _Scoped] = {}
        for tool in tools:
            self._tool(tool)

    @property
    def hierarchy(self) -> ScopeHierarchy:
        """The scope hierarchy the required scopes are checked with."""
        return self._scopes.hierarchy

    def decide(self, request: CallRequest) -> Decision:
        scoped = self._scopes.decide(request)
        if not scoped.allowed:
            return scoped
        try:
            return self._decide(request, scoped)
        except _Unrepresentable as bad:
            where = f"Argument {'.'.join(bad.path)!r} holds" if bad.path else "The arguments hold"
            return Decision.deny(
                ReasonCode.ARGUMENT_REJECTED,
                f"{where} {bad.what}, so the call is refused.",
                requested=scoped.requested_scopes,
                policy_id=self.id,
                policy_version=self.version,
            )
        except RecursionError:
            return self._error(scoped, "the arguments are nested too deeply")
        except Exception as error:
            return self._error(scoped, f"{type(error).__name__}: {error}")

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        """Whether ``principal`` holds the tool's required scopes; Cedar is not asked (no arguments yet)."""
        return self._scopes.visible(principal, tool)

    def _decide(self, request: CallRequest, scoped: Decision) -> Decision:
        principal, spec, session = request.principal, request.tool, request.session
        known = self._principals.get(id(principal))
        if known is None or known.principal is not principal:
            known = self._principal(principal)
        tool = self._tools.get(id(spec))
        if tool is None or tool.spec is not spec:
            tool = self._tool(spec)
        fixed = self._scoped.get(id(scoped))
        if fixed is None or fixed.scoped is not scoped:
            fixed = self._remember_scoped(scoped, spec)
        context = (
            '{"arguments":' + _record(request.arguments, tool.shape) + ',"time":' + str(int(request.at)) + fixed.context
        )
        entities = known.entities
        if self._reads_session:
            delta = (
                f'[{{"uid":{{"type":"{_SESSION}","id":{_quote(session.id)}}},"attrs":{{"call_count":'
                f'{session.call_count},"denied_count":{session.denied_count},"purpose":{_quote(session.purpose)}}},'
                f'"parents":[]}}{"," if tool.entity else ""}{tool.entity}]'
            )
            entities = entities.with_added_json_str(delta)
        elif tool.entity:
            entities = entities.with_added_json_str(f"[{tool.entity}]")
        call = {
            "principal": known.uid,
            "action": tool.action,
            "resource": {"type": _SESSION, "id": session.id},
            "context": context,
        }
        result = self._is_authorized(call, self._policies, entities, self._schema)
        diagnostics = result.diagnostics
        if diagnostics.errors:
            return self._error(scoped, "; ".join(diagnostics.errors))
        names = diagnostics.id_annotations_by_reason
        rules = tuple(sorted(names.get(reason) or reason for reason in diagnostics.reasons))
        if result.allowed:
            decision = fixed.allowed.get(rules)
            if decision is None:
                decision = Decision(
                    allowed=True,
                    requested_scopes=scoped.requested_scopes,
                    approved_scopes=scoped.approved_scopes,
                    reasons=scoped.reasons,
                    rule_ids=(*scoped.rule_ids, *rules),
                    policy_id=self.id,
                    policy_version=self.version,
                )
                _remember(fixed.allowed, rules, decision)
            return decision
        if len(rules) == 1:
            message = f"Cedar policy {rules[0]!r} forbids this call."
        elif rules:
            message = f"Cedar policies {', '.join(map(repr, rules))} forbid this call."
        else:
            message = f"No Cedar policy permits this call to tool {spec.name!r}."
        return Decision(
            allowed=False,
            requested_scopes=scoped.requested_scopes,
            reasons=(Reason.of(ReasonCode.POLICY_DENIED, message),),
            rule_ids=rules,
            policy_id=self.id,
            policy_version=self.version,
        )

    def _error(self, scoped: Decision, error: str) -> Decision:
        error = _CONTEXT_DUMP.sub("context is not valid", error)
        if len(error) > _MESSAGE_LIMIT:
            error = error[: _MESSAGE_LIMIT - 3] + "..."
        return Decision.deny(
            ReasonCode.POLICY_ERROR,
            f"Cedar could not evaluate this call, so it is refused: {error}",
            requested=scoped.requested_scopes,
            policy_id=self.id,
            policy_version=self.version,
        )

    def _principal(self, principal: Principal) -> _Known:
        """The principal's Cedar entity, parsed once per `Principal` (the identity stage caches those per token)."""
        uid = {"type": _PRINCIPAL, "id": principal.subject}
        entities = self._nobody
        if self._reads_principal:
            claims = principal.claims
            attributes = {
                "issuer": principal.issuer,
                "subject": principal.subject,
                "client_id": principal.client_id,
                "scopes": sorted(principal.scopes),
                "actor": principal.actor_chain[0] if principal.actor_chain else "",
                "delegated": bool(principal.actor_chain),
                "groups": _strings(claims.get("groups")),
                "roles": _strings(claims.get("roles")),
            }
            entities = self._parse_entities(json.dumps([{"uid": uid, "attrs": attributes, "parents": []}]))
        known = _Known(principal, entities, uid)
        _remember(self._principals, id(principal), known)
        return known

    def _tool(self, spec: ToolSpec) -> _Tool:
        """What stays fixed for a tool: its action, the shape of its arguments, its action groups."""
        parents = self._action_parents.get(spec.name)
        entity = ""
        if parents:
            entity = json.dumps({"uid": {"type": _ACTION, "id": spec.name}, "attrs": {}, "parents": parents})
        tool = _Tool(spec, {"type": _ACTION, "id": spec.name}, _arguments_type(spec.input_schema)[1], entity)
        _remember(self._tools, id(spec), tool)
        return tool

    def _remember_scoped(self, scoped: Decision, spec: ToolSpec) -> _Scoped:
        context = (
            f',"scopes":{json.dumps(sorted(scoped.approved_scopes))},"tool_risk":{_quote(str(spec.risk))}'
            f',"tool_tags":{json.dumps(sorted(spec.tags))}}}'
        )
        fixed = _Scoped(scoped, context, {})
        _remember(self._scoped, id(scoped), fixed)
        return fixed


def cedar_schema(tools: Iterable[ToolSpec], namespace: str = NAMESPACE) -> dict[str, Any]:
    """A Cedar JSON schema for ``tools``: the principal and session types, and one action per tool.

    Each action's ``context.arguments`` is typed from the tool's input schema: string, integer,
    boolean, arrays of those and objects with properties (``$ref`` and Optional followed). An
    argument Cedar cannot type (a number, a map, a tuple, anything untyped) is left out, so a
    policy that names it fails validation; an optional or nullable one is not required.
    """
    strings = {"type": "Set", "element": {"type": "String"}}
    actions = {}
    for tool in tools:
        context = {
            "arguments": _arguments_type(tool.input_schema)[0],
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


def _parse_schema(schema: str | Mapping[str, Any]) -> cedarpy.Schema:
    import cedarpy

    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        if text.lstrip().startswith("{"):
            return cedarpy.Schema.from_json_str(text)
        return cedarpy.Schema.from_str(text)
    except ValueError as error:
        raise ValueError(f"the Cedar schema does not parse: {error}") from error


def _validate(policies: str, schema: cedarpy.Schema) -> None:
    import cedarpy

    result = cedarpy.validate_policies(policies, schema)
    if not result.validation_passed:
        names = result.id_annotations_by_policy_id
        errors = "; ".join(f"[{names.get(e.policy_id) or e.policy_id}] {e.error}" for e in result.errors)
        raise ValueError(f"the Cedar policies do not validate against the schema: {errors}")


def _reads(node: object, variable: str, entity_type: str) -> bool:
    """Whether a policy condition (Cedar's JSON form) names ``variable`` or an entity of ``entity_type``."""
    if isinstance(node, dict):
        uid = node.get("__entity")
        if node.get("Var") == variable or (isinstance(uid, dict) and uid.get("type") == entity_type):
            return True
        return any(_reads(value, variable, entity_type) for value in node.values())
    return isinstance(node, list) and any(_reads(value, variable, entity_type) for value in node)


def _strings(claim: object) -> list[str]:
    """A claim as a list of strings when it is one, else empty."""
    if isinstance(claim, list | tuple) and all(isinstance(item, str) for item in claim):
        return sorted(set(claim))
    return []


def _remember(cache: dict[Any, Any], key: object, value: object) -> None:
    """Store in a bounded cache, emptying it when full (entries are cheap to rebuild)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


# -- arguments --------------------------------------------------------------------------------


def _record(values: Mapping[str, object], shape: _Shape) -> str:
    """An argument Record as Cedar JSON: nulls and properties Cedar cannot type left out."""
    members = []
    declared = shape.members
    for name, value in values.items():
        if not isinstance(name, str) or name in _RESERVED:
            raise _Unrepresentable(f"the key {name!r}, which Cedar reserves")
        inner = declared.get(name, _ANY)
        if inner is None or value is None:
            continue
        try:
            members.append(_quote(name) + ":" + _value(value, inner))
        except _Unrepresentable as bad:
            bad.path.insert(0, name)
            raise
    return "{" + ",".join(members) + "}"


def _value(value: object, shape: _Shape) -> str:
    """One argument value as Cedar JSON, when its JSON type is the one the tool declares (if any).

    A value of another type is refused rather than shown: the SDK may coerce it (``"5"`` to 5),
    and the policy would have judged something other than what the tool receives.
    """
    kind = shape.kind
    if isinstance(value, str):
        if kind is None or kind == "String":
            return _quote(value)
    elif isinstance(value, bool):
        if kind is None or kind == "Boolean":
            return "true" if value else "false"
    elif isinstance(value, int):
        if kind is None or kind == "Long":
            if _LONG[0] <= value <= _LONG[1]:
                return int.__repr__(value)
            raise _Unrepresentable("an integer beyond Cedar's 64-bit Long")
    elif isinstance(value, dict):
        if kind is None or kind == "Record":
            return _record(value, shape)
    elif isinstance(value, list | tuple):
        if kind is None or kind == "Set":
            if any(item is None for item in value):
                raise _Unrepresentable("a null inside a list, which Cedar cannot represent")
            element = shape.element or _ANY
            return "[" + ",".join([_value(item, element) for item in value]) + "]"
    else:
        raise _Unrepresentable(f"a {type(value).__name__}, which Cedar cannot represent")
    raise _Unrepresentable(f"a {type(value).__name__} where the tool takes {_EXPECTED[str(kind)]}")


# -- JSON Schema to Cedar types ---------------------------------------------------------------


def _arguments_type(input_schema: Mapping[str, Any] | None) -> tuple[dict[str, Any], _Shape]:
    """The Cedar Record type of a tool's arguments, and their shape (nothing declared without a schema)."""
    typed = _type(input_schema, input_schema, 0) if input_schema is not None else None
    if typed is None or typed[1].kind != "Record":
        return {"type": "Record", "attributes": {}}, _ANY
    return typed


def _type(node: object, root: Mapping[str, Any], depth: int) -> tuple[dict[str, Any], _Shape] | None:
    """The Cedar type and shape of one JSON Schema node; None when Cedar cannot type it."""
    if depth > _MAX_DEPTH or not isinstance(node, Mapping):
        return None
    reference = node.get("$ref")
    if reference is not None:
        return _type(_definition(reference, root), root, depth + 1)
    for combinator in ("allOf", "anyOf", "oneOf"):
        options = node.get(combinator)
        if options is not None:
            return _type(options[0], root, depth + 1) if isinstance(options, list) and len(options) == 1 else None
    kind = node.get("type")
    if isinstance(kind, str) and kind in _SCALARS:
        return {"type": _SCALARS[kind]}, _Shape(_SCALARS[kind])
    if kind == "array":
        element = _type(node.get("items"), root, depth + 1)
        return None if element is None else ({"type": "Set", "element": element[0]}, _Shape("Set", element[1]))
    properties = node.get("properties")
    if kind != "object" or not isinstance(properties, Mapping):
        return None
    required = node.get("required")
    required = set(required) if isinstance(required, list) else set()
    attributes: dict[str, Any] = {}
    members: dict[str, _Shape | None] = {}
    for name, schema in properties.items():
        schema, nullable = _without_null(schema)
        typed = _type(schema, root, depth + 1)
        if typed is None:
            members[name] = None
            continue
        attributes[name] = typed[0] if name in required and not nullable else {**typed[0], "required": False}
        members[name] = typed[1]
    return {"type": "Record", "attributes": attributes}, _Shape("Record", members=members)


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
