"""A policy that asks Cedar (through ``cedarpy``) whether each tool call may go ahead.

Install it with ``pip install 'mcp-guard[cedar]'``. The required scopes are checked first,
exactly as `ScopePolicy` checks them; only a call that holds them reaches Cedar. Each call is
shown to Cedar in the ``McpGuard`` namespace:

- principal ``McpGuard::Principal::"<subject>"`` with ``issuer``, ``subject``, ``client_id``
  (String), ``scopes`` (Set<String>, as granted), ``actor`` (the current actor, ``""`` when the
  subject acts itself), ``delegated`` (Boolean), ``groups`` and ``roles`` (Set<String>: the
  strings in the token claims of those names, a lone string as one, as `PrincipalRule` reads them);
- action ``McpGuard::Action::"<tool name>"``: the action is the tool, so a schema can type
  each tool's arguments;
- resource ``McpGuard::Session::"<session id>"`` with ``call_count``, ``denied_count`` (Long)
  and ``purpose`` (String);
- context ``arguments`` (a Record of the call's arguments), ``scopes`` (Set<String>: the
  approved scopes the call runs with), ``tool_risk`` (``"read"``, ``"write"`` or ``"admin"``),
  ``tool_tags`` (Set<String>) and ``time`` (Long, epoch seconds).

Arguments map str to String, int to Long, bool to Boolean, lists to Sets and objects to
Records. Cedar has no float or null: a null is left out (an absent optional argument). The
schema generated from the tools (``tools=``) leaves out every argument the tool's input schema
types as something Cedar cannot (a number, a map, a tuple, a model that refers back to itself),
and a call that gives one a value is refused (``argument_rejected``): a policy can still test it
with ``has``, which would never hold. Without that schema it is shown as sent. Any other
value Cedar cannot hold (a float where the schema promises an integer, an integer beyond 64
bits, a null inside a list, an object with a key Cedar reserves such as ``__entity``) refuses
the call (``argument_rejected``): dropping it could step around a ``forbid`` that tests ``has``.
So does a value whose JSON type is not the one the input schema declares (``"5"`` for an
integer): the SDK might coerce it, and the policy would have judged another value.

Any Cedar error raises `CedarError`, even when other Cedar policies permit the call, and a
combination (`AnyOf` too) passes it on: the guard refuses the call with ``policy_error`` alone and
keeps the error's text in the audit event's ``detail``. Cedar quotes argument values in it, so
for a tool that redacts arguments (``redact=``) the guard withholds it. Listing tools asks only the scopes: before a call there are no
arguments to show Cedar.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from mcp_guard.audit.arguments import DETAIL_LIMIT
from mcp_guard.memo import remember
from mcp_guard.model import CallRequest, Decision, Principal, Reason, ToolSpec
from mcp_guard.policy.cedar_schema import NAMESPACE, UNDECLARED, Shape, arguments_type, cedar_schema
from mcp_guard.policy.scopes import ScopePolicy
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeHierarchy

if TYPE_CHECKING:
    import cedarpy

__all__ = ["NAMESPACE", "CedarError", "CedarPolicy", "CedarUnavailable", "cedar_schema"]

_PRINCIPAL = f"{NAMESPACE}::Principal"
_ACTION = f"{NAMESPACE}::Action"
_SESSION = f"{NAMESPACE}::Session"


_RESERVED = frozenset({"__entity", "__extn", "__expr"})
"""Record keys Cedar's JSON reads as entity or extension escapes, not as data."""

_quote = json.JSONEncoder().encode
"""A string as a JSON string literal."""

_CONTEXT_OPENS, _CONTEXT_CLOSES = "context `", "` is not valid"
"""How Cedar's request-validation error quotes the whole context it refuses, argument values
included: left out of the ``detail``."""

_LONG = (-(2**63), 2**63 - 1)
_CACHE_LIMIT = 4096
_DETAIL_LIMIT = DETAIL_LIMIT - len("CedarError: ")
"""The characters of Cedar's error text kept: the guard keeps 300 of a ``detail``, type name included."""


class CedarUnavailable(ImportError):
    """``cedarpy`` is not installed: `CedarPolicy` refuses to start rather than decide without Cedar."""


class CedarError(Exception):
    """Cedar could not evaluate a call. The guard refuses it with ``policy_error`` and keeps this
    text, bounded, in the audit ``detail`` (withheld for a tool that redacts arguments)."""


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
    shape: Shape
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

    abstains = False

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
        self._generated = bool(tools)  # the policies were validated against these tools' own types
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
        """The required scopes' decision, then Cedar's; raises `CedarError` when Cedar cannot evaluate the call."""
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
            failure = "the arguments are nested too deeply"
        except CedarError as error:
            failure = str(error)
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
        raise CedarError(_detail(failure))

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
        if diagnostics.errors:  # Cedar's own text: `decide` redacts it
            raise CedarError("; ".join(diagnostics.errors))
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
                remember(fixed.allowed, rules, decision, _CACHE_LIMIT)
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
        remember(self._principals, id(principal), known, _CACHE_LIMIT)
        return known

    def _tool(self, spec: ToolSpec) -> _Tool:
        """What stays fixed for a tool: its action, the shape of its arguments, its action groups."""
        parents = self._action_parents.get(spec.name)
        entity = ""
        if parents:
            entity = json.dumps({"uid": {"type": _ACTION, "id": spec.name}, "attrs": {}, "parents": parents})
        shape = arguments_type(spec.input_schema)[1]
        tool = _Tool(spec, {"type": _ACTION, "id": spec.name}, shape if self._generated else _shown(shape), entity)
        remember(self._tools, id(spec), tool, _CACHE_LIMIT)
        return tool

    def _remember_scoped(self, scoped: Decision, spec: ToolSpec) -> _Scoped:
        context = (
            f',"scopes":{json.dumps(sorted(scoped.approved_scopes))},"tool_risk":{_quote(str(spec.risk))}'
            f',"tool_tags":{json.dumps(sorted(spec.tags))}}}'
        )
        fixed = _Scoped(scoped, context, {})
        remember(self._scoped, id(scoped), fixed, _CACHE_LIMIT)
        return fixed


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
    """The strings a claim holds, read as `PrincipalRule` reads them: a string is one, a list
    gives its string items (others are passed over), anything else none. Dropping a whole list
    for one odd item, or a lone string, would hide a ``groups`` value a ``forbid`` looks for."""
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, list | tuple):
        return sorted({item for item in claim if isinstance(item, str)})
    return []


def _shown(shape: Shape) -> Shape:
    """``shape`` with the members Cedar cannot type shown as sent rather than refused.

    Refusing them is needed only under the schema generated from the same tools, which has no
    attribute to show them in. Otherwise they are shown as sent, and a value Cedar cannot hold
    refuses the call.
    """
    if not shape.members and shape.element is None:
        return shape
    return shape._replace(
        element=_shown(shape.element) if shape.element is not None else None,
        members={name: UNDECLARED if member is None else _shown(member) for name, member in shape.members.items()},
    )


# -- errors -----------------------------------------------------------------------------------


def _detail(failure: str) -> str:
    """Cedar's error text as the audit ``detail`` may keep it (the guard withholds it for a tool
    that redacts arguments, as Cedar quotes them): the context it may quote whole left out,
    found in one pass (no pattern that backtracks over hostile text), and bounded."""
    opens, closes = failure.find(_CONTEXT_OPENS), failure.rfind(_CONTEXT_CLOSES)
    if 0 <= opens < closes:
        failure = f"{failure[:opens]}context is not valid{failure[closes + len(_CONTEXT_CLOSES) :]}"
    return failure if len(failure) <= _DETAIL_LIMIT else failure[: _DETAIL_LIMIT - 3] + "..."


# -- arguments --------------------------------------------------------------------------------


def _record(values: Mapping[str, object], shape: Shape) -> str:
    """An argument Record as Cedar JSON, nulls left out. A value for a property the generated schema
    leaves out refuses the call: dropped, it would step around a ``forbid`` that tests ``has``."""
    members = []
    declared = shape.members
    for name, value in values.items():
        if not isinstance(name, str) or name in _RESERVED:
            raise _Unrepresentable(f"the key {name!r}, which Cedar reserves")
        if value is None:
            continue
        inner = declared.get(name, UNDECLARED)
        try:
            if inner is None:
                raise _Unrepresentable(
                    f"a {type(value).__name__}, which the Cedar schema generated from the tools cannot type"
                )
            members.append(_quote(name) + ":" + _value(value, inner))
        except _Unrepresentable as bad:
            bad.path.insert(0, name)
            raise
    return "{" + ",".join(members) + "}"


def _value(value: object, shape: Shape) -> str:
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
            element = shape.element or UNDECLARED
            return "[" + ",".join([_value(item, element) for item in value]) + "]"
    else:
        raise _Unrepresentable(f"a {type(value).__name__}, which Cedar cannot represent")
    raise _Unrepresentable(f"a {type(value).__name__} where the tool takes {_EXPECTED[str(kind)]}")
