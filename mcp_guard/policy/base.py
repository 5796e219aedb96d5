"""The `Policy` protocol: one call in, one decision out, and how a plain function becomes one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeAlias

from mcp_guard.model import CallRequest, Decision, Principal, ToolSpec

__all__ = ["Policy", "PolicyFunction", "Verdict", "as_policy"]

Verdict: TypeAlias = Decision | None
"""A decision, or None when the policy does not apply to the call (it abstains)."""

PolicyFunction: TypeAlias = Callable[[CallRequest], Verdict | Awaitable[Verdict]]


class Policy(Protocol):
    """Decides tool calls, and which tools a principal may see listed.

    ``decide`` gets a call whose identity and session are already verified and whose tool is
    declared (``request.tool`` is the declaration as the whole policy sees it, see
    `Guard.as_policy_sees`); it returns the decision, including the approved (trimmed) scopes,
    or None when it has nothing to say (combinators pass over it; the guard denies with
    ``no_applicable_rule``).
    In-process rules answer synchronously; a remote engine may return an awaitable. ``visible``
    answers for ``tools/list``, where there are no arguments yet: it should be true when some
    call to the tool could be allowed. Raising from either denies (the guard fails closed).

    A policy that never abstains may say so with ``abstains = False`` (every built-in one
    does): `FirstApplicable` then knows it settles every call it is asked about.
    """

    id: str
    version: str

    def decide(self, request: CallRequest) -> Verdict | Awaitable[Verdict]: ...

    def visible(self, principal: Principal, tool: ToolSpec) -> bool: ...


def named_policy(policy: Policy | PolicyFunction) -> Policy:
    """``policy`` as `as_policy` makes it, refused (`TypeError`) without a string ``id`` and
    ``version``: every decision and disagreement is recorded under them."""
    policy = as_policy(policy)
    for attribute in ("id", "version"):
        if not isinstance(getattr(policy, attribute, None), str):
            raise TypeError(f"policy {policy!r} has no string {attribute!r}: decisions are recorded under it")
    return policy


def reloads(policy: object) -> bool:
    """Whether ``policy``, or a member of a combination of it, reloads in place (`PolicyFile`):
    then a call holds to the revision in force when it begins (``in_force()``)."""
    members = getattr(policy, "policies", None)
    if isinstance(members, tuple):
        return any(reloads(member) for member in members)
    return callable(getattr(policy, "in_force", None))


def in_force(policy: Policy) -> Policy:
    """``policy`` as it is in force now, held for one call: a reloading policy's current
    revision, a combination with its reloading members held so, any other policy itself."""
    holding = getattr(policy, "in_force", None)
    return holding() if callable(holding) else policy


def may_abstain(policy: Policy) -> bool:
    """Whether ``policy`` may answer None; one that does not say is taken to."""
    return bool(getattr(policy, "abstains", True))


def cancelled_itself(error: BaseException) -> bool:
    """Whether ``error`` is a cancellation a policy raised of its own accord (an inner future it
    cancelled): that policy failing, which denies like any failure. The cancellation of the task
    awaiting the policy is not, and must propagate. Only asyncio tells the two apart (the task's
    pending cancellations); on any other event loop every cancellation is taken as real."""
    if not isinstance(error, asyncio.CancelledError):
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop running here
        return False
    return task is not None and task.cancelling() == 0


class FunctionPolicy:
    """A policy made of one function; it lists every tool (it cannot judge a call before it is made)."""

    def __init__(self, fn: PolicyFunction, *, id: str, version: str) -> None:
        self.fn = fn
        self.id = id
        self.version = version

    def decide(self, request: CallRequest) -> Verdict | Awaitable[Verdict]:
        return self.fn(request)

    def visible(self, principal: Principal, tool: ToolSpec) -> bool:
        return True

    def __repr__(self) -> str:
        return f"FunctionPolicy({self.id!r})"


def as_policy(policy: Policy | PolicyFunction, *, id: str | None = None, version: str = "1") -> Policy:
    """``policy`` itself when it is a `Policy`; a function (sync or async) wrapped into one.

    A function's policy id defaults to its name, so decisions and audit records name it.
    """
    if hasattr(policy, "decide") and hasattr(policy, "visible"):
        return policy  # type: ignore[return-value]
    if not callable(policy):
        raise TypeError(f"a policy is an object with decide() and visible(), or a function; not {policy!r}")
    return FunctionPolicy(policy, id=id or str(getattr(policy, "__name__", "policy")), version=version)
