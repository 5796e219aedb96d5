"""mcp-guard: authorization and audit for Python MCP servers.

Every tool call proves who is calling (a verified `Principal`), under which governed
`Session`, and that this exact call is allowed now, with the scopes trimmed to what it needs.
Every decision is recorded.
"""

from mcp_guard.audit import AuditEvent, AuditSink, EventKind, MemoryAuditSink
from mcp_guard.context import current_call
from mcp_guard.errors import Refused, UnguardedCallError
from mcp_guard.guard import Authorization, Guard
from mcp_guard.identity import (
    AccessTokenIdentifier,
    BearerVerifier,
    Identifier,
    IntrospectionVerifier,
    JWKSCache,
    JWTVerifier,
    TrustedIssuer,
    WorkloadIdentity,
    token_fingerprint,
)
from mcp_guard.integrations.http import GuardHTTP, resource_metadata_url
from mcp_guard.integrations.mcp_sdk import GUARD_DENIED, GuardMiddleware, GuardTokenVerifier
from mcp_guard.model import (
    CallRequest,
    Decision,
    Principal,
    Reason,
    Risk,
    Session,
    SessionOwners,
    SessionState,
    ToolSpec,
)
from mcp_guard.policy import (
    AllOf,
    AnyOf,
    DenyOverrides,
    FirstApplicable,
    Policy,
    PolicyFile,
    PolicyFileError,
    RiskSettings,
    RulePolicy,
    ScopePolicy,
    as_policy,
    load_policy,
)
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeError, ScopeHierarchy, format_scope, parse_scope
from mcp_guard.session import MemorySessionStore, SessionKeys, SessionSettings, SessionStore

__version__ = "0.1.0"

__all__ = [
    "GUARD_DENIED",
    "AccessTokenIdentifier",
    "AllOf",
    "AnyOf",
    "AuditEvent",
    "AuditSink",
    "Authorization",
    "BearerVerifier",
    "CallRequest",
    "Decision",
    "DenyOverrides",
    "EventKind",
    "FirstApplicable",
    "Guard",
    "GuardHTTP",
    "GuardMiddleware",
    "GuardTokenVerifier",
    "Identifier",
    "IntrospectionVerifier",
    "JWKSCache",
    "JWTVerifier",
    "MemoryAuditSink",
    "MemorySessionStore",
    "Policy",
    "PolicyFile",
    "PolicyFileError",
    "Principal",
    "Reason",
    "ReasonCode",
    "Refused",
    "Risk",
    "RiskSettings",
    "RulePolicy",
    "ScopeError",
    "ScopeHierarchy",
    "ScopePolicy",
    "Session",
    "SessionKeys",
    "SessionOwners",
    "SessionSettings",
    "SessionState",
    "SessionStore",
    "ToolSpec",
    "TrustedIssuer",
    "UnguardedCallError",
    "WorkloadIdentity",
    "__version__",
    "as_policy",
    "current_call",
    "format_scope",
    "load_policy",
    "parse_scope",
    "resource_metadata_url",
    "token_fingerprint",
]
