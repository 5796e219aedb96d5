"""Policy files: YAML and TOML load into the same rules as Python; mistakes are refused by line."""

from __future__ import annotations

import functools
import json
import re
from datetime import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard import Guard, PolicyFile, PolicyFileError, ReasonCode, RiskSettings, RulePolicy, ToolSpec, load_policy
from mcp_guard.model import CallRequest, Decision, Risk
from mcp_guard.policy import (
    AllOf,
    AnyOf,
    ArgumentConstraint,
    ArgumentRule,
    DelegationRule,
    DenyOverrides,
    FirstApplicable,
    LimitRule,
    PrincipalRule,
    SequenceRule,
    TargetsRule,
    TimeWindowRule,
    parse_policy,
    policy_json_schema,
)
from mcp_guard.testing import access_token, call_request

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "policies"

HEADER = 'version = 1\nid = "t"\n'


def python_policy() -> RulePolicy:
    """examples/policies/assistant.toml, written in Python."""
    selected = {
        "files": frozenset({"read_file"}),
        "fetch": frozenset({"fetch_page"}),
        "secret": frozenset({"read_secret"}),
        "mail": frozenset({"send_mail"}),
    }
    return RulePolicy(
        [
            ArgumentRule(
                "files-under-workspace",
                tools=selected["files"],
                constraints=(
                    ArgumentConstraint("path", type="string", required=True, path_roots=("/srv/workspace",)),
                    ArgumentConstraint("limit", type="integer", minimum=1, maximum=10000),
                ),
            ),
            ArgumentRule(
                "pages-from-docs-hosts",
                tools=selected["fetch"],
                constraints=(
                    ArgumentConstraint("url", type="string", required=True, hosts=("docs.example.com", "*.python.org")),
                ),
            ),
            PrincipalRule("secrets-for-ops", tools=selected["secret"], claims={"groups": frozenset({"ops"})}),
            DelegationRule("secrets-not-delegated", tools=selected["secret"], mode="forbid"),
            SequenceRule("no-egress-after-secrets", tags=frozenset({"egress"}), after_tags=frozenset({"secrets"})),
            TargetsRule("few-recipients", tools=selected["mail"], argument="to", max_targets=3),
            LimitRule("mail-rate", tools=selected["mail"], per="principal", calls=20, window=3600),
            TimeWindowRule(
                "secrets-in-office-hours",
                tools=selected["secret"],
                days=frozenset({"mon", "tue", "wed", "thu", "fri"}),
                start=time(8),
                end=time(18),
                timezone="Europe/Berlin",
            ),
        ],
        tools=[
            ToolSpec("read_file", scopes=frozenset({"files:read"}), tags=frozenset({"files"})),
            ToolSpec("fetch_page", scopes=frozenset({"web:fetch"}), tags=frozenset({"egress"})),
            ToolSpec("read_secret", scopes=frozenset({"secrets:read"}), risk=Risk.ADMIN, tags=frozenset({"secrets"})),
            ToolSpec("send_mail", scopes=frozenset({"mail:send"}), risk=Risk.WRITE, tags=frozenset({"egress"})),
        ],
        hierarchy={"files:write": ["files:read"]},
        risk=RiskSettings(threshold=100, denial=15, write=5, admin=25),
        id="assistant",
        version="2026-11-21",
    )


@pytest.mark.parametrize("name", ["assistant.toml", "assistant.yaml"])
def test_a_file_loads_into_the_same_policy_as_python(name: str) -> None:
    loaded, written = load_policy(EXAMPLES / name), python_policy()
    assert loaded.rules == written.rules
    assert loaded.declared == written.declared
    assert loaded.risk == written.risk
    assert (loaded.id, loaded.version, loaded.unlisted) == ("assistant", "2026-11-21", "deny")
    assert loaded.scopes.hierarchy.expand(frozenset({"files:write"})) == {"files:write", "files:read"}
    request = call_request(ToolSpec("read_file"), {"path": "/etc/passwd"}, scopes="files:read")
    assert loaded.decide(request) == written.decide(request)
    assert loaded.decide(request).rule_ids == ("files-under-workspace",)


def problems(text: str, syntax: str = "toml") -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, syntax, source="p")
    return [str(problem) for problem in caught.value.problems]


def test_unknown_keys_and_wrong_types_are_refused_with_their_line() -> None:
    found = problems(
        HEADER
        + '[tools.read]\nscopes = ["a"]\nrisk = "huge"\n\n[[rules]]\nid = "r1"\ntool = ["read"]\nallow = { subject = ["x"] }\n'
        + '\n[[rules]]\nid = "r2"\ntools = ["read"]\nlimit = { calls = "5" }\n'
    )
    assert found == [
        "line 5: tools.read.risk: Input should be 'read', 'write' or 'admin'",
        "line 9: rules.0.tool: unknown key (not in the policy schema; check its spelling)",
        "line 15: rules.1.limit.calls: Input should be a valid integer, not str '5'",
    ]


def test_tool_names_and_scopes_follow_the_guards_own_grammar() -> None:
    """A name no tool can be declared under, or a scope RFC 6749 does not allow, is an error,
    never a rule that silently matches nothing."""
    found = problems(
        HEADER
        + '[tools."notes:read"]\nscopes = ["ok", "bad\\\\scope"]\n'
        + '[[rules]]\nid = "r"\ntools = ["re\u0430d"]\ndeny = {}\n'
    )
    assert [line.split(": ")[:2] for line in found] == [
        ["line 3", "tools.notes:read.[key]"],
        ["line 4", "tools.notes:read.scopes.1"],
        ["line 7", "rules.0.tools.0"],
    ]


def test_yaml_errors_point_at_lines_too() -> None:
    text = (
        "version: 1\nrules:\n  - id: r1\n    tools: [a]\n    allow: {subject: [x]}\n    sequence: {after_tags: [s]}\n"
    )
    assert problems(text, "yaml") == [
        "line 3: rules.0: Value error, a rule has exactly one of allow, deny, arguments, sequence, targets, limit, "
        "time_window, delegation (found allow, sequence)"
    ]
    assert problems("version: 1\nid: a\nid: b\n", "yaml") == ["line 3: duplicate key 'id'"]
    bomb = "version: 1\nx: &a [1, 2]\ny: [*a, *a]\n"
    assert problems(bomb, "yaml") == ["line 3: YAML aliases (*name) are not allowed in a policy"]
    assert problems("version: [1\n", "yaml")[0].startswith("line 2: not valid YAML")


def test_yaml_booleans_spelled_as_words_are_refused() -> None:
    """YAML 1.1 reads ``no`` as false: ``enum: [se, no, dk]`` would refuse Norway and admit false."""
    norway = "version: 1\nrules:\n  - id: a\n    arguments:\n      - {argument: country, enum: [se, no, dk]}\n"
    assert problems(norway, "yaml") == [
        "line 5: 'no' reads as a YAML boolean: quote it ('no') for text, or write true or false"
    ]
    required = "version: 1\nrules:\n  - id: a\n    arguments:\n      - {argument: n, required: On}\n"
    assert problems(required, "yaml")[0].startswith("line 5: 'On' reads as a YAML boolean")
    quoted = parse_policy(norway.replace("no,", "'no',").replace("dk]", "dk, false]"), "yaml")
    assert isinstance(quoted.rules[0], ArgumentRule)
    assert quoted.rules[0].constraints[0].enum == ("se", "no", "dk", False)


def test_yaml_octal_and_base_60_numbers_are_refused() -> None:
    """YAML 1.1 reads ``0755`` as 493 and ``1:30`` as 90: an enum or a bound the author did not mean."""
    modes = "version: 1\nrules:\n  - id: a\n    arguments:\n      - {argument: mode, enum: [0755, 0644]}\n"
    assert problems(modes, "yaml") == [
        "line 5: '0755' reads as a YAML 1.1 octal or base-60 number: quote it ('0755') for text, "
        "or write the number in decimal"
    ]
    bound = "version: 1\nrules:\n  - id: a\n    arguments:\n      - {argument: n, maximum: 1:30}\n"
    assert problems(bound, "yaml")[0].startswith("line 5: '1:30' reads as a YAML 1.1 octal or base-60 number")
    decimal = parse_policy(modes.replace("0755, 0644", "755, 0, -0.5, 1_000"), "yaml").rules[0]
    assert isinstance(decimal, ArgumentRule) and decimal.constraints[0].enum == (755, 0, -0.5, 1000)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("version: 1\nid: !Ref other\n", "line 2: the YAML tag '!Ref' is not allowed here in a policy"),
        ("version: 1\nid: !!binary aGk=\n", "line 2: the YAML tag 'tag:yaml.org,2002:binary' is not allowed"),
        ("version: 1\nid: !!python/name:os.system\n", "line 2: the YAML tag 'tag:yaml.org,2002:python/name:os"),
        ("version: 1\nscope_hierarchy: !!omap [{a: b}]\n", "line 2: the YAML tag 'tag:yaml.org,2002:omap'"),
        ("version: 1\nscope_hierarchy: {a: !!float [b]}\n", "line 2: the YAML tag 'tag:yaml.org,2002:float'"),
        ("version: 1\n? [a, b]\n: c\n", "line 2: a key must be plain text, not a list or a mapping"),
        ("version: 1\nid: !!str {a: 1}\n", "line 2: the YAML tag 'tag:yaml.org,2002:str' is not allowed here"),
        ("version: 1\nid: !!timestamp 'soon'\n", "document: a value cannot be read"),
    ],
)
def test_yaml_tags_outside_the_core_schema_and_odd_keys_are_refused(document: str, problem: str) -> None:
    assert problems(document, "yaml")[0].startswith(problem)


def test_yaml_merge_keys_are_refused() -> None:
    """A merge key sets keys past the duplicate-key check: a value given both ways is dropped."""
    merged = "version: 1\nrules:\n  - id: cap\n    arguments:\n      - argument: amount\n        maximum: 100\n"
    assert problems(merged + "        <<: {maximum: 1000000}\n", "yaml") == [
        "line 7: YAML merge keys (<<) are not allowed in a policy: write the keys out"
    ]
    assert problems("version: 1\n<<: {unlisted: allow}\n", "yaml")[0].startswith("line 2: YAML merge keys")
    assert problems("version: 1\n!!merge <<: {unlisted: allow}\n", "yaml")[0].startswith("line 2: YAML merge keys")
    quoted = problems("version: 1\n'<<': {unlisted: allow}\n", "yaml")  # a plain key, and not in the schema
    assert quoted == ["line 2: <<: unknown key (not in the policy schema; check its spelling)"]


def test_syntax_errors_and_missing_versions() -> None:
    assert problems('version = 1\nid = "a\n')[0].startswith("line 2: not valid TOML")
    assert problems('id = "a"\n') == ["document: version: Field required"]
    assert problems("version = 2\n") == ["line 1: version: Input should be 1"]
    with pytest.raises(PolicyFileError, match=r"\.toml, \.yaml or \.yml"):
        load_policy("policy.json")
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy("/nonexistent/policy.toml")


def test_bad_rules_are_refused_with_precise_messages() -> None:
    text = (
        HEADER
        + '[[rules]]\nid = "re"\narguments = [{ argument = "q", pattern = "(a+)+$" }]\n'
        + '[[rules]]\nid = "range"\narguments = [{ argument = "n", minimum = 5, maximum = 1 }]\n'
        + '[[rules]]\nid = "win"\ntime_window = { start = "09:00", end = "09:00" }\n'
        + '[[rules]]\nid = "deleg"\ndelegation = { mode = "forbid", actors = ["a"] }\n'
        + '[[rules]]\nid = "zone"\ntime_window = { start = "09:00", end = "10:00", timezone = "Nowhere/Else" }\n'
    )
    found = problems(text)
    assert [line.split(":")[0] for line in found] == ["line 5", "line 8", "line 11", "line 14", "line 17"]
    assert "rules.0.arguments.0" in found[0]
    assert "contradictory" in found[3] and "unknown timezone" in found[4]


def test_contradictory_and_unreachable_rules_are_refused() -> None:
    text = (
        HEADER
        + '[tools.a]\n[tools.b]\ntags = ["t"]\n'
        + '[[rules]]\nid = "stop"\ntools = ["a"]\ndeny = {}\n'
        + '[[rules]]\nid = "after-stop"\ntools = ["a"]\nallow = { subject = ["x"] }\n'
        + '[[rules]]\nid = "ghost"\ntools = ["c"]\nallow = { subject = ["x"] }\n'
        + '[[rules]]\nid = "allow-x"\ntools = ["b"]\nallow = { client_id = ["x"] }\n'
        + '[[rules]]\nid = "deny-x"\ntools = ["b"]\ndeny = { client_id = ["x"] }\n'
        + '[[rules]]\nid = "allow-y"\ntools = ["b"]\nallow = { client_id = ["y"] }\n'
        + '[[rules]]\nid = "nothing"\ntools = []\nallow = { subject = ["x"] }\n'
        + '[[rules]]\nid = "never"\ntags = ["t"]\nsequence = { after_tags = ["nope"] }\n'
        + '[[rules]]\nid = "typed-1"\ntools = ["b"]\narguments = [{ argument = "n", type = "integer" }]\n'
        + '[[rules]]\nid = "typed-2"\ntools = ["b"]\narguments = [{ argument = "n", type = "string" }]\n'
        + '[[rules]]\nid = "req"\ntools = ["b"]\ndelegation = { mode = "require" }\n'
        + '[[rules]]\nid = "forbid"\ntools = ["b"]\ndelegation = { mode = "forbid" }\n'
        + '[[rules]]\nid = "half-typo"\ntags = ["t", "tt"]\nallow = { subject = ["x"] }\n'
    )
    found = "\n".join(problems(text))
    for expected in (
        "rule 'after-stop' can never change a decision on tool 'a': rule 'stop' before it already denies",
        "rule 'ghost' names tool 'c', which the policy does not declare",
        "rule 'deny-x' denys exactly the callers rule 'allow-x' allows",
        "admit disjoint client_ids: no caller can pass them all",
        "rule 'nothing' selects no tool",
        "rule 'never' follows tools the policy never allows",
        "rule 'typed-2' types argument 'n' of tool 'b' as string, rule 'typed-1' as integer",
        "rule 'forbid' requires delegation" if False else "requires delegation on tool 'b' that rule 'forbid'",
        "rule 'half-typo' selects tag 'tt', which no tool the policy declares has",  # one typo among tags
    ):
        assert expected in found, expected
    assert "line 10: rules.1:" in found


def test_empty_caller_lists_and_allow_rules_naming_no_caller_are_refused() -> None:
    """An empty list (a template that rendered empty, say) names no caller: an allow rule would
    read it as everyone and a claim as no one. `deny = {}` still closes a tool to every caller."""
    rule = '[tools.t]\n[[rules]]\nid = "r"\ntools = ["t"]\n'
    for match in ("allow = { subject = [] }", "deny = { issuer = [] }", 'allow = { subject = ["a"], client_id = [] }'):
        (found,) = problems(HEADER + rule + match + "\n")
        assert found.startswith("line 7: rules.0.") and "an empty list names no caller" in found, found
    (found,) = problems(HEADER + rule + "deny = { claims = { groups = [] } }\n")
    assert found.startswith("line 7: rules.0.deny.claims.groups:") and "an empty list names no caller" in found
    (found,) = problems(HEADER + rule + "allow = {}\n")
    assert found == "line 7: rules.0.allow: rule 'r' allows callers but names none: it would admit every caller"
    yaml = "version: 1\ntools: {t: {}}\nrules:\n  - id: r\n    tools: [t]\n    allow:\n      subject: []\n"
    (found,) = problems(yaml, "yaml")
    assert found.startswith("line 7: rules.0.allow.subject:")
    closed = parse_policy(HEADER + rule + "deny = {}\n", "toml")
    assert not closed.decide(call_request(closed.declared["t"], subject="alice")).allowed


def test_values_python_cannot_hold_are_refused_as_policy_errors() -> None:
    """An integer too long to convert, a repeat count past the regex engine's limit and a date
    that does not exist are problems with the document, never another exception."""
    digits = "9" * 5000
    toml = HEADER + f'[[rules]]\nid = "a"\narguments = [{{ argument = "n", enum = [{digits}] }}]\n'
    assert problems(toml) == ["line 5: a number has more than 4300 digits"]
    yaml = f"version: 1\nrules:\n  - id: a\n    arguments:\n      - {{argument: n, enum: [{digits}]}}\n"
    assert problems(yaml, "yaml") == ["line 5: a number has more than 4300 digits"]
    assert problems("version: 1\nid: 2024-13-01\n", "yaml") == [
        "document: a value cannot be read: month must be in 1..12"
    ]
    repeat = HEADER + '[[rules]]\nid = "a"\narguments = [{ argument = "n", pattern = "a{4294967295}" }]\n'
    (found,) = problems(repeat)
    assert found.startswith("line 5: rules.0.arguments.0:") and "the repetition number is too large" in found


def test_duplicate_ids_and_huge_files_are_refused() -> None:
    twice = (
        HEADER + '[[rules]]\nid = "a"\ndeny = { subject = ["x"] }\n[[rules]]\nid = "a"\ndeny = { subject = ["y"] }\n'
    )
    assert problems(twice) == ["document: rule id 'a' is used twice"]
    assert "at most" in problems("# " + "x" * (32 << 20))[0]


def test_the_exported_json_schema_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "policy.schema.json").read_text())
    assert committed == policy_json_schema()
    assert committed["properties"]["version"] == {"const": 1, "title": "Version", "type": "integer"}


def write(path: Path, revision: str, subject: str) -> None:
    path.write_text(
        HEADER + f'revision = "{revision}"\n[[rules]]\nid = "only"\nallow = {{ subject = ["{subject}"] }}\n'
    )


def test_reload_swaps_atomically_and_keeps_a_good_policy_over_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    write(path, "1", "alice")
    policy = PolicyFile(path)
    tool = ToolSpec("fetch")
    assert policy.decide(call_request(tool, subject="alice")).allowed
    assert not policy.reload_if_changed()
    write(path, "2", "bob")
    assert policy.reload_if_changed() and policy.version == "2"
    assert policy.decide(call_request(tool, subject="bob")).allowed
    assert not policy.decide(call_request(tool, subject="alice")).allowed
    path.write_text(HEADER + "[[rules]]\nid = 5\n")
    with pytest.raises(PolicyFileError, match="line 4"):
        policy.reload_if_changed()
    assert policy.version == "2" and policy.decide(call_request(tool, subject="bob")).allowed
    path.unlink()
    with pytest.raises(PolicyFileError, match="cannot read"):
        policy.reload()
    assert policy.version == "2"


def test_rate_limit_counts_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrules:\n  - {id: rate, limit: {per: principal, calls: 1, window: 60}}\n")
    policy = PolicyFile(path)
    tool = ToolSpec("fetch")
    request = call_request(tool, at=0)
    first = policy.decide(request)
    assert first.allowed and len(first.on_allow) == 1
    first.on_allow[0].on_allow(request)  # the guard counts the call once it is finally allowed
    path.write_text(
        "version: 1\nrevision: '2'\nrules:\n  - {id: rate, limit: {per: principal, calls: 1, window: 60}}\n"
    )
    policy.reload()
    assert policy.decide(call_request(tool, at=1)).reason.code == ReasonCode.RATE_LIMITED


@pytest.mark.parametrize("combined", [None, AllOf, AnyOf, FirstApplicable, DenyOverrides])
def test_a_call_holds_to_the_revision_in_force_when_it_began(tmp_path: Path, combined: Any) -> None:
    """A reload landing in the middle of a call (a timer, a signal, another thread) decides the
    next call: it neither weighs this one with its risk settings nor names it, whether the file
    is the guard's policy or a member of it."""
    path = tmp_path / "policy.toml"
    revision = 'version = 1\nid = "{id}"\nrevision = "{rev}"\n[tools.ping]\nrisk = "write"\n[risk]\nthreshold = {at}\n'
    path.write_text(revision.format(id="lenient", rev="1", at=1000))
    enforcing = PolicyFile(path)

    async def reloading(request: CallRequest) -> Decision:
        path.write_text(revision.format(id="strict", rev="2", at=1))
        enforcing.reload()
        return Decision(True, request.principal.scopes, request.principal.scopes)

    guard = Guard(policy=enforcing if combined is None else combined(enforcing), shadow=reloading)
    guard.declare(ToolSpec("ping"))
    decided = anyio.run(guard.authorize, "ping", {}, access_token("alice", "")).decision
    assert decided.allowed
    if combined is None:
        assert (decided.policy_id, decided.policy_version) == ("lenient", "1")
    after = anyio.run(guard.authorize, "ping", {}, access_token("alice", "")).decision
    assert after.reason.code == ReasonCode.SESSION_RISK_EXCEEDED


def test_a_combination_with_slots_is_held_to_a_revision_whole(tmp_path: Path) -> None:
    """Holding a combination copies it; a subclass keeping its state in slots lost it."""
    path = tmp_path / "policy.toml"
    path.write_text('version = 1\nid = "file"\n[tools.ping]\n')

    class Named(AllOf):
        __slots__ = ("label",)

        @property  # type: ignore[override]
        def id(self) -> str:
            return f"named:{self.label}"

        @id.setter
        def id(self, value: str) -> None:
            pass

    combined = Named(PolicyFile(path))
    combined.label = "x"
    guard = Guard(policy=combined)
    guard.declare(ToolSpec("ping"))
    decided = anyio.run(guard.authorize, "ping", {}, access_token("alice", "")).decision
    assert decided.allowed and decided.policy_id == "named:x"


def test_lines_follow_strings_sub_tables_and_nested_arrays_of_tables() -> None:
    in_string = (
        'version = 1\ndescription = """\nlooks like\n[[rules]]\n"""\n\n[[rules]]\nid = "a"\nlimit = { calls = "5" }\n'
    )
    assert problems(in_string) == ["line 9: rules.0.limit.calls: Input should be a valid integer, not str '5'"]
    sub_table = 'version = 1\n\n[[rules]]\nid = "a"\ntools = ["x"]\n\n[rules.limit]\ncalls = "5"\n'
    assert problems(sub_table) == ["line 8: rules.0.limit.calls: Input should be a valid integer, not str '5'"]
    nested = (
        'version = 1\n[[rules]]\nid = "a"\n[[rules.arguments]]\nargument = "p"\n'
        '[[rules]]\nid = "b"\n[[rules.arguments]]\nargument = "q"\nwhat = 1\n'
    )
    assert problems(nested) == [
        "line 10: rules.1.arguments.0.what: unknown key (not in the policy schema; check its spelling)"
    ]


@pytest.mark.parametrize(
    ("text", "syntax"),
    [
        ("version = 1\nx = " + "[" * 2000 + "]" * 2000 + "\n", "toml"),
        ("version = 1\nx = " + "[" * 40 + "]" * 40 + "\n", "toml"),
        ("version: 1\nx: " + "[" * 100_000 + "]" * 100_000 + "\n", "yaml"),
        ("version: 1\nx: " + "{a: " * 50 + "1" + "}" * 50 + "\n", "yaml"),
    ],
    ids=["toml-deep", "toml-nested", "yaml-deep", "yaml-nested"],
)
def test_deeply_nested_documents_are_refused_quickly(text: str, syntax: str) -> None:
    [found] = problems(text, syntax)
    assert "deeper than 32 levels" in found


def test_header_like_text_in_a_string_is_scanned_in_linear_time() -> None:
    text = 'version = 1\ndescription = """\n[' + " " * 100_000 + 'x\n"""\n'
    assert problems(text) == ["line 2: description: String should have at most 1024 characters"]


@functools.cache
def example_policy() -> RulePolicy:
    return load_policy(EXAMPLES / "assistant.toml")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    tool=st.sampled_from(["read_file", "fetch_page", "read_secret", "send_mail", "other"]),
    arguments=st.dictionaries(st.sampled_from(["path", "url", "to", "limit", "x"]) | st.text(max_size=6), _json),
    claims=st.dictionaries(st.sampled_from(["groups", "roles", "x"]), _json),
    actors=st.lists(st.text(max_size=6), max_size=3),
)
def test_the_example_policy_decides_any_call_without_raising(
    tool: str, arguments: dict[str, object], claims: dict[str, object], actors: list[str]
) -> None:
    policy = example_policy()
    spec = policy.declared.get(tool) or ToolSpec(tool)
    request = call_request(
        spec, arguments, scopes="files:read web:fetch secrets:read mail:send", claims=claims, actor_chain=actors
    )
    decision = policy.decide(request)
    assert isinstance(decision, Decision)
    assert decision.allowed or decision.reasons
    explained, outcomes = policy.explain(request)
    assert explained.allowed == decision.allowed and outcomes


def test_the_quickstart_policy_loads_and_keeps_mail_internal() -> None:
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    found = re.search(r"```toml\n# policy.toml\n(.*?)```", quickstart, re.S)
    assert found is not None
    policy = parse_policy(found.group(1), "toml")
    tool = policy.declared["send_mail"]
    refused = policy.decide(call_request(tool, {"to": "eve@evil.test"}, scopes="mail:send"))
    assert refused.reason.code == ReasonCode.ARGUMENT_REJECTED
    assert policy.decide(call_request(tool, {"to": "bob@example.com"}, scopes="mail:send")).allowed
    after = call_request(tool, {"to": "bob@example.com"}, scopes="mail:send", earlier=[policy.declared["read_secret"]])
    assert policy.decide(after).reason.code == ReasonCode.SEQUENCE_FORBIDDEN


def test_two_reloads_in_quick_succession_leave_the_newer_file_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time as clock

    import mcp_guard.policy.files as files

    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrevision: '1'\nrules: []\n")
    policy = PolicyFile(path)
    parse = files.parse_policy

    def slow_on_the_first_edit(text: str, *args: Any, **kwargs: Any) -> Any:
        if "revision: '2'" in text:
            clock.sleep(0.2)  # a big file, a busy machine
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(files, "parse_policy", slow_on_the_first_edit)
    path.write_text("version: 1\nrevision: '2'\nrules: []\n")
    first = threading.Thread(target=policy.reload_if_changed)
    first.start()
    clock.sleep(0.05)
    path.write_text("version: 1\nrevision: '3'\nrules: []\n")
    second = threading.Thread(target=policy.reload_if_changed)
    second.start()
    first.join()
    second.join()
    assert policy.version == "3"


@pytest.mark.parametrize("kind", ["toml", "yaml"])
def test_integer_bounds_in_a_file_are_kept_exact(kind: str) -> None:
    """A bound past 2**53 was read as a float and rounded up: 2**53 + 3 let 2**53 + 4 through."""
    bound = 2**53 + 3
    text = (
        f'version = 1\n[[rules]]\nid = "cap"\narguments = [{{ argument = "n", type = "integer", maximum = {bound} }}]\n'
        if kind == "toml"
        else f"version: 1\nrules:\n  - id: cap\n    arguments:\n      - {{argument: n, type: integer, maximum: {bound}}}\n"
    )
    rule = parse_policy(text, kind).rules[0]
    assert isinstance(rule, ArgumentRule)
    constraint = rule.constraints[0]
    assert constraint.maximum == bound and constraint.violation({"n": bound}) is None
    assert constraint.violation({"n": bound + 1}) == f"argument 'n': must be at most {bound}"


@pytest.mark.anyio
async def test_each_limit_rule_of_a_file_counts_in_a_table_of_its_own(tmp_path: Path) -> None:
    """The file's limit rules shared one table: callers filling one rule's keys had every new
    caller of every other limited tool refused, across reloads too."""
    path = tmp_path / "policy.toml"
    path.write_text(
        HEADER
        + '[[rules]]\nid = "search-budget"\ntools = ["search"]\nlimit = { per = "principal", calls = 5, window = 60 }\n'
        + '[[rules]]\nid = "delete-rate"\ntools = ["delete"]\nlimit = { per = "principal", calls = 5, window = 60 }\n'
    )
    policy = PolicyFile(path)
    search = policy.current.rules[0]
    assert isinstance(search, LimitRule) and search.counters is not policy.current.rules[1].counters  # type: ignore[attr-defined]
    search.counters.max_keys = 3
    guard = Guard(policy=policy)
    guard.declare(ToolSpec("search"))
    guard.declare(ToolSpec("delete"))
    for index in range(3):
        assert (await guard.authorize("search", {}, access_token(f"flooder-{index}"))).allowed
    assert not (await guard.authorize("search", {}, access_token("flooder-3"))).allowed  # its table is full
    assert (await guard.authorize("delete", {}, access_token("admin"))).allowed
    path.write_text(path.read_text() + "# touched\n")
    policy.reload_if_changed()
    assert policy.current.rules[0].counters is search.counters  # type: ignore[attr-defined]  # kept by its id


@pytest.mark.anyio
async def test_a_limit_whose_window_changes_on_reload_counts_afresh(tmp_path: Path) -> None:
    """The windows open in the old table kept their old length: shortened from a day to a
    minute, a caller stayed refused for a day, quoted the new rule."""
    rule = (
        '[[rules]]\nid = "search-rate"\ntools = ["search"]\nlimit = {{ per = "principal", calls = 1, window = {} }}\n'
    )
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + rule.format(86400))
    policy, now = PolicyFile(path), [1_900_000_000.0]
    guard = Guard(policy=policy, clock=lambda: now[0])
    guard.declare(ToolSpec("search"))
    caller = access_token("alice", expires_in=None)
    assert [(await guard.authorize("search", {}, caller)).allowed for _ in range(2)] == [True, False]
    path.write_text(HEADER + rule.format(60))
    assert policy.reload_if_changed()
    now[0] += 120
    assert [(await guard.authorize("search", {}, caller)).allowed for _ in range(2)] == [True, False]
    path.write_text(HEADER)
    assert policy.reload_if_changed()
    assert policy._counters == {}  # a rule removed takes its table with it
