"""The Python in README.md and docs/ stays true of the code: it parses, what it imports exists,
and every keyword it passes to this package's classes and functions is one they take.

The snippets are fragments of servers (a token verifier or an MCP server elided), so they are
read, not run; the runnable walkthrough is `examples/quickstart` (tests/test_quickstart.py).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mcp_guard

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
INSTANCES = {"guard": mcp_guard.Guard}
"""Variables the snippets name by convention, and the class of what they hold."""


def snippets() -> Iterator[Any]:
    for document in DOCUMENTS:
        text = document.read_text()
        for found in BLOCK.finditer(text):
            line = text.count("\n", 0, found.start()) + 1
            code = textwrap.dedent(found.group(2))
            yield pytest.param(document, code, id=f"{document.relative_to(ROOT)}:{line}")


def imported(tree: ast.AST) -> dict[str, Any]:
    """What the snippet's ``from ... import`` statements bind, imported for real."""
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def document_names(document: Path) -> dict[str, Any]:
    """The package's exports and everything any snippet of ``document`` imports: a later
    fragment of a page uses what an earlier one imported."""
    names: dict[str, Any] = dict(vars(mcp_guard))
    for found in BLOCK.finditer(document.read_text()):
        names.update(imported(ast.parse(textwrap.dedent(found.group(2)))))
    return {**names, **INSTANCES}


def resolved(node: ast.expr, names: dict[str, Any]) -> Any:
    """The object a name or a dotted attribute of one stands for, or None when it is not ours."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = resolved(node.value, names)
        if owner is not None and getattr(owner, "__module__", "").startswith("mcp_guard"):
            assert hasattr(owner, node.attr), f"{ast.unparse(node)}: {owner.__name__} has no '{node.attr}'"
            return getattr(owner, node.attr)
    return None


def keywords_taken(function: Callable[..., Any]) -> set[str] | None:
    """The keyword names ``function`` accepts, or None when it takes any (``**kwargs``)."""
    parameters = inspect.signature(function).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return {parameter.name for parameter in parameters if parameter.kind is not inspect.Parameter.POSITIONAL_ONLY}


@pytest.mark.parametrize(("document", "code"), list(snippets()))
def test_a_documented_snippet_names_what_exists(document: Path, code: str) -> None:
    tree = ast.parse(code)
    names = {**document_names(document), **imported(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            resolved(node, names)
        if not isinstance(node, ast.Call):
            continue
        called = resolved(node.func, names)
        if called is None or not callable(called) or not getattr(called, "__module__", "").startswith("mcp_guard"):
            continue
        taken = keywords_taken(called)
        for keyword in node.keywords:
            if keyword.arg is not None and taken is not None:
                assert keyword.arg in taken, f"{ast.unparse(node.func)}() takes no '{keyword.arg}'"


def test_every_document_has_its_snippets_read() -> None:
    counted = {document.name: len(BLOCK.findall(document.read_text())) for document in DOCUMENTS}
    assert counted["README.md"] >= 2 and counted["quickstart.md"] >= 8 and counted["policy.md"] >= 3


def test_every_reason_code_a_refusal_can_carry_is_in_the_reference() -> None:
    from mcp_guard.reasons import ReasonCode

    reference = (ROOT / "docs" / "index.md").read_text()
    assert [code.value for code in ReasonCode if f"`{code.value}`" not in reference] == ["allowed"]
