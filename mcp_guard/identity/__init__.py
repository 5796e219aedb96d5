"""Who is calling: verifying credentials and turning them into a `Principal`."""

from mcp_guard.identity.access_token import AccessTokenIdentifier, Identifier, token_fingerprint
from mcp_guard.identity.bearer import BearerVerifier
from mcp_guard.identity.jwks import JWKSCache
from mcp_guard.identity.rfc7662 import IntrospectionVerifier
from mcp_guard.identity.rfc9068 import JWTVerifier, TrustedIssuer
from mcp_guard.identity.workload import WorkloadIdentity

__all__ = [
    "AccessTokenIdentifier",
    "BearerVerifier",
    "Identifier",
    "IntrospectionVerifier",
    "JWKSCache",
    "JWTVerifier",
    "TrustedIssuer",
    "WorkloadIdentity",
    "token_fingerprint",
]
