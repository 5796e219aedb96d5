"""The Cedar adapter: the request mapping, scopes first, fail-closed errors, the schema, and the SDK end to end."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from mcp_guard import GUARD_DENIED, EventKind, Guard, GuardMiddleware, MemoryAuditSink, ReasonCode
from mcp_guard.model import CallRequest, Decision, Principal, Session, ToolSpec
from mcp_guard.policy import AnyOf, PrincipalRule, RulePolicy, ScopePolicy
from mcp_guard.policy.cedar import CedarError, CedarPolicy, CedarUnavailable, cedar_schema
from mcp_guard.testing import access_token, acting_as

NOW = 1_900_000_000.0
ISSUER = "https://auth.example.test"


def cedarpy() -> Any:
    return pytest.importorskip("cedarpy")


def tools() -> Mapping[str, ToolSpec]:
    """Tools declared the way servers declare them, so each carries the SDK's input schema."""
    guard = Guard(scope_hierarchy={"files:write": "files:read"})

    @guard.tool(scopes="files:read", tags=["files"])
    def read_file(path: str, limit: int = 10, ratio: float = 1.0, encoding: str | None = None) -> str:
        return path

    @guard.tool(scopes="files:write", optional_scopes="mail:send", risk="write")
    def write_file(path: str, text: str) -> str:
        return path

    return guard.tools


def principal(
    subject: str = "alice",
    scopes: str = "files:read",
    *,
    actors: tuple[str, ...] = (),
    **claims: Any,
) -> Principal:
    return Principal(
        ISSUER,
        subject,
        "app-1",
        frozenset(scopes.split()),
        actor_chain=actors,
        claims=MappingProxyType(claims),
    )


def call(
    who: Principal,
    tool: ToolSpec,
    arguments: Mapping[str, Any] | None = None,
    *,
    call_count: int = 0,
    purpose: str = "",
) -> CallRequest:
    session = Session("s-1", who.binding, NOW, NOW + 3600, 900, NOW, NOW + 3600, purpose, call_count=call_count)
    return CallRequest(who, session, tool, arguments if arguments is not None else {"path": "/docs/a"}, NOW)


def decide(policies: str, who: Principal, tool: str = "read_file", arguments: Any = None, **options: Any) -> Decision:
    cedarpy()
    return CedarPolicy(policies, **options).decide(call(who, tools()[tool], arguments))


PERMIT_ALL = "permit (principal, action, resource);"


# -- the request mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "allowed"),
    [
        ('principal.issuer == "https://auth.example.test"', True),
        ('principal.client_id == "app-1" && principal.subject == "alice"', True),
        ('principal.scopes.contains("files:read")', True),
        ('principal.groups.contains("eng")', True),
        ('principal.groups.contains("ops")', False),
        ('principal.roles.contains("admin")', False),
        ("principal.delegated", False),
        ('principal.actor == ""', True),
        ('context.tool_risk == "read" && context.tool_tags.contains("files")', True),
        ("context.time == 1900000000", True),
        ('resource.purpose == "triage" && resource.call_count == 0 && resource.denied_count == 0', True),
        ('action == McpGuard::Action::"read_file"', True),
        ('action == McpGuard::Action::"write_file"', False),
    ],
)
def test_each_fact_of_the_call_reaches_cedar(condition: str, allowed: bool) -> None:
    cedarpy()
    who = principal(groups=["eng", "docs"], roles={"admin": True})  # an object holds no roles
    policy = CedarPolicy(f"permit (principal, action, resource) when {{ {condition} }};")
    decision = policy.decide(call(who, tools()["read_file"], purpose="triage"))
    assert decision.allowed is allowed
    assert decision.policy_id == "cedar"


def test_scope_constraints_need_no_entity_data() -> None:
    policies = 'permit (principal in McpGuard::Principal::"alice", action, resource in McpGuard::Session::"s-1");'
    assert decide(policies, principal()).allowed
    assert not decide(policies, principal("bob")).allowed


def test_forbid_by_group_wins_over_permit() -> None:
    policies = (
        PERMIT_ALL
        + '\n@id("no-contractors") forbid (principal, action, resource) when { principal.groups.contains("contractors") };'
    )
    assert decide(policies, principal(groups=["eng"])).allowed
    decision = decide(policies, principal(groups=["eng", "contractors"]))
    assert (decision.allowed, decision.reason.code) == (False, ReasonCode.POLICY_DENIED)
    assert decision.rule_ids == ("no-contractors",)
    assert "'no-contractors'" in decision.reason.message


@pytest.mark.parametrize("groups", ["contractors", ["contractors", 7], ("eng", "contractors", None)])
def test_groups_are_read_as_a_principal_rule_reads_them(groups: object) -> None:
    """A lone string is one group and a list's strings count despite odd items, as for
    `PrincipalRule`: dropping them would let a forbid on the group pass."""
    policies = PERMIT_ALL + '\nforbid (principal, action, resource) when { principal.groups.contains("contractors") };'
    assert not decide(policies, principal(groups=groups)).allowed
    assert (
        not RulePolicy([PrincipalRule("r", effect="deny", claims={"groups": {"contractors"}})])
        .decide(call(principal(groups=groups), tools()["read_file"]))
        .allowed
    )
    assert decide(policies, principal(roles="contractors")).allowed  # roles are not groups


def test_delegation_is_visible_to_policies() -> None:
    policies = """
    permit (principal, action, resource) when { !principal.delegated };
    permit (principal, action, resource) when { principal.delegated && principal.actor == "agent-7" };
    """
    assert decide(policies, principal()).allowed
    assert decide(policies, principal(actors=("agent-7", "orchestrator"))).allowed
    assert not decide(policies, principal(actors=("agent-9",))).allowed


def test_nothing_permitted_is_denied_and_says_so() -> None:
    decision = decide('permit (principal, action == McpGuard::Action::"write_file", resource);', principal())
    assert (decision.allowed, decision.reason.code, decision.rule_ids) == (False, ReasonCode.POLICY_DENIED, ())
    assert decision.reason.message == "No Cedar policy permits this call to tool 'read_file'."
    assert (decision.policy_id, decision.policy_version) == ("cedar", "1")


def test_rule_ids_name_the_determining_policies() -> None:
    policies = '@id("readers") permit (principal, action, resource);\npermit (principal, action, resource);'
    decision = decide(policies, principal())
    assert decision.allowed
    assert decision.rule_ids == ("scopes.required", "policy1", "readers")


# -- typed arguments ----------------------------------------------------------------------------

LIMITED = """
@id("bounded-reads")
permit (principal, action == McpGuard::Action::"read_file", resource)
when { context.arguments has limit && context.arguments.limit <= 100 };
@id("no-secrets")
forbid (principal, action, resource) when { context.arguments.path like "/secrets/*" };
"""


@pytest.mark.parametrize("schema", [False, True], ids=["no-schema", "schema"])
@pytest.mark.parametrize(
    ("arguments", "allowed"),
    [
        ({"path": "/docs/a", "limit": 100}, True),
        ({"path": "/docs/a", "limit": 101}, False),
        ({"path": "/secrets/key", "limit": 1}, False),
        ({"path": "/docs/a", "limit": 5, "encoding": None}, True),  # a null is an absent argument
    ],
)
def test_typed_arguments(arguments: dict[str, Any], allowed: bool, schema: bool) -> None:
    options: dict[str, Any] = {"tools": tools().values()} if schema else {}
    assert decide(LIMITED, principal(), arguments=arguments, **options).allowed is allowed


def untyped_tools() -> Mapping[str, ToolSpec]:
    """A tool for each kind of argument the generated Cedar schema cannot type."""
    guard = Guard()

    @guard.tool(scopes="pay")
    def by_float(to: str, amount: float | None = None) -> str:
        return to

    @guard.tool(scopes="pay")
    def by_map(to: str, amount: dict[str, str] | None = None) -> str:
        return to

    @guard.tool(scopes="pay")
    def by_union(to: str, amount: str | int | None = None) -> str:
        return to

    @guard.tool(scopes="pay")
    def by_floats(to: str, amount: list[float] | None = None) -> str:
        return to

    return guard.tools


@pytest.mark.parametrize(
    ("tool", "amount"),
    [("by_float", 1e6), ("by_map", {"usd": "1e6"}), ("by_union", "1e6"), ("by_union", 10**6), ("by_floats", [1e6])],
)
def test_a_value_for_an_argument_the_generated_schema_leaves_out_refuses_the_call(tool: str, amount: object) -> None:
    """The generated schema cannot type ``amount``, yet ``has amount`` validates against it (and is
    false): dropping the value would let the call past the ``forbid`` that looks for it."""
    cedarpy()
    policies = PERMIT_ALL + "\nforbid (principal, action, resource) when { context.arguments has amount };"
    spec = untyped_tools()[tool]
    policy = CedarPolicy(policies, tools=untyped_tools().values())
    who = principal(scopes="pay")
    refused = policy.decide(call(who, spec, {"to": "bob", "amount": amount}))
    assert (refused.allowed, refused.reason.code) == (False, ReasonCode.ARGUMENT_REJECTED)
    assert refused.reason.message == (
        f"Argument 'amount' holds a {type(amount).__name__}, which the Cedar schema generated from the tools "
        "cannot type, so the call is refused."
    )
    assert policy.decide(call(who, spec, {"to": "bob", "amount": None})).allowed  # a null is an absent argument
    assert policy.decide(call(who, spec, {"to": "bob"})).allowed
    assert not CedarPolicy(policies).decide(call(who, spec, {"to": "bob", "amount": amount})).allowed  # shown as sent


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        ({"path": "/docs/a", "limit": 5.0}, "Argument 'limit' holds a float"),
        ({"path": "/docs/a", "limit": "5"}, "Argument 'limit' holds a str where the tool takes an integer"),
        ({"path": "/docs/a", "limit": True}, "Argument 'limit' holds a bool where the tool takes an integer"),
        ({"path": ["/docs/a"]}, "Argument 'path' holds a list where the tool takes a string"),
        ({"path": "/docs/a", "limit": 2**64}, "Argument 'limit' holds an integer beyond"),
        ({"path": "/a", "tags": ["x", None]}, "Argument 'tags' holds a null inside a list"),
        (
            {"path": "/a", "o": {"__entity": {"type": "McpGuard::Principal", "id": "alice"}}},
            "'o' holds the key '__entity'",
        ),
        ({"__extn": {"fn": "ip", "arg": "10.0.0.1"}}, "The arguments hold the key '__extn'"),
    ],
)
def test_values_cedar_cannot_hold_refuse_the_call(arguments: dict[str, Any], refusal: str) -> None:
    decision = decide(PERMIT_ALL, principal(), arguments=arguments)
    assert (decision.allowed, decision.reason.code) == (False, ReasonCode.ARGUMENT_REJECTED)
    assert refusal in decision.reason.message


def test_argument_values_are_mapped_to_cedar_types() -> None:
    cedarpy()
    tool = ToolSpec("query")  # no input schema: every argument is shown as it is
    arguments = {"name": "x", "n": -3, "on": True, "ids": [1, 2, 2], "filter": {"tags": ["a"], "depth": {"max": 2}}}
    condition = (
        'context.arguments.name == "x" && context.arguments.n == -3 && context.arguments.on && '
        'context.arguments.ids == [2, 1] && context.arguments.filter.tags.contains("a") && '
        "context.arguments.filter.depth.max == 2"
    )
    policy = CedarPolicy(f"permit (principal, action, resource) when {{ {condition} }};")
    assert policy.decide(call(principal(), tool, arguments)).allowed


# -- scopes first -------------------------------------------------------------------------------


def test_scopes_are_trimmed_through_the_adapter() -> None:
    cedarpy()
    policy = CedarPolicy(
        'permit (principal, action, resource) when { context.scopes == ["files:read"] };\n'
        'permit (principal, action, resource) when { context.scopes == ["files:write", "mail:send"] };',
        hierarchy={"files:write": "files:read"},
    )
    who = principal(scopes="files:write mail:send calendar:read")
    read = policy.decide(call(who, tools()["read_file"]))
    assert (read.allowed, read.outcome, read.approved_scopes) == (True, "trimmed", frozenset({"files:read"}))
    assert read.requested_scopes == who.scopes
    write = policy.decide(call(who, tools()["write_file"], {"path": "/a", "text": "t"}))
    assert (write.allowed, write.approved_scopes) == (True, frozenset({"files:write", "mail:send"}))


def test_insufficient_scope_never_reaches_cedar(monkeypatch: pytest.MonkeyPatch) -> None:
    cedarpy()
    policy = CedarPolicy(PERMIT_ALL)
    asked: list[object] = []
    monkeypatch.setattr(policy, "_is_authorized", lambda *args: asked.append(args))
    decision = policy.decide(call(principal(scopes="mail:send"), tools()["write_file"], {"path": "/a", "text": "t"}))
    assert (decision.allowed, decision.reason.code) == (False, ReasonCode.INSUFFICIENT_SCOPE)
    assert decision.missing_scopes == {"files:write"}
    assert decision.rule_ids == ("scopes.required",) and decision.policy_id == "cedar"
    assert asked == []


def test_the_tools_delegation_rule_still_applies() -> None:
    cedarpy()
    tool = ToolSpec("transfer", scopes=frozenset({"files:read"}), delegation="forbid")
    decision = CedarPolicy(PERMIT_ALL).decide(call(principal(actors=("agent-7",)), tool))
    assert decision.reason.code == ReasonCode.DELEGATION_FORBIDDEN


def test_listing_asks_only_the_scopes() -> None:
    cedarpy()
    policy = CedarPolicy("forbid (principal, action, resource);")
    assert policy.visible(principal(), tools()["read_file"])
    assert not policy.visible(principal(), tools()["write_file"])
    assert CedarPolicy(PERMIT_ALL, hierarchy={"files:write": "files:read"}).hierarchy.expand(
        frozenset({"files:write"})
    ) == {
        "files:read",
        "files:write",
    }


# -- failing closed -----------------------------------------------------------------------------


def failure(policies: str, tool: ToolSpec, arguments: Mapping[str, Any], **options: Any) -> str:
    """The text of the `CedarError` the call raises (what the audit ``detail`` keeps for a tool
    that redacts no argument)."""
    cedarpy()
    with pytest.raises(CedarError) as raised:
        CedarPolicy(policies, **options).decide(call(principal(), tool, arguments))
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # no unredacted text chained
    return str(raised.value)


def test_an_evaluation_error_denies_even_when_another_policy_permits() -> None:
    policies = PERMIT_ALL + "\nforbid (principal, action, resource) when { context.arguments.missing == 1 };"
    text = failure(policies, tools()["read_file"], {"path": "/docs/a"})
    assert "policy1" in text and "missing" in text
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit])
    guard.declare(tools()["read_file"])
    for policy in (CedarPolicy(policies), AnyOf(CedarPolicy(policies), ScopePolicy())):  # another member permits
        guard.policy = policy
        refused = anyio.run(guard.authorize, "read_file", {"path": "/docs/a"}, access_token("alice", "files:read"))
        assert (refused.allowed, refused.decision.reason.code) == (False, ReasonCode.POLICY_ERROR)
        assert "policy1" in str(audit.events[-1].detail) and "missing" in str(audit.events[-1].detail)


def test_a_request_the_schema_rejects_is_an_error_without_echoing_arguments() -> None:
    extra = failure(PERMIT_ALL, tools()["read_file"], {"path": "/a", "extra": "x"}, tools=tools().values())
    assert "`extra` should not exist" in extra
    schema = """
    namespace McpGuard {
      entity Principal; entity Session;
      action "read_file" appliesTo { principal: [Principal], resource: [Session], context: {
        arguments: {path: Long}, scopes: Set<String>, tool_risk: String, tool_tags: Set<String>, time: Long} };
    }
    """
    mistyped = failure(PERMIT_ALL, tools()["read_file"], {"path": "/docs/secret-name"}, schema=schema)
    assert "context is not valid" in mistyped and "secret-name" not in mistyped


def test_an_exception_from_cedar_denies_with_a_bounded_message(monkeypatch: pytest.MonkeyPatch) -> None:
    cedarpy()
    policy = CedarPolicy(PERMIT_ALL)

    def explode(*args: object) -> None:
        raise RuntimeError("engine exploded " + "x" * 1000)

    monkeypatch.setattr(policy, "_is_authorized", explode)
    with pytest.raises(CedarError) as raised:
        policy.decide(call(principal(), tools()["read_file"]))
    text = str(raised.value)
    assert text.startswith("RuntimeError: engine exploded") and text.endswith("...")
    assert len("CedarError: " + text) <= 300  # as much as the guard keeps of an audit detail
    assert raised.value.__context__ is None


class Login(BaseModel):
    user: str
    pin: int


def secret_tools() -> Mapping[str, ToolSpec]:
    """A tool with redacted arguments (``addr``, ``pin``, ``vault``, ``login``) and open ones."""
    guard = Guard()

    @guard.tool(scopes="files:read", redact=["addr", "pin", "vault", "login"])
    def connect(
        addr: str = "",
        pin: int = 0,
        note: str = "",
        login: Login | None = None,
        options: dict[str, Any] | None = None,
        vault: dict[str, Any] | None = None,
    ) -> str:
        return addr

    return guard.tools


WITHHELD = "CedarError (its text is withheld: the tool redacts arguments it may quote)"


def test_cedars_error_text_is_bounded_and_leaves_a_quoted_context_out() -> None:
    permit = "permit (principal, action, resource) when { ip(context.arguments.%s).isLoopback() };"
    text = failure(permit % "note", secret_tools()["connect"], {"note": "an open note"})
    assert text.endswith("invalid IP address: an open note")
    long = failure(permit % "note", secret_tools()["connect"], {"note": "y" * 1000})
    assert len("CedarError: " + long) <= 300 and long.endswith("y...")
    looped: list[Any] = ["x"]
    looped.append(looped)
    assert failure(permit % "addr", secret_tools()["connect"], {"vault": {"loop": looped}}) == (
        "the arguments are nested too deeply"
    )


@pytest.mark.anyio
async def test_a_cedar_error_reaches_the_caller_and_the_span_as_its_code_alone(
    mode: str, spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller and the span get a fixed text. Cedar quotes argument values, in forms no
    redaction can recognise (cut short, computed from them): for a tool that redacts arguments
    its text is withheld from the audit ``detail`` and the log; for one that redacts none it is kept."""
    cedarpy()
    audit = MemoryAuditSink()
    guard = Guard(audit=[audit])
    server = MCPServer("cedar", middleware=[GuardMiddleware(guard)])

    @server.tool()
    @guard.tool(scopes="net:use", redact=["addr"])
    def connect(addr: str, pin: int = 0) -> str:
        return addr

    @server.tool()
    @guard.tool(scopes="net:use")
    def ping(addr: str) -> str:
        return addr

    guard.policy = CedarPolicy("permit (principal, action, resource) when { ip(context.arguments.addr).isLoopback() };")
    with acting_as(access_token("alice", "net:use")):
        async with Client(server, mode=mode) as client:
            for tool, addr in (("connect", "hunter2-ADDR"), ("ping", "an-open-addr")):
                with pytest.raises(MCPError) as raised:
                    await client.call_tool(tool, {"addr": addr})
                assert raised.value.error.message == "The call was refused because the policy failed to evaluate it."
                assert raised.value.error.data == {"reason": "policy_error"}
    redacting, open_one = [event.detail for event in audit.events if event.kind == EventKind.CALL_DECIDED]
    assert redacting == WITHHELD
    assert open_one is not None and open_one.endswith("invalid IP address: an-open-addr")
    assert "hunter2" not in repr(spans.get_finished_spans()) + repr(audit.events) + caplog.text
    assert "an-open-addr" not in repr(spans.get_finished_spans())


@pytest.mark.anyio
async def test_a_failing_cedar_candidate_withholds_its_text_for_a_tool_that_redacts() -> None:
    cedarpy()
    audit = MemoryAuditSink()
    candidate = CedarPolicy("permit (principal, action, resource) when { ip(context.arguments.addr).isLoopback() };")
    guard = Guard(shadow=candidate, audit=[audit])
    guard.declare(ToolSpec("connect", redact=frozenset({"addr"})))
    assert (await guard.authorize("connect", {"addr": "hunter2"}, access_token("alice"))).allowed
    [disagreed] = [event for event in audit.events if event.kind == EventKind.POLICY_DISAGREED]
    assert disagreed.detail == WITHHELD


def test_bad_policy_text_is_refused_at_construction() -> None:
    cedarpy()
    with pytest.raises(ValueError, match=r"the Cedar policies do not parse: .*unexpected token"):
        CedarPolicy("permit (principal, action, resource) when { ;")


def test_without_cedarpy_the_adapter_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cedarpy", None)
    with pytest.raises(CedarUnavailable, match=r"pip install 'mcp-guard\[cedar\]'") as raised:
        CedarPolicy(PERMIT_ALL)
    assert isinstance(raised.value, ImportError)


# -- entities reused ----------------------------------------------------------------------------


def test_the_principal_entity_is_built_once_per_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    cedarpy()
    policy = CedarPolicy('permit (principal, action, resource) when { principal.groups.contains("eng") };')
    parsed: list[str] = []
    parse = policy._parse_entities

    def counted(text: str, *rest: Any) -> Any:
        parsed.append(text)
        return parse(text, *rest)

    monkeypatch.setattr(policy, "_parse_entities", counted)
    alice, bob = principal(groups=["eng"]), principal("bob", groups=["eng"])
    tool = tools()["read_file"]
    for _ in range(3):
        assert policy.decide(call(alice, tool)).allowed
    entities = policy._principals[id(alice)].entities
    assert policy.decide(call(alice, tool, {"path": "/other"})).allowed
    assert policy._principals[id(alice)].entities is entities
    assert len(parsed) == 1 and '"alice"' in parsed[0]
    assert policy.decide(call(bob, tool)).allowed
    assert len(parsed) == 2 and len(policy._principals) == 2


def test_the_session_is_read_fresh_on_every_call() -> None:
    cedarpy()
    policy = CedarPolicy("permit (principal, action, resource) when { resource.call_count < 3 };")
    who, tool = principal(), tools()["read_file"]
    assert policy.decide(call(who, tool, call_count=2)).allowed
    assert not policy.decide(call(who, tool, call_count=3)).allowed


# -- the schema ---------------------------------------------------------------------------------


def test_the_generated_schema_types_each_tools_arguments() -> None:
    schema = cedar_schema(tools().values())["McpGuard"]
    arguments = schema["actions"]["read_file"]["appliesTo"]["context"]["attributes"]["arguments"]
    assert arguments == {
        "type": "Record",
        "attributes": {
            "path": {"type": "String"},
            "limit": {"type": "Long", "required": False},
            "encoding": {"type": "String", "required": False},
        },
    }
    assert set(schema["entityTypes"]) == {"Principal", "Session"}


class Point(BaseModel):
    x: float
    label: str


class Shape(BaseModel):
    points: list[Point]
    closed: bool = False


def test_nested_models_lists_and_optionals_are_typed() -> None:
    guard = Guard()

    @guard.tool()
    def draw(shape: Shape, ids: list[int], scale: Point | None = None, counts: dict[str, int] | None = None) -> str:
        return ""

    attributes = cedar_schema(guard.tools.values())["McpGuard"]["actions"]["draw"]["appliesTo"]["context"]
    point = {"type": "Record", "attributes": {"label": {"type": "String"}}}
    assert attributes["attributes"]["arguments"]["attributes"] == {
        "shape": {
            "type": "Record",
            "attributes": {
                "points": {"type": "Set", "element": point},
                "closed": {"type": "Boolean", "required": False},
            },
        },
        "ids": {"type": "Set", "element": {"type": "Long"}},
        "scale": {**point, "required": False},
    }
    cedarpy()
    policy = CedarPolicy(
        "permit (principal, action, resource) when { context.arguments.ids.contains(1) };", tools=guard.tools.values()
    )
    tool = guard.tools["draw"]
    assert policy.decide(call(principal(), tool, {"shape": {"points": []}, "ids": [1], "counts": None})).allowed
    refused = policy.decide(call(principal(), tool, {"shape": {"points": [{"x": 0.5, "label": "a"}]}, "ids": [1]}))
    assert refused.reason.code == ReasonCode.ARGUMENT_REJECTED
    assert refused.reason.message.startswith("Argument 'shape.points.x' holds a float, which the Cedar schema")


def definitions_read(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The ``$ref`` definitions looked up while typing, from now on: the work typing a schema takes."""
    module = importlib.import_module("mcp_guard.policy.cedar_schema")
    lookup, read = module._definition, []

    def counted(reference: object, root: Any) -> object:
        read.append(reference)
        return lookup(reference, root)

    monkeypatch.setattr(module, "_definition", counted)
    return read


class Tree(BaseModel):
    label: str = ""
    left: Tree | None = None
    right: Tree | None = None
    parent: Tree | None = None
    children: list[Tree] = []


def test_a_model_that_refers_back_to_itself_is_typed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reference back to the model being typed is one Cedar cannot type (it has no recursive
    types), rather than another expansion: four such fields cost four lookups, not four to the eighth."""
    read = definitions_read(monkeypatch)
    guard = Guard()

    @guard.tool()
    def plant(tree: Tree, note: str = "") -> str:
        return note

    schema = cedar_schema(guard.tools.values())
    assert read == ["#/$defs/Tree"]
    assert schema["McpGuard"]["actions"]["plant"]["appliesTo"]["context"]["attributes"]["arguments"] == {
        "type": "Record",
        "attributes": {
            "tree": {"type": "Record", "attributes": {"label": {"type": "String", "required": False}}},
            "note": {"type": "String", "required": False},
        },
    }
    cedarpy()
    policies = PERMIT_ALL + "\nforbid (principal, action, resource) when { context.arguments.tree has left };"
    policy = CedarPolicy(policies, tools=guard.tools.values())
    assert policy.decide(call(principal(), guard.tools["plant"], {"tree": {"label": "a", "left": None}})).allowed
    refused = policy.decide(call(principal(), guard.tools["plant"], {"tree": {"left": {"label": "b"}}}))
    assert refused.reason.code == ReasonCode.ARGUMENT_REJECTED
    assert refused.reason.message.startswith("Argument 'tree.left' holds a dict, which the Cedar schema")


def test_a_schema_whose_references_fan_out_past_the_bound_types_no_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nine models, each using the one before four times, make a type holding 4**8 copies of the
    first: typing stops at a bound on the nodes visited, and no argument of the tool is typed."""
    definitions: dict[str, Any] = {"Level0": {"type": "object", "properties": {"name": {"type": "string"}}}}
    for level in range(1, 9):
        fields = {f"f{field}": {"$ref": f"#/$defs/Level{level - 1}"} for field in range(4)}
        definitions[f"Level{level}"] = {"type": "object", "properties": fields, "required": list(fields)}
    input_schema = {
        "$defs": definitions,
        "type": "object",
        "properties": {"survey": {"$ref": "#/$defs/Level8"}, "note": {"type": "string"}},
    }
    tool = ToolSpec("audit_all", input_schema=input_schema)
    read = definitions_read(monkeypatch)
    schema = cedar_schema([tool])
    assert 0 < len(read) <= 10_000
    assert schema["McpGuard"]["actions"]["audit_all"]["appliesTo"]["context"]["attributes"]["arguments"] == {
        "type": "Record",
        "attributes": {},
    }
    cedarpy()
    policy = CedarPolicy(PERMIT_ALL, tools=[tool])
    assert policy.decide(call(principal(), tool, {})).allowed
    for name, value in (("survey", {}), ("note", "n")):
        refused = policy.decide(call(principal(), tool, {name: value}))
        assert refused.reason.code == ReasonCode.ARGUMENT_REJECTED
        assert refused.reason.message.startswith(f"Argument {name!r} holds")


def test_the_generated_schema_validates_typed_policies() -> None:
    cedar = cedarpy()
    schema = cedar_schema(tools().values())
    good = """
    permit (principal, action == McpGuard::Action::"read_file", resource)
    when { context.arguments has limit && context.arguments.limit <= 100 && principal.groups.contains("eng")
           && resource.call_count < 10 && context.arguments.path like "/docs/*" };
    """
    assert cedar.validate_policies(good, cedar.Schema.from_json_str(json.dumps(schema))).validation_passed
    wrong = 'permit (principal, action == McpGuard::Action::"read_file", resource) when { context.arguments.path > 3 };'
    assert not cedar.validate_policies(wrong, schema).validation_passed
    with pytest.raises(ValueError, match="do not validate against the schema"):
        CedarPolicy(wrong, tools=tools().values())
    with pytest.raises(ValueError, match=r"do not validate against the schema: .*ratio"):
        CedarPolicy("permit (principal, action, resource) when { context.arguments.ratio == 1 };", schema=schema)


def test_a_schema_given_as_cedar_text_puts_tools_in_action_groups() -> None:
    cedarpy()
    schema = """
    namespace McpGuard {
      entity Principal; entity Session;
      type Context = {arguments: {path: String, text: String}, scopes: Set<String>, tool_risk: String,
                      tool_tags: Set<String>, time: Long};
      action "writes";
      action "write_file" in ["writes"] appliesTo { principal: [Principal], resource: [Session], context: Context };
    }
    """
    policies = PERMIT_ALL + '\nforbid (principal, action in McpGuard::Action::"writes", resource);'
    decision = decide(
        policies, principal(scopes="files:write"), "write_file", {"path": "/a", "text": "t"}, schema=schema
    )
    assert (decision.allowed, decision.reason.code) == (False, ReasonCode.POLICY_DENIED)


def test_schema_options_are_checked() -> None:
    cedarpy()
    with pytest.raises(ValueError, match="not both"):
        CedarPolicy(PERMIT_ALL, tools=tools().values(), schema=cedar_schema(()))
    with pytest.raises(ValueError, match="the Cedar schema does not parse"):
        CedarPolicy(PERMIT_ALL, schema="namespace {")


# -- end to end through the MCP SDK -------------------------------------------------------------


@pytest.mark.anyio
async def test_end_to_end_through_the_sdk(mode: str) -> None:
    cedarpy()
    audit = MemoryAuditSink()
    policies = """
    @id("engineers-read")
    permit (principal, action == McpGuard::Action::"read_file", resource)
    when { principal.groups.contains("eng") };
    @id("no-secrets")
    forbid (principal, action, resource) when { context.arguments.path like "/secrets/*" };
    """
    guard = Guard(policy=CedarPolicy(policies), audit=[audit])
    server = MCPServer("cedar", middleware=[GuardMiddleware(guard)])

    @server.tool()
    @guard.tool(scopes="files:read")
    def read_file(path: str) -> str:
        return f"contents of {path}"

    with acting_as(access_token("alice", "files:read mail:send", groups=["eng"])):
        async with Client(server, mode=mode) as client:
            result = await client.call_tool("read_file", {"path": "/docs/a"})
            assert not result.is_error
            with pytest.raises(MCPError) as raised:
                await client.call_tool("read_file", {"path": "/secrets/key"})
    error = raised.value.error
    assert error.code == GUARD_DENIED
    assert error.data == {"reason": "policy_denied"}
    assert "no-secrets" in error.message
    decided = [event for event in audit.events if event.kind == EventKind.CALL_DECIDED]
    assert [event.outcome for event in decided] == ["trimmed", "denied"]


DOCUMENTED = re.search(
    r'POLICIES = """\n(.*?)"""', (Path(__file__).parent.parent / "docs" / "cedar.md").read_text(), re.S
)


@pytest.mark.anyio
async def test_the_documented_example_refuses_parent_directories() -> None:
    cedarpy()
    assert DOCUMENTED is not None
    guard = Guard()

    @guard.tool(scopes="files:read")
    def read_file(path: str, limit: int = 10) -> str:
        return path

    guard.policy = CedarPolicy(DOCUMENTED.group(1), tools=guard.tools.values())
    token = access_token("alice", "files:read", groups=["eng"])
    codes = {
        path: (await guard.authorize("read_file", {"path": path}, token)).decision.reason.code
        for path in ("/docs/a.md", "/etc/passwd", "/docs/../etc/passwd")
    }
    assert codes == {"/docs/a.md": "allowed", "/etc/passwd": "policy_denied", "/docs/../etc/passwd": "policy_denied"}
