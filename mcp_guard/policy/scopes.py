"""The built-in policy: declared tools only, every required scope granted, the rest trimmed away."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mcp_guard.model import CallRequest, Decision, Principal, Reason, ToolSpec
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeHierarchy, format_scope

__all__ = ["ScopePolicy"]

RULE_REQUIRED_SCOPES = "scopes.required"


class ScopePolicy:
    """Allow a call when the granted scopes (widened by the hierarchy) cover the tool's required ones.

    The approved set is the widened grant cut down to the tool's required and optional scopes;
    everything else the token carries is trimmed. Decisions depend only on the tool and the
    granted set, so they are memoised: a warm decision is a couple of dict lookups.
    """

    _MEMO_LIMIT = 16_384

    def __init__(
        self,
        hierarchy: ScopeHierarchy | Mapping[str, str | Iterable[str]] | None = None,
        *,
        id: str = "mcp-guard/scopes",
        version: str = "1",
    ) -> None:
        self.id = id
        self.version = version
        self._hierarchy = hierarchy if isinstance(hierarchy, ScopeHierarchy) else ScopeHierarchy(hierarchy)
        self._memo: dict[tuple[str, frozenset[str]], tuple[ToolSpec, Decision]] = {}

    @property
    def hierarchy(self) -> ScopeHierarchy:
        """The scope hierarchy, fixed for this policy's life (its decisions are memoised)."""
        return self._hierarchy

    def decide(self, request: CallRequest) -> Decision:
        tool, requested = request.tool, request.principal.scopes
        key = (tool.name, requested)
        memo = self._memo.get(key)
        if memo is not None and memo[0] is tool:
            return memo[1]
        decision = self._decide(tool, requested)
        if len(self._memo) >= self._MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = (tool, decision)
        return decision

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        return tool.scopes <= self._hierarchy.expand(principal.scopes)

    def _decide(self, tool: ToolSpec, requested: frozenset[str]) -> Decision:
        granted = self._hierarchy.expand(requested)
        missing = tool.scopes - granted
        if missing:
            reason = Reason.of(
                ReasonCode.INSUFFICIENT_SCOPE,
                f"Tool {tool.name!r} requires scope {format_scope(tool.scopes)!r}; "
                f"missing {format_scope(missing)!r}. Request a token with these scopes.",
            )
            return Decision(
                allowed=False,
                requested_scopes=requested,
                missing_scopes=missing,
                reasons=(reason,),
                rule_ids=(RULE_REQUIRED_SCOPES,),
                policy_id=self.id,
                policy_version=self.version,
            )
        return Decision(
            allowed=True,
            requested_scopes=requested,
            approved_scopes=granted & tool.usable_scopes,
            reasons=(Reason.of(ReasonCode.ALLOWED),),
            rule_ids=(RULE_REQUIRED_SCOPES,),
            policy_id=self.id,
            policy_version=self.version,
        )
