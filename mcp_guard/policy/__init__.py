"""Deciding calls: the `Policy` protocol, combinators, the built-in rules and their engine,
policy files, shadow mode, and the Cedar adapter (`mcp_guard.policy.cedar`, the ``cedar`` extra)."""

from mcp_guard.policy.arguments import ArgumentConstraint
from mcp_guard.policy.base import Policy, PolicyFunction, Verdict, as_policy
from mcp_guard.policy.cedar import CedarError, CedarPolicy, CedarUnavailable, cedar_schema
from mcp_guard.policy.combine import AllOf, AnyOf, DenyOverrides, FirstApplicable
from mcp_guard.policy.document import PolicyDocument, policy_json_schema
from mcp_guard.policy.engine import RuleOutcome, RulePolicy
from mcp_guard.policy.files import PolicyFile, PolicyFileError, Problem, load_policy, parse_policy
from mcp_guard.policy.limits import Counters, LimitRule
from mcp_guard.policy.risk import CombinedRisk, RiskSettings
from mcp_guard.policy.rules import (
    ArgumentRule,
    DelegationRule,
    PrincipalRule,
    Rule,
    SequenceRule,
    TargetsRule,
    TimeWindowRule,
)
from mcp_guard.policy.scopes import ScopePolicy
from mcp_guard.policy.shadow import Shadow

__all__ = [
    "AllOf",
    "AnyOf",
    "ArgumentConstraint",
    "ArgumentRule",
    "CedarError",
    "CedarPolicy",
    "CedarUnavailable",
    "CombinedRisk",
    "Counters",
    "DelegationRule",
    "DenyOverrides",
    "FirstApplicable",
    "LimitRule",
    "Policy",
    "PolicyDocument",
    "PolicyFile",
    "PolicyFileError",
    "PolicyFunction",
    "PrincipalRule",
    "Problem",
    "RiskSettings",
    "Rule",
    "RuleOutcome",
    "RulePolicy",
    "ScopePolicy",
    "SequenceRule",
    "Shadow",
    "TargetsRule",
    "TimeWindowRule",
    "Verdict",
    "as_policy",
    "cedar_schema",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
]
