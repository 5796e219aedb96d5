"""The call a guarded tool is running under, visible to the tool through `current_call()`."""

from __future__ import annotations

from contextvars import ContextVar
from typing import NoReturn

from mcp_guard.errors import UnguardedCallError
from mcp_guard.model import CallRequest

__all__ = ["ADMITTED", "Admission", "current_call", "refuse_unguarded"]


class Admission:
    """One admitted call, while it runs. The integration ends it when the call returns, so a
    task the tool spawned (which inherits the context) cannot run a guarded tool on it later."""

    __slots__ = ("request",)

    def __init__(self, request: CallRequest) -> None:
        self.request: CallRequest | None = request

    def end(self) -> None:
        self.request = None


ADMITTED: ContextVar[Admission | None] = ContextVar("mcp_guard.current_call", default=None)
"""The admitted call; an integration sets it around the tool it admitted, and ends and resets it after."""


def current_call() -> CallRequest | None:
    """The admitted call being served (principal, session, tool, arguments), or None outside one.

    The session is a copy as it is now (`CallRequest.detached`): the stored one is what the
    next call is decided on (its history, risk score and deadlines), so a tool cannot change it.
    ``principal.scopes`` are the scopes the token carries (requested); the approved ones, the
    only ones the call may use, are those of the SDK's ``get_access_token()``.
    """
    admission = ADMITTED.get()
    request = admission.request if admission is not None else None
    return request.detached() if request is not None else None


def refuse_unguarded(tool: str, call: CallRequest | None) -> NoReturn:
    """Raise `UnguardedCallError` for ``tool``, which ran without a decision admitting it: outside
    any admitted call, or inside ``call``, admitted for another tool."""
    if call is not None:
        raise UnguardedCallError(
            f"tool {tool!r} ran inside the call mcp-guard admitted for tool {call.tool.name!r}: a guarded "
            "function runs only as the tool it was admitted as. Share code between tools through an "
            "undecorated function, and serve one function under two names with a guard.tool(name=...) for each"
        )
    raise UnguardedCallError(
        f"tool {tool!r} ran without an admitting mcp-guard decision: add GuardMiddleware(guard) to the "
        "server's middleware, and call tools through the server, not directly"
    )
