"""The catalogue of reason codes a decision can carry, each with the message a caller sees.

Codes are stable, machine-readable strings: clients branch on them, audit queries filter on
them. Messages say what went wrong and what to do about it, and never echo secrets.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ReasonCode", "default_message"]


class ReasonCode(StrEnum):
    """Why a call was allowed or refused."""

    ALLOWED = "allowed"
    # identity
    TOKEN_MISSING = "token_missing"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    ISSUER_MISSING = "issuer_missing"
    SUBJECT_MISSING = "subject_missing"
    SCOPE_MALFORMED = "scope_malformed"
    SUBJECT_REVOKED = "subject_revoked"
    CLIENT_REVOKED = "client_revoked"
    # token verification
    TOKEN_TOO_LARGE = "token_too_large"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_TYPE_INVALID = "token_type_invalid"
    TOKEN_BOUND = "token_bound"
    ALGORITHM_FORBIDDEN = "algorithm_forbidden"
    HEADER_FORBIDDEN = "header_forbidden"
    CRIT_UNSUPPORTED = "crit_unsupported"
    ISSUER_UNTRUSTED = "issuer_untrusted"
    KEY_UNKNOWN = "key_unknown"
    KEYS_UNAVAILABLE = "keys_unavailable"
    SIGNATURE_INVALID = "signature_invalid"
    AUDIENCE_MISMATCH = "audience_mismatch"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_TOO_OLD = "token_too_old"
    CLAIM_MISSING = "claim_missing"
    CLAIM_INVALID = "claim_invalid"
    SCOPE_CONFLICT = "scope_conflict"
    DELEGATION_TOO_DEEP = "delegation_too_deep"
    TOKEN_INACTIVE = "token_inactive"
    INTROSPECTION_FAILED = "introspection_failed"
    # session
    SESSION_UNAVAILABLE = "session_unavailable"
    SESSION_BINDING_MISMATCH = "session_binding_mismatch"
    SESSION_REVOKED = "session_revoked"
    SESSION_EXPIRED = "session_expired"
    SESSION_IDLE_EXPIRED = "session_idle_expired"
    # the call itself
    REQUEST_MALFORMED = "request_malformed"
    TOOL_NOT_FOUND = "tool_not_found"
    ARGUMENTS_INVALID = "arguments_invalid"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    DELEGATION_FORBIDDEN = "delegation_forbidden"
    DELEGATION_REQUIRED = "delegation_required"
    ACTOR_NOT_ALLOWED = "actor_not_allowed"
    # policy rules
    POLICY_DENIED = "policy_denied"
    NO_APPLICABLE_RULE = "no_applicable_rule"
    PRINCIPAL_NOT_ALLOWED = "principal_not_allowed"
    ARGUMENT_REJECTED = "argument_rejected"
    SEQUENCE_FORBIDDEN = "sequence_forbidden"
    TOO_MANY_TARGETS = "too_many_targets"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXHAUSTED = "budget_exhausted"
    OUTSIDE_TIME_WINDOW = "outside_time_window"
    SESSION_RISK_EXCEEDED = "session_risk_exceeded"
    POLICY_ERROR = "policy_error"
    # the guard
    GUARD_ERROR = "guard_error"


_MESSAGES: dict[str, str] = {
    ReasonCode.ALLOWED: "The call is allowed.",
    ReasonCode.TOKEN_MISSING: "This call needs an access token: send 'Authorization: Bearer <token>'.",
    ReasonCode.TOKEN_EXPIRED: "The access token has expired: obtain a new one and retry.",
    ReasonCode.TOKEN_REVOKED: "The access token has been revoked: obtain a new one.",
    ReasonCode.ISSUER_MISSING: "The access token names no issuer ('iss'): use a token from a trusted server.",
    ReasonCode.SUBJECT_MISSING: "The access token names no subject ('sub'): use a token issued to a workload.",
    ReasonCode.SCOPE_MALFORMED: "The access token's scope is not valid RFC 6749 scope syntax.",
    ReasonCode.TOKEN_TOO_LARGE: "The access token is too large to be a valid token.",
    ReasonCode.TOKEN_MALFORMED: "The access token is not a well-formed signed JWT.",
    ReasonCode.TOKEN_TYPE_INVALID: "The token is not an access token ('typ' must be 'at+jwt').",
    ReasonCode.TOKEN_BOUND: "The token is bound to a key or certificate (cnf) this server cannot check: present it "
    "the way it is bound, not as a bearer token.",
    ReasonCode.ALGORITHM_FORBIDDEN: "The token is signed with an algorithm this server does not accept.",
    ReasonCode.HEADER_FORBIDDEN: "The token header carries a key or key URL; keys come only from the issuer's JWKS.",
    ReasonCode.CRIT_UNSUPPORTED: "The token header marks an extension critical that this server does not support.",
    ReasonCode.ISSUER_UNTRUSTED: "The token comes from an issuer this server does not trust.",
    ReasonCode.KEY_UNKNOWN: "The token is signed with a key the issuer does not publish.",
    ReasonCode.KEYS_UNAVAILABLE: "The issuer's signing keys are unavailable right now: retry later.",
    ReasonCode.SIGNATURE_INVALID: "The token's signature does not verify.",
    ReasonCode.AUDIENCE_MISMATCH: "The token was not issued for this server (audience): request one for it.",
    ReasonCode.TOKEN_NOT_YET_VALID: "The token is not valid yet: check the clocks, or wait.",
    ReasonCode.TOKEN_TOO_OLD: "The token was issued too long ago for this server: obtain a new one.",
    ReasonCode.CLAIM_MISSING: "The token lacks a claim this server requires.",
    ReasonCode.CLAIM_INVALID: "A token claim has the wrong type or value.",
    ReasonCode.SCOPE_CONFLICT: "The token carries both 'scope' and 'scp': use one.",
    ReasonCode.DELEGATION_TOO_DEEP: "The token's delegation chain ('act') is deeper than this server allows.",
    ReasonCode.TOKEN_INACTIVE: "The authorization server says this token is not active: obtain a new one.",
    ReasonCode.INTROSPECTION_FAILED: "The token could not be checked with the authorization server: retry later.",
    ReasonCode.SUBJECT_REVOKED: "Access for this subject has been revoked: contact the server operator.",
    ReasonCode.CLIENT_REVOKED: "Access for this client has been revoked: contact the server operator.",
    ReasonCode.SESSION_UNAVAILABLE: "No governed session could be established for this call.",
    ReasonCode.SESSION_BINDING_MISMATCH: "This session belongs to another identity: open a new session.",
    ReasonCode.SESSION_REVOKED: "This session has been revoked: open a new session.",
    ReasonCode.SESSION_EXPIRED: "This session has reached its maximum lifetime: open a new session.",
    ReasonCode.SESSION_IDLE_EXPIRED: "This session was idle too long: open a new session.",
    ReasonCode.REQUEST_MALFORMED: "The tools/call request is malformed: 'name' must be a string.",
    ReasonCode.TOOL_NOT_FOUND: "Unknown tool.",
    ReasonCode.ARGUMENTS_INVALID: "Tool arguments must be a JSON object.",
    ReasonCode.INSUFFICIENT_SCOPE: "The access token lacks scopes this tool requires.",
    ReasonCode.DELEGATION_FORBIDDEN: "This tool may not be called on someone's behalf: use the subject's own token.",
    ReasonCode.DELEGATION_REQUIRED: "This tool may only be called by an agent acting on someone's behalf.",
    ReasonCode.ACTOR_NOT_ALLOWED: "The agent acting on the subject's behalf is not allowed to call this tool.",
    ReasonCode.POLICY_DENIED: "The call is not allowed by policy.",
    ReasonCode.NO_APPLICABLE_RULE: "No policy rule allows this call.",
    ReasonCode.PRINCIPAL_NOT_ALLOWED: "This caller is not allowed to call this tool.",
    ReasonCode.ARGUMENT_REJECTED: "An argument of this call is outside what the policy allows.",
    ReasonCode.SEQUENCE_FORBIDDEN: "This tool may not follow the tools already called in this session.",
    ReasonCode.TOO_MANY_TARGETS: "This session has reached as many distinct targets as the policy allows.",
    ReasonCode.RATE_LIMITED: "Too many calls: retry later.",
    ReasonCode.BUDGET_EXHAUSTED: "The call budget is used up: open a new session, or ask the operator.",
    ReasonCode.OUTSIDE_TIME_WINDOW: "This tool may not be called at this time.",
    ReasonCode.SESSION_RISK_EXCEEDED: "This session crossed its risk threshold and was revoked: open a new session.",
    ReasonCode.POLICY_ERROR: "The call was refused because the policy failed to evaluate it.",
    ReasonCode.GUARD_ERROR: "The call was refused because the authorization check failed internally.",
}


def default_message(code: str) -> str:
    """The caller-facing message for ``code`` (custom codes get a generic one)."""
    return _MESSAGES.get(code, _MESSAGES[ReasonCode.POLICY_DENIED])
