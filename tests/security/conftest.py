"""The security suites share one real token issuer on loopback per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from authority import Authority, serve_authority


@pytest.fixture(scope="module")
def authority() -> Iterator[Authority]:
    with serve_authority() as running:
        yield running
