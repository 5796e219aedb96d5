"""The `BearerVerifier` protocol: a bearer token in, a verified `Principal` out, or `Refused`.

`JWTVerifier` (RFC 9068) and `IntrospectionVerifier` (RFC 7662) both satisfy it, so every place
that needs a verified caller (the SDK's token verifier, the HTTP layer, a configured workload
identity) takes either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from mcp_guard.model import Principal

if TYPE_CHECKING:
    from mcp_guard.identity.rfc9068 import TrustedIssuer

__all__ = ["BearerVerifier"]


class BearerVerifier(Protocol):
    """What verifies a bearer token into a `Principal` (`JWTVerifier`, `IntrospectionVerifier`,
    or one of your own): `GuardTokenVerifier`, `GuardHTTP` and `WorkloadIdentity` take one."""

    @property
    def issuers(self) -> Mapping[str, TrustedIssuer]:
        """The trusted issuers, by issuer identifier."""
        ...

    async def verify(self, token: str) -> Principal:
        """The principal ``token`` stands for; raises `Refused` with the reason otherwise."""
        ...
