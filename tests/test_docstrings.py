"""Every public class, function and method in servectl/, providers/ and state/ says what it is for.

A docstring says what it takes and returns (shapes, units), what it raises
and which Ray Serve or Terraform behaviour it mirrors; this test can only
count that one is there, so a missing one fails with its file:line.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("servectl", "providers", "state")


def public_definitions_without_docstrings() -> tuple[int, list[str]]:
    """(how many public definitions there are, ``file:line name`` of each without a docstring)."""
    total, missing = 0, []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            stack: list[tuple[ast.AST, str]] = [(tree, "")]
            while stack:
                node, prefix = stack.pop()
                for child in ast.iter_child_nodes(node):
                    if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        continue
                    if child.name.startswith("_"):
                        continue
                    total += 1
                    if not ast.get_docstring(child):
                        missing.append(f"{path.relative_to(REPO)}:{child.lineno} {prefix}{child.name}")
                    if isinstance(child, ast.ClassDef):
                        stack.append((child, f"{prefix}{child.name}."))
    return total, sorted(missing)


def test_every_public_definition_has_a_docstring():
    total, missing = public_definitions_without_docstrings()
    print(f"{total} public definitions, {len(missing)} without a docstring")
    assert total > 400  # the walk found the code
    assert not missing, "\n".join(missing)
