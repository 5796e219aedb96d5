"""Governed sessions: the store protocol, the embedded store, session keys and revocations."""

from mcp_guard.session.keys import SessionKeys
from mcp_guard.session.memory import MemorySessionStore
from mcp_guard.session.revocation import Revocations
from mcp_guard.session.settings import SessionSettings
from mcp_guard.session.store import EndResult, SessionStore

__all__ = ["EndResult", "MemorySessionStore", "Revocations", "SessionKeys", "SessionSettings", "SessionStore"]
