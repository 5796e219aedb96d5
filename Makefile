# Two entry points: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("mcp-guard needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/python examples/quickstart/demo.py

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict mcp_guard

# oidc-provider (npm) for the authorization-server integration tests; they skip without it,
# except in CI (MCP_GUARD_REQUIRE_SERVICES=1), where they fail.
OIDC := tests/oidc/node_modules/.package-lock.json

$(OIDC): tests/oidc/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/oidc --no-audit --no-fund; \
	else echo "npm not found: the oidc-provider tests will be skipped"; fi

test: lint $(OIDC)
	$(BIN)/pytest

bench: $(INSTALLED)
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,ops --benchmark-sort=name
	$(BIN)/python benchmarks/ratios.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks .hypothesis
