"""The policy file schema: what a YAML or TOML policy document may say, validated by pydantic.

Every model forbids unknown keys and coerces nothing (``"5"`` is not a number), so a typo is
an error with its line, never a silently ignored rule. `policy_json_schema` exports the schema
for editors. `mcp_guard.policy.files` turns a validated document into a `RulePolicy`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mcp_guard.model import TOOL_NAME_PATTERN, Delegation
from mcp_guard.scopes import MAX_SCOPE_TOKEN_LENGTH, SCOPE_TOKEN_PATTERN

__all__ = [
    "ConstraintModel",
    "DelegationModel",
    "LimitModel",
    "MatchModel",
    "PolicyDocument",
    "RiskModel",
    "RuleModel",
    "SequenceModel",
    "TargetsModel",
    "TimeWindowModel",
    "ToolModel",
    "policy_json_schema",
]

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/\-]+$")]
ToolName = Annotated[str, Field(pattern=f"^{TOOL_NAME_PATTERN}$")]
ScopeToken = Annotated[str, Field(max_length=MAX_SCOPE_TOKEN_LENGTH, pattern=f"^{SCOPE_TOKEN_PATTERN}$")]
Text = Annotated[str, Field(max_length=1024)]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ClockTime = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
RULE_KINDS = ("allow", "deny", "arguments", "sequence", "targets", "limit", "time_window", "delegation")


def _listed(values: list[str]) -> list[str]:
    """Refuse an empty list of callers (a list that rendered empty, say): a rule would read it as
    "anyone" or as "no one", and neither is what its author meant."""
    if not values:
        raise ValueError("an empty list names no caller: list at least one value, or leave the key out")
    return values


Callers = Annotated[list[Text], AfterValidator(_listed)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ToolModel(_Strict):
    """A tool as the policy declares it: what it requires, may use, how risky it is, its tags."""

    scopes: list[ScopeToken] = []
    optional_scopes: list[ScopeToken] = []
    risk: Literal["read", "write", "admin"] = "read"
    tags: list[Name] = []
    data_classes: list[Name] = []
    owner: Text | None = None
    description: Text = ""


class MatchModel(_Strict):
    """Which callers a principal rule matches: every attribute given must match."""

    issuer: Callers = []
    subject: Callers = []
    client_id: Callers = []
    claims: dict[Name, Callers] = {}


class ConstraintModel(_Strict):
    """One argument's constraint (see `ArgumentConstraint`)."""

    argument: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["string", "integer", "number", "boolean", "array", "object", "null"] | None = None
    required: bool = False
    minimum: int | Annotated[float, Field(allow_inf_nan=False)] | None = None  # an integer kept exact
    maximum: int | Annotated[float, Field(allow_inf_nan=False)] | None = None
    min_length: Annotated[int, Field(ge=0)] | None = None
    max_length: Annotated[int, Field(ge=0)] | None = None
    enum: list[str | int | float | bool | None] | None = None
    pattern: Annotated[str, Field(max_length=1000)] | None = None
    max_bytes: Annotated[int, Field(ge=1)] | None = None
    path_roots: list[Text] = []
    hosts: list[Text] = []
    schemes: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9+.\-]*$")]] = ["https"]


class SequenceModel(_Strict):
    """Refuse the rule's tools once the session ran a tool with one of these tags or names."""

    after_tags: list[Name] = []
    after_tools: list[ToolName] = []


class TargetsModel(_Strict):
    """At most ``max`` distinct values of ``argument`` across the session."""

    argument: Annotated[str, Field(min_length=1, max_length=256)]
    max: Annotated[int, Field(ge=1)]


class LimitModel(_Strict):
    """At most ``calls`` calls per session, subject, principal, client or tool in each ``window`` seconds."""

    per: Literal["session", "subject", "principal", "client", "tool"] = "session"
    calls: Annotated[int, Field(ge=1)]
    window: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class TimeWindowModel(_Strict):
    """Calls only on these days, between these local times (HH:MM) in this IANA timezone."""

    days: list[Day] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    start: ClockTime
    end: ClockTime
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"


class DelegationModel(_Strict):
    """Calls on someone's behalf: allowed, forbidden or required; by which actors; how deep."""

    mode: Delegation = "allow"
    actors: list[Text] = []
    max_depth: Annotated[int, Field(ge=0)] | None = None


class RuleModel(_Strict):
    """One rule: an id, the tools it selects (by name or tag; neither: every tool) and one kind."""

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    description: Text = ""
    tools: list[ToolName] | None = None
    tags: list[Name] | None = None
    allow: MatchModel | None = None
    deny: MatchModel | None = None
    arguments: Annotated[list[ConstraintModel], Field(min_length=1)] | None = None
    sequence: SequenceModel | None = None
    targets: TargetsModel | None = None
    limit: LimitModel | None = None
    time_window: TimeWindowModel | None = None
    delegation: DelegationModel | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RuleModel:
        given = [kind for kind in RULE_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"a rule has exactly one of {', '.join(RULE_KINDS)} (found {found})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in RULE_KINDS if getattr(self, kind) is not None)


class RiskModel(_Strict):
    """Session risk: the threshold that revokes, and what a denial and each risk level weigh."""

    threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    denial: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10
    read: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0
    write: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 5
    admin: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 20
    tools: dict[ToolName, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = {}


class PolicyDocument(_Strict):
    """A whole policy file. ``version`` is the schema version (1); ``revision`` is the policy's
    own version, recorded with every decision it makes."""

    version: Literal[1]
    id: Annotated[str, Field(min_length=1, max_length=128)] = "policy"
    revision: Annotated[str, Field(min_length=1, max_length=128)] = "1"
    description: Text = ""
    unlisted: Literal["deny", "allow"] | None = None
    scope_hierarchy: dict[ScopeToken, list[ScopeToken]] = {}
    tools: dict[ToolName, ToolModel] = {}
    rules: list[RuleModel] = []
    risk: RiskModel | None = None


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy document, for editors and CI checks."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mcp-guard policy"
    return schema
