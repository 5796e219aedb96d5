"""Authorization server metadata by RFC 8414 (and OpenID discovery): where an issuer's endpoints are.

The document is fetched from the issuer's well-known location, and trusted only if its own
``issuer`` is exactly the issuer asked about (RFC 8414 section 3.3). Endpoints it names must be
https, or plain http on loopback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx2

from mcp_guard.errors import Refused
from mcp_guard.identity.jwks import fetch_json
from mcp_guard.reasons import ReasonCode

__all__ = ["check_fetchable", "metadata_endpoint"]

logger = logging.getLogger("mcp_guard")


def check_fetchable(uri: str) -> None:
    """Refuse a URL to fetch keys, metadata or answers from unless it is https (or loopback http)."""
    parts = urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if not parts.hostname or (parts.scheme != "https" and not (parts.scheme == "http" and loopback)):
        raise ValueError(f"{uri!r} must be an https URL (plain http only on loopback)")


def _metadata_urls(issuer: str) -> tuple[str, ...]:
    """Where an issuer's metadata may be, in the order MCP clients ask: RFC 8414's location, then
    OpenID discovery's. For an issuer with a path, the well-known part goes between host and
    path (RFC 8414 section 3.1), and OpenID's is also tried appended to the path."""
    parts = urlsplit(issuer)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    oauth, openid = "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"
    if not path:
        return (origin + oauth, origin + openid)
    return (origin + oauth + path, origin + openid + path, origin + path + openid)


async def metadata_endpoint(issuer: str, member: str, unavailable: ReasonCode) -> str:
    """The endpoint URL ``member`` (e.g. ``jwks_uri``) from ``issuer``'s metadata.

    Refuses with ``unavailable`` when no metadata can be fetched, it names another issuer, or
    it lacks the member.
    """
    check_fetchable(issuer)
    for url in _metadata_urls(issuer):
        try:
            metadata: Mapping[str, Any] = await fetch_json(url)
        except (OSError, ValueError, httpx2.HTTPError) as error:
            logger.warning("mcp-guard: metadata of %s not at %s: %s", issuer, url, error)
            continue
        uri = metadata.get(member)
        if metadata.get("issuer") != issuer or not isinstance(uri, str):
            raise Refused(unavailable, f"The issuer's metadata names another issuer or no {member}.")
        try:
            check_fetchable(uri)
        except ValueError:
            raise Refused(unavailable, f"The issuer's {member} is not an https URL.") from None
        return uri
    raise Refused(unavailable, "The issuer's metadata could not be fetched: retry later.")
