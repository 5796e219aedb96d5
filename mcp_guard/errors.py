"""Exceptions a pipeline stage raises, and the one a guarded tool raises when the guard was bypassed."""

from __future__ import annotations

from mcp_guard.reasons import default_message

__all__ = ["Refused", "UnguardedCallError"]


class Refused(Exception):
    """A stage refuses the call. The guard turns it into a denial with this code and records it.

    Raise it from a custom identifier or session-key strategy; policies return a `Decision`.
    """

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message or default_message(code)
        super().__init__(f"{code}: {self.message}")


class UnguardedCallError(RuntimeError):
    """A tool declared with ``@guard.tool`` ran without an admitting decision from the guard.

    This happens when the guard's middleware is not installed on the server, or when the
    function is called directly. The tool refuses to run rather than run unchecked.
    """
