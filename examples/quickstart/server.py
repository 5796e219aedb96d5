"""A small notes server guarded by mcp-guard.

Three tools with three levels of risk: reading needs ``notes:read``, writing ``notes:write``
(which the scope hierarchy says implies ``notes:read``), and wiping everything ``notes:admin``.
Run it on its own with ``python examples/quickstart/server.py``: it serves streamable HTTP on
http://127.0.0.1:8000/mcp and accepts the demo bearer tokens printed at start.
"""

from __future__ import annotations

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from mcp_guard import AuditSink, Guard, GuardMiddleware, Risk, SessionOwners, SessionSettings, current_call
from mcp_guard.audit.file import FileAuditSink
from mcp_guard.policy import ArgumentConstraint, ArgumentRule, RulePolicy
from mcp_guard.testing import StaticTokenVerifier, access_token

ISSUER = "https://auth.example.test"

DEMO_TOKENS: dict[str, AccessToken] = {
    "reader-token": access_token(
        "research-agent", "notes:read", client_id="research-app", issuer=ISSUER, expires_in=None
    ),
    "writer-token": access_token(
        "editor-agent", "notes:write mail:send calendar:read", client_id="editor-app", issuer=ISSUER, expires_in=None
    ),
    "admin-token": access_token("ops-agent", "notes:admin", client_id="ops-console", issuer=ISSUER, expires_in=None),
}
"""Bearer strings the demo accepts, for as long as it runs. A real server verifies tokens from
its authorization server, and they expire."""


NOTES_POLICY = RulePolicy(
    [
        ArgumentRule(
            "plain-titles",
            tools=frozenset({"write_note"}),
            constraints=(ArgumentConstraint("title", type="string", required=True, pattern="[A-Za-z0-9 _-]{1,40}"),),
        )
    ],
    hierarchy={"notes:write": "notes:read"},
    id="notes",
    version="2026-11",
)
"""Scopes first (writing implies reading), then one rule: note titles are short and plain."""


def build_guard(*sinks: AuditSink) -> Guard:
    """The notes guard; decisions go to ``sinks`` (an in-memory log when none are given)."""
    return Guard(
        policy=NOTES_POLICY,
        audit=sinks or None,
        session_settings=SessionSettings(
            purpose="notes assistant",
            idle_ttl=10 * 60,
            owners=SessionOwners(policy_owner="security@example.test", operator="notes-oncall"),
        ),
    )


def build_server(guard: Guard, resource_url: str = "http://127.0.0.1:8000/mcp") -> MCPServer:
    """The notes server, with the guard installed and demo bearer tokens accepted."""
    mcp = MCPServer(
        "notes",
        middleware=[GuardMiddleware(guard)],
        token_verifier=StaticTokenVerifier(DEMO_TOKENS),
        auth=AuthSettings(issuer_url=ISSUER, resource_server_url=resource_url, validate_token_resource=False),
    )
    notes: dict[str, str] = {"welcome": "Every call proves who is calling and what it may do."}

    @mcp.tool()
    @guard.tool(scopes="notes:read")
    async def read_note(title: str) -> str:
        """Read a note by title."""
        return notes.get(title, f"(no note called {title!r})")

    @mcp.tool()
    @guard.tool(scopes="notes:write", risk=Risk.WRITE)
    async def write_note(title: str, text: str) -> str:
        """Create or replace a note. Reports the scopes the tool actually received."""
        notes[title] = text
        token = get_access_token()
        call = current_call()
        granted = " ".join(token.scopes) if token else "-"
        return f"saved {title!r} in session {call.session.id if call else '-'} with scopes [{granted}]"

    @mcp.tool()
    @guard.tool(scopes="notes:admin", risk=Risk.ADMIN, conceal=True)
    async def wipe_notes() -> str:
        """Delete every note."""
        notes.clear()
        return "all notes deleted"

    return mcp


def main() -> None:
    import uvicorn

    print("Demo bearer tokens:")
    for bearer, token in DEMO_TOKENS.items():
        print(f"  {bearer:<14} {token.subject} / {token.client_id}: {' '.join(token.scopes)}")
    log = FileAuditSink("notes-audit.jsonl")
    print(f"Audit log: {log.path.resolve()} (check it with: mcp-guard audit verify {log.path})")
    app = build_server(build_guard(log)).streamable_http_app()
    try:
        uvicorn.run(app, host="127.0.0.1", port=8000)
    finally:
        log.close()  # the queued tail and a closing checkpoint


if __name__ == "__main__":
    main()
