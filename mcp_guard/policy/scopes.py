"""The built-in policy: declared tools only, every required scope granted, the rest trimmed away."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from mcp_guard.memo import remember
from mcp_guard.model import CallRequest, Decision, Delegation, Principal, Reason, ToolSpec
from mcp_guard.reasons import ReasonCode
from mcp_guard.scopes import ScopeHierarchy

__all__ = ["ScopePolicy", "check_within_grant", "granted_scopes"]

RULE_REQUIRED_SCOPES = "scopes.required"
RULE_DELEGATION = "delegation"


class ScopePolicy:
    """Allow a call when the granted scopes (widened by the hierarchy) cover the tool's required ones,
    and the tool's delegation rule accepts the current actor (if any).

    The approved set is the widened grant cut down to the tool's required and optional scopes;
    everything else the token carries is trimmed. Decisions depend only on the tool and the
    granted set and current actor, so they are memoised: a warm decision is a couple of dict lookups.
    """

    _MEMO_LIMIT = 16_384
    abstains = False

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
        self._memo: dict[tuple[str, frozenset[str], str | None], tuple[ToolSpec, Decision]] = {}

    @property
    def hierarchy(self) -> ScopeHierarchy:
        """The scope hierarchy, fixed for this policy's life (its decisions are memoised)."""
        return self._hierarchy

    def decide(self, request: CallRequest) -> Decision:
        principal = request.principal
        tool, requested = request.tool, principal.scopes
        actor = principal.actor_chain[0] if principal.actor_chain else None
        key = (tool.name, requested, actor)
        memo = self._memo.get(key)
        if memo is not None and memo[0] is tool:
            return memo[1]
        decision = self.judge(tool, requested, actor)
        remember(self._memo, key, (tool, decision), self._MEMO_LIMIT)
        return decision

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        actor = principal.actor_chain[0] if principal.actor_chain else None
        return delegation_refusal(
            tool.delegation, tool.actors, actor
        ) is None and tool.scopes <= self._hierarchy.expand(principal.scopes)

    def judge(self, tool: ToolSpec, requested: frozenset[str], actor: str | None) -> Decision:
        """The decision for a call to ``tool`` granted ``requested``, made by ``actor`` (not memoised)."""
        refusal = delegation_refusal(tool.delegation, tool.actors, actor)
        if refusal is not None:
            return Decision.deny(
                refusal, requested=requested, rule_id=RULE_DELEGATION, policy_id=self.id, policy_version=self.version
            )
        granted = self._hierarchy.expand(requested)
        missing = tool.scopes - granted
        if missing:
            reason = Reason.of(
                ReasonCode.INSUFFICIENT_SCOPE,
                f"Tool {tool.name!r} requires {_listed(tool.scopes)}; missing {_listed(missing, named=False)}. "
                "Request a token with these scopes.",
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


def delegation_refusal(mode: Delegation, actors: frozenset[str], actor: str | None) -> ReasonCode | None:
    """Why delegation ``mode`` (with its allowed ``actors``) refuses a call made by the current
    ``actor`` (None: the subject acts itself), or None when it does not."""
    if actor is None:
        return ReasonCode.DELEGATION_REQUIRED if mode == "require" else None
    if mode == "forbid":
        return ReasonCode.DELEGATION_FORBIDDEN
    if actors and actor not in actors:
        return ReasonCode.ACTOR_NOT_ALLOWED
    return None


def _listed(scopes: frozenset[str], *, named: bool = True) -> str:
    """``scopes`` for a message, each quoted on its own: ``scope 'a'``, ``scopes 'a', 'b'``."""
    quoted = ", ".join(repr(scope) for scope in sorted(scopes))
    if not named:
        return quoted
    return f"scope {quoted}" if len(scopes) == 1 else f"scopes {quoted}"


def granted_scopes(policy: object, principal: Principal) -> frozenset[str]:
    """The scopes ``principal`` was granted, widened by every scope hierarchy ``policy`` holds:
    its own, and its members' in a combination (each may widen the grant its own way)."""
    granted = principal.scopes
    for hierarchy in _hierarchies(policy):
        granted = granted | hierarchy.expand(principal.scopes)
    return granted


def _hierarchies(policy: object) -> Iterator[ScopeHierarchy]:
    hierarchy = getattr(policy, "hierarchy", None)
    if isinstance(hierarchy, ScopeHierarchy):
        yield hierarchy
    members = getattr(policy, "policies", None)
    for member in members if isinstance(members, tuple) else ():
        yield from _hierarchies(member)


def check_within_grant(decision: Decision, principal: Principal, policy: object) -> None:
    """Refuse (`ValueError`) an allowing ``decision`` that approves a scope ``principal`` was not
    granted, after ``policy``'s hierarchies (see `granted_scopes`): a policy may only narrow the
    grant, never widen it. A policy approving what a hierarchy implies says so by its
    ``hierarchy``, as every built-in one does."""
    widened = decision.approved_scopes - granted_scopes(policy, principal)
    if widened:
        raise ValueError(f"the policy approved scopes the caller was not granted: {_listed(widened, named=False)}")
