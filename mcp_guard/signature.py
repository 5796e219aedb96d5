"""What the guard learns from a tool function's signature: its arguments' JSON Schema, and
which arguments the MCP SDK parses from JSON text before the tool sees them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
from mcp.server.mcpserver.utilities.func_metadata import func_metadata

__all__ = ["JsonArguments", "signature_of"]


class JsonArguments(NamedTuple):
    """The arguments of a tool the SDK parses from JSON text before the tool sees them.

    The SDK turns a string sent for a parameter not annotated ``str`` into the list, object,
    boolean or null it encodes (some clients send every value as text). Policies must judge
    what the tool will receive, so the guard parses them the same way, with the SDK's own code.
    """

    keys: frozenset[str]
    parse: Callable[[dict[str, Any]], dict[str, Any]]

    def apply(self, arguments: dict[str, Any]) -> dict[str, Any]:
        for key in self.keys:
            if type(arguments.get(key)) is str:
                return self.parse(arguments)
        return arguments


def signature_of(fn: Callable[..., Any]) -> tuple[dict[str, Any], JsonArguments | None]:
    """The JSON Schema of ``fn``'s arguments, built exactly as the SDK builds a tool's
    ``inputSchema``, and which of them the SDK parses from JSON text."""
    context = find_context_parameter(fn)
    model = func_metadata(fn, skip_names=[context] if context else [])
    fields = model.arg_model.model_fields.items()
    keys = frozenset(key for name, info in fields if info.annotation is not str for key in (name, info.alias) if key)
    return model.arg_model.model_json_schema(by_alias=True), JsonArguments(keys, model.pre_parse_json) if keys else None
