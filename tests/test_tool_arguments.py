"""A call's arguments are judged as the tool will receive them, read the way the MCP SDK reads them."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from mcp_guard import EventKind, Guard, MemoryAuditSink, RulePolicy
from mcp_guard.policy import ArgumentConstraint, ArgumentRule, TargetsRule
from mcp_guard.testing import access_token

pytestmark = pytest.mark.anyio

MANY = [f"u{n}@example.com" for n in range(50)]


class Recipient(BaseModel):
    email: str


def ask() -> Elicit[Recipient]:
    return Elicit("Who should receive a copy?", Recipient)


def mail_guard() -> Guard:
    rules = [
        TargetsRule("few", tools=frozenset({"send"}), argument="to", max_targets=2),
        ArgumentRule(
            "cc-inside",
            tools=frozenset({"send"}),
            constraints=(ArgumentConstraint("cc", pattern=r"[a-z]+@corp\.example"),),
        ),
    ]
    guard = Guard(policy=RulePolicy(rules), audit=[MemoryAuditSink()])

    @guard.tool(scopes="mail")
    async def send(
        to: Annotated[list[str], Field(validation_alias=AliasChoices("to", "recipients"))],
        cc: Annotated[Recipient, Resolve(ask)],
    ) -> str:
        return "sent"

    return guard


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"to": MANY}, "too_many_targets"),
        ({"recipients": MANY}, "too_many_targets"),  # the other name the SDK accepts
        ({"to": MANY[:1], "recipients": MANY}, "allowed"),  # the SDK takes "to", the first it tries
        ({"to": MANY, "recipients": MANY[:1]}, "too_many_targets"),
    ],
)
async def test_a_parameter_is_judged_under_whichever_name_the_client_used(
    arguments: dict[str, object], code: str
) -> None:
    decision = (await mail_guard().authorize("send", arguments, access_token("alice", "mail"))).decision
    assert decision.reason.code == code


async def test_keys_the_tool_never_receives_are_not_arguments() -> None:
    guard = mail_guard()
    arguments = {"recipients": MANY[:1], "cc": "x@evil.test", "junk": 1}
    judged = (await guard.authorize("send", arguments, access_token("alice", "mail"))).request
    assert judged is not None and judged.arguments == {"to": MANY[:1]}
    assert list(guard.tools["send"].input_schema["properties"]) == ["to"]  # a resolver fills cc
    assert guard.policy_gaps() == ["rule 'cc-inside' reads argument 'cc', which no tool it applies to takes (send)"]


def test_a_parameter_read_through_an_alias_path_is_refused_at_declaration() -> None:
    guard = Guard()
    with pytest.raises(ValueError, match="alias path"):

        @guard.tool()
        def send(to: Annotated[str, Field(validation_alias=AliasPath("message", "to"))]) -> str:
            return to


def copy_guard() -> Guard:
    guard = Guard(
        policy=RulePolicy(
            [ArgumentRule("in-tmp", constraints=(ArgumentConstraint("target", path_roots=("/srv/share",)),))]
        )
    )

    @guard.tool()
    def copy(
        source: Annotated[str, Field(validation_alias=AliasChoices("source", "target"))] = "/srv/share/a",
        target: str = "/srv/share/default",
    ) -> str:
        return target

    return guard


@pytest.mark.parametrize(
    "arguments", [{"source": "/srv/share/a", "target": "/etc/cron.d/x"}, {"target": "/etc/cron.d/x"}]
)
async def test_a_key_that_feeds_two_parameters_is_judged_for_both(arguments: dict[str, object]) -> None:
    """``target`` is both a parameter and another one's alias: the tool receives it in each."""
    authorization = await copy_guard().authorize("copy", arguments, access_token("alice", ""))
    assert authorization.decision.reason.code == "argument_rejected"
    assert authorization.request is not None and authorization.request.arguments["target"] == "/etc/cron.d/x"


class Target(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    file_path: str = Field(alias="filePath")  # the schema says filePath; file_path is taken too


def test_a_dotted_path_into_a_model_with_several_names_per_field_is_named_a_gap() -> None:
    rule = ArgumentRule("in-share", constraints=(ArgumentConstraint("target.filePath", path_roots=("/srv/share",)),))
    guard = Guard(policy=RulePolicy([rule]))

    @guard.tool()
    def write(target: Target, text: str) -> str:
        return text

    [gap] = guard.policy_gaps()
    assert gap.startswith("rule 'in-share' reads 'target.filePath' inside parameter 'target' of tool 'write'")
    plain = Guard(policy=RulePolicy([ArgumentRule("text", constraints=(ArgumentConstraint("text", max_length=9),))]))

    @plain.tool()
    def note(target: Target, text: str) -> str:
        return text

    assert plain.policy_gaps() == []  # only a path into the model can miss a value


class TargetDict(TypedDict):
    filePath: Annotated[str, Field(validation_alias=AliasChoices("filePath", "file_path"))]


def test_typed_dicts_with_several_names_per_field_are_named_a_gap_too() -> None:
    rule = ArgumentRule("in-share", constraints=(ArgumentConstraint("target.filePath", path_roots=("/srv/share",)),))
    guard = Guard(policy=RulePolicy([rule]))

    @guard.tool()
    def write(target: TargetDict) -> str:
        return "written"

    assert len(guard.policy_gaps()) == 1


def test_two_parameters_under_one_schema_name_are_refused_at_declaration() -> None:
    guard = Guard()
    with pytest.raises(ValueError, match="several parameters named \\['path'\\]"):

        @guard.tool()
        def copy_file(
            src: Annotated[str, Field(validation_alias=AliasChoices("path", "src"))],
            dst: Annotated[str, Field(validation_alias=AliasChoices("path", "dst"))],
        ) -> str:
            return dst


class Login(BaseModel):
    model_config = ConfigDict(validate_by_name=True)
    password: str = Field(alias="pwd")
    token: str = Field(serialization_alias="bearer")


def redacting_guard(audit: MemoryAuditSink) -> Guard:
    guard = Guard(audit=[audit], record_arguments=True)

    @guard.tool(redact=["password"])
    def login(user: str, password: Annotated[str, Field(validation_alias=AliasChoices("pass", "password"))]) -> str:
        return user

    @guard.tool(redact=["pwd", "bearer"])
    def nested(login: Login, note: str = "") -> str:
        return note

    return guard


@pytest.mark.parametrize(
    ("tool", "arguments", "recorded"),
    [
        ("login", {"user": "bob", "password": "hunter2"}, {"user": "bob", "pass": "[redacted]"}),
        ("login", {"user": "bob", "pass": "hunter2"}, {"user": "bob", "pass": "[redacted]"}),
        (
            "nested",
            {"login": {"password": "s3", "token": "t"}},
            {"login": {"password": "[redacted]", "token": "[redacted]"}},
        ),
        ("nested", {"login": {"pwd": "s3", "bearer": "t"}}, {"login": {"pwd": "[redacted]", "bearer": "[redacted]"}}),
    ],
)
async def test_naming_any_name_of_a_field_redacts_it_under_every_name(
    tool: str, arguments: dict[str, object], recorded: dict[str, object]
) -> None:
    audit = MemoryAuditSink()
    await redacting_guard(audit).authorize(tool, arguments, access_token("alice", ""))
    [event] = [event for event in audit.events if event.kind == EventKind.CALL_DECIDED]
    assert json.loads(event.record()["arguments"]) == recorded
