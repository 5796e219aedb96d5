"""A configured workload identity for transports that carry no credential: stdio and in-process.

A stdio server has no HTTP header to take a bearer token from. Rather than serve every call
unauthenticated, the server is given a token, from an environment variable or a file (such as
a rotated, projected service-account token), and verifies it exactly as it would an HTTP one.
Calls that arrive without a credential then act as that verified workload; calls that do carry
one are identified from it as usual.

The trade-off: the identity is the workload's, not the end user's. Everyone who can talk to
the process over its stdio acts as that one principal, so give each workload its own token,
with only the scopes it needs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
from mcp.server.auth.provider import AccessToken

from mcp_guard.errors import Refused
from mcp_guard.identity.access_token import AccessTokenIdentifier, Identifier
from mcp_guard.identity.bearer import BearerVerifier
from mcp_guard.model import Principal
from mcp_guard.reasons import ReasonCode

__all__ = ["WorkloadIdentity"]

logger = logging.getLogger("mcp_guard")

_RETRYABLE = frozenset({ReasonCode.KEYS_UNAVAILABLE, ReasonCode.INTROSPECTION_FAILED})
"""Refusals that say nothing about the token itself: the previous principal stays."""


class WorkloadIdentity:
    """An `Identifier`: the configured workload for calls without a credential, else ``fallback``.

    Build it with `from_env` or `from_file`, then ``await refresh()`` before serving. Call
    ``refresh()`` again to rotate (or run `keep_fresh` in the server's lifespan): a token that no
    longer verifies is logged and the previous principal is kept until it expires, after which
    calls are refused as ``token_expired`` by the guard; unless verifying the held token again
    shows it refused for good (revoked, inactive), which ends the workload identity at once.
    """

    def __init__(
        self,
        verifier: BearerVerifier,
        *,
        env: str | None = None,
        file: str | os.PathLike[str] | None = None,
        fallback: Identifier | None = None,
    ) -> None:
        if (env is None) == (file is None):
            raise ValueError("give exactly one token source: env= or file=")
        self.verifier = verifier
        self.env = env
        self.file = Path(file) if file is not None else None
        self.fallback: Identifier = fallback if fallback is not None else AccessTokenIdentifier()
        self.principal: Principal | None = None
        self._token: str | None = None
        self._refreshing = anyio.Lock()

    @classmethod
    def from_env(cls, verifier: BearerVerifier, name: str = "MCP_GUARD_TOKEN") -> WorkloadIdentity:
        return cls(verifier, env=name)

    @classmethod
    def from_file(cls, verifier: BearerVerifier, path: str | os.PathLike[str]) -> WorkloadIdentity:
        return cls(verifier, file=path)

    def identify(self, credential: AccessToken | None) -> Principal:
        if credential is not None:
            return self.fallback.identify(credential)
        if self.principal is None:
            raise Refused(ReasonCode.TOKEN_MISSING, "No workload token is configured or none has verified yet.")
        return self.principal

    async def refresh(self) -> Principal:
        """Read the token from its source and verify it; keep the last good principal on failure,
        unless the held token is itself now refused for good (revoked, say).

        When the source yields nothing usable, the held token is verified again, so a token its
        issuer revoked is not kept just because its replacement is missing or bad. Refreshes run
        one at a time, so a slow older one can never overwrite a newer result.
        """
        async with self._refreshing:
            token: str | None = None
            try:
                token = await self._read()
                self.principal = await self.verifier.verify(token)
                self._token = token
                return self.principal
            except Refused as refusal:
                new: Refused = refusal
            except Exception:
                logger.exception("mcp-guard: refreshing the workload token failed")
                new = Refused(ReasonCode.TOKEN_MISSING, "The workload token could not be verified.")
            held = self.principal
            held_for_good = new.code not in _RETRYABLE and token is not None and token == self._token
            failure = new if held is None or held_for_good else await self._held_refusal()
            if held is None or failure is not None:
                self.principal = self._token = None
                failure = failure or new
                logger.error("mcp-guard: the workload token was refused (%s); no workload identity", failure.code)
                raise failure
            logger.error("mcp-guard: the new workload token was refused (%s); keeping the previous one", new.code)
            return held

    async def _held_refusal(self) -> Refused | None:
        """Why the token held now is refused for good, asked again; None while it stands (or
        while only its issuer is unreachable). A verifier that fails otherwise refuses it."""
        if self._token is None:
            return None
        try:
            await self.verifier.verify(self._token)
        except Refused as refusal:
            return refusal if refusal.code not in _RETRYABLE else None
        except Exception:
            logger.exception("mcp-guard: verifying the held workload token again failed")
            return Refused(ReasonCode.GUARD_ERROR, "The held workload token could not be verified again.")
        return None

    async def keep_fresh(self, every: float = 60.0) -> None:
        """Refresh forever, every ``every`` seconds; run it in a task for the server's lifetime."""
        while True:
            await anyio.sleep(every)
            try:
                await self.refresh()
            except Exception:  # refresh logged why; this loop must outlive any one failure
                logger.debug("mcp-guard: workload token refresh failed; retrying in %s s", every)

    async def _read(self) -> str:
        if self.env is not None:
            token = os.environ.get(self.env)
            if not token:
                raise Refused(ReasonCode.TOKEN_MISSING, f"The environment variable {self.env} holds no token.")
            return token.strip()
        assert self.file is not None
        try:
            text = await anyio.Path(self.file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            raise Refused(ReasonCode.TOKEN_MISSING, f"The workload token file could not be read: {error}.") from None
        return text.strip()
