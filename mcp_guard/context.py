"""The call a guarded tool is running under, visible to the tool through `current_call()`."""

from __future__ import annotations

from contextvars import ContextVar, Token

from mcp_guard.errors import UnguardedCallError
from mcp_guard.model import CallRequest

__all__ = ["admit", "current_call", "release", "require_admission"]

_current: ContextVar[CallRequest | None] = ContextVar("mcp_guard.current_call", default=None)


def current_call() -> CallRequest | None:
    """The admitted call being served (principal, session, tool, arguments), or None outside one."""
    return _current.get()


def admit(request: CallRequest) -> Token[CallRequest | None]:
    """Mark ``request`` as admitted for the code that runs next in this context."""
    return _current.set(request)


def release(token: Token[CallRequest | None]) -> None:
    _current.reset(token)


def require_admission(tool: str) -> CallRequest:
    """The admitted call for ``tool``; raises `UnguardedCallError` when there is none."""
    request = _current.get()
    if request is None or request.tool.name != tool:
        raise UnguardedCallError(
            f"tool {tool!r} ran without an admitting mcp-guard decision: add GuardMiddleware(guard) to the "
            "server's middleware, and call tools through the server, not directly"
        )
    return request
