"""Set-up for the policy benchmarks: a policy file with rules for N tools, a warm caller, and one
policy written both for the built-in engine and for Cedar."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp.server.auth.provider import AccessToken

from mcp_guard import Guard, MemoryAuditSink, ToolSpec
from mcp_guard.model import Decision
from mcp_guard.policy import RulePolicy, parse_policy
from mcp_guard.testing import access_token, call_request
from workloads import run_now

RULES_PER_TOOL = """
[tools.tool_{n}]
scopes = ["notes:read"]
risk = "write"
tags = ["notes", "group-{group}"]

[[rules]]
id = "tool-{n}-callers"
tools = ["tool_{n}"]
allow = {{ claims = {{ groups = ["eng", "ops"] }} }}

[[rules]]
id = "tool-{n}-arguments"
tools = ["tool_{n}"]
arguments = [
  {{ argument = "title", type = "string", required = true, max_length = 200, pattern = "[A-Za-z0-9 _.-]+" }},
  {{ argument = "limit", type = "integer", minimum = 1, maximum = 100 }},
]

[[rules]]
id = "tool-{n}-rate"
tools = ["tool_{n}"]
limit = {{ per = "principal", calls = 1000000000, window = 3600 }}
"""

SHARED = """
[tools.fetch]
tags = ["egress"]

[tools.vault]
scopes = ["secrets:read"]
tags = ["secrets"]

[[rules]]
id = "no-egress-after-secrets"
tags = ["egress"]
sequence = {{ after_tags = ["secrets"] }}

[[rules]]
id = "office-hours-for-group-1"
tags = ["group-1"]
time_window = {{ start = "00:00", end = "23:59" }}

[risk]
threshold = 1000000000
"""


def policy_text(tools: int) -> str:
    """A TOML policy declaring ``tools`` tools, each with a caller, an argument and a rate rule."""
    header = 'version = 1\nid = "bench"\nrevision = "1"\n'
    body = "".join(RULES_PER_TOOL.format(n=n, group=n % 10) for n in range(tools))
    return header + body + SHARED.format()


def policy_guard(tools: int) -> tuple[Guard, RulePolicy]:
    """A guard enforcing the generated policy over ``tools`` registered tools."""
    policy = parse_policy(policy_text(tools), "toml")
    guard = Guard(policy=policy, audit=[MemoryAuditSink(maxlen=1024)])
    for n in range(tools):
        guard.declare(ToolSpec(f"tool_{n}", scopes=frozenset({"notes:read"})))
    return guard, policy


def warm_policy_caller(guard: Guard) -> tuple[AccessToken, dict[str, Any]]:
    """A caller in group ``eng`` whose session is open and whose call ``tool_0`` the policy allows."""
    token = access_token("agent-7", "notes:read mail:send", sid="bench-session", groups=["eng"])
    arguments = {"title": "weekly notes", "limit": 20}
    decision = run_now(guard.authorize("tool_0", arguments, token)).decision
    if not decision.allowed or decision.rule_ids != (
        "scopes.required",
        "tool-0-callers",
        "tool-0-arguments",
        "tool-0-rate",
    ):
        raise RuntimeError(f"the warm-up call was not allowed by every rule as expected: {decision}")
    return token, arguments


SAME_POLICY_CEDAR = """
@id("engineers-read-docs")
permit (principal, action == McpGuard::Action::"read_file", resource)
when {
  principal.groups.contains("eng") &&
  context.arguments.path like "/docs/*" &&
  (if context.arguments has limit then context.arguments.limit <= 100 else true)
};
"""

SAME_POLICY_FILE = """
version = 1
id = "docs"

[tools.read_file]
scopes = ["files:read"]

[[rules]]
id = "engineers"
tools = ["read_file"]
allow = { claims = { groups = ["eng"] } }

[[rules]]
id = "docs-only"
tools = ["read_file"]
arguments = [
  { argument = "path", type = "string", required = true, pattern = "/docs/.*" },
  { argument = "limit", type = "integer", maximum = 100 },
]
"""


def same_policy_both_ways() -> tuple[Callable[[], Decision], Callable[[], Any]]:
    """One policy (engineers read /docs with a limit of at most 100) as the built-in engine
    deciding a call, and as a bare ``cedarpy.is_authorized`` of that call with everything parsed
    beforehand. Both must allow the call."""
    import cedarpy

    policy = parse_policy(SAME_POLICY_FILE, "toml")
    request = call_request(
        ToolSpec("read_file", scopes=frozenset({"files:read"})),
        {"path": "/docs/guide.md", "limit": 20},
        scopes="files:read mail:send",
        subject="alice",
        claims={"groups": ["eng", "docs"]},
    )
    policy_set = cedarpy.PolicySet.from_str(SAME_POLICY_CEDAR)
    entities = cedarpy.Entities.from_json_str(
        json.dumps(
            [
                {
                    "uid": {"type": "McpGuard::Principal", "id": "alice"},
                    "attrs": {"groups": ["eng", "docs"]},
                    "parents": [],
                }
            ]
        )
    )
    cedar_request = {
        "principal": {"type": "McpGuard::Principal", "id": "alice"},
        "action": {"type": "McpGuard::Action", "id": "read_file"},
        "resource": {"type": "McpGuard::Session", "id": "test-session"},
        "context": {"arguments": {"path": "/docs/guide.md", "limit": 20}},
    }

    def builtin() -> Decision:
        return policy.decide(request)

    def cedar() -> Any:
        return cedarpy.is_authorized(cedar_request, policy_set, entities)

    if not (builtin().allowed and cedar().allowed):
        raise RuntimeError("the same-policy workload is not allowed by both engines")
    refused = {"path": "/secrets/key", "limit": 20}
    if (
        policy.decide(request._replace(arguments=refused)).allowed
        or cedarpy.is_authorized({**cedar_request, "context": {"arguments": refused}}, policy_set, entities).allowed
    ):
        raise RuntimeError("the same-policy workload is not refused by both engines")
    return builtin, cedar
