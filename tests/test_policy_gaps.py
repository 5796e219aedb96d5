"""Rules that can never apply because they name what the server's tools do not have."""

from __future__ import annotations

from pathlib import Path

from mcp_guard import Guard, RulePolicy, ScopePolicy, ToolSpec
from mcp_guard.policy import (
    AllOf,
    ArgumentConstraint,
    ArgumentRule,
    PolicyFile,
    PrincipalRule,
    SequenceRule,
    TargetsRule,
)


def server(policy: object) -> Guard:
    guard = Guard(policy=policy)  # type: ignore[arg-type]

    @guard.tool(scopes="mail:send", tags=["egress"])
    def send_mail(to: list[str], subject: str) -> str:
        return subject

    @guard.tool(scopes="secrets:read")
    def read_secret(name: str) -> str:
        return name

    guard.declare(ToolSpec("raw"))  # no schema known: any argument may be its own
    return guard


def test_every_name_no_tool_has_is_reported() -> None:
    rules = RulePolicy(
        [
            PrincipalRule("typo", tools=frozenset({"send_mial"}), subjects=frozenset({"alice"})),
            ArgumentRule("recipients", tools=frozenset({"send_mail"}), constraints=(ArgumentConstraint("too"),)),
            TargetsRule("nested", tools=frozenset({"send_mail"}), argument="message.to", max_targets=3),
            SequenceRule("after", tags=frozenset({"egress"}), after_tools=frozenset({"read_secrets"})),
            SequenceRule("after-tag", tags=frozenset({"egress"}), after_tags=frozenset({"secret", "egress"})),
            PrincipalRule("tagged", tags=frozenset({"egres"}), subjects=frozenset({"alice"})),
            PrincipalRule("half-tagged", tags=frozenset({"egress", "exfiltraton"}), subjects=frozenset({"alice"})),
            ArgumentRule("everywhere", constraints=(ArgumentConstraint("name", type="string"),)),  # read_secret's
        ],
        id="assistant",
    )
    assert server(rules).policy_gaps() == [
        "rule 'typo' names tool 'send_mial', which the server does not declare: it never applies",
        "rule 'recipients' reads argument 'too', which no tool it applies to takes (send_mail)",
        "rule 'nested' reads argument 'message', which no tool it applies to takes (send_mail)",
        "rule 'after' follows tool 'read_secrets', which the server does not declare",
        "rule 'after-tag' follows tag 'secret', which no declared tool has",
        "rule 'tagged' selects tag 'egres', which no declared tool has: it never applies",
        "rule 'half-tagged' selects tag 'exfiltraton', which no declared tool has",  # it applies by 'egress'
    ]
    raw_too = RulePolicy([ArgumentRule("anywhere", constraints=(ArgumentConstraint("nobody_takes"),))])
    assert server(raw_too).policy_gaps() == []  # the tool without a schema may take it
    no_raw = RulePolicy(
        [ArgumentRule("typed", tags=frozenset({"egress"}), constraints=(ArgumentConstraint("nobody_takes"),))]
    )
    assert server(no_raw).policy_gaps() == [
        "rule 'typed' reads argument 'nobody_takes', which no tool it applies to takes (send_mail)"
    ]


def test_a_policy_that_meets_the_server_has_no_gaps(tmp_path: Path) -> None:
    clean = RulePolicy(
        [
            TargetsRule("recipients", tools=frozenset({"send_mail"}), argument="to", max_targets=3),
            SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tools=frozenset({"read_secret"})),
        ]
    )
    assert server(clean).policy_gaps() == []
    assert server(ScopePolicy()).policy_gaps() == []


def test_gaps_are_found_inside_files_and_combinations(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = 1\nid = "file"\nrevision = "1"\n'
        '[tools.send_mail]\nscopes = ["mail:send"]\n[tools.retired]\n'
        '[[rules]]\nid = "r"\ntools = ["retired"]\ndeny = {}\n'
    )
    guard = server(AllOf(ScopePolicy(), PolicyFile(path)))
    assert guard.policy_gaps() == [
        "policy 'file' declares tool 'retired', which the server does not",
        "rule 'r' names tool 'retired', which the server does not declare: it never applies",
    ]
