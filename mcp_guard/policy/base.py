"""The `Policy` protocol: one call in, one decision out."""

from __future__ import annotations

from typing import Protocol

from mcp_guard.model import CallRequest, Decision, Principal, ToolSpec

__all__ = ["Policy"]


class Policy(Protocol):
    """Decides tool calls, and which tools a principal may see listed.

    ``decide`` gets a call whose identity and session are already verified and whose tool is
    declared; it returns the decision, including the approved (trimmed) scopes. ``visible``
    answers for ``tools/list``, where there are no arguments yet: it should be true when some
    call to the tool could be allowed. Raising from either denies (the guard fails closed).
    """

    id: str
    version: str

    def decide(self, request: CallRequest) -> Decision: ...

    def visible(self, principal: Principal, tool: ToolSpec) -> bool: ...
