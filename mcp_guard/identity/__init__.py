"""Who is calling: turning a verified credential into a `Principal`."""

from mcp_guard.identity.access_token import AccessTokenIdentifier, Identifier, token_fingerprint

__all__ = ["AccessTokenIdentifier", "Identifier", "token_fingerprint"]
