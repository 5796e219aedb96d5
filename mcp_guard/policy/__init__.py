"""Deciding calls: the `Policy` protocol and the built-in scope policy."""

from mcp_guard.policy.base import Policy
from mcp_guard.policy.scopes import ScopePolicy

__all__ = ["Policy", "ScopePolicy"]
