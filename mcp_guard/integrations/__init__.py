"""Adapters from MCP server frameworks to the guard. The core never imports these."""
