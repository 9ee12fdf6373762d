"""Composition as the code spells it: which endpoints a backend calls through ``get_handle``, and cycles among them.

A backend composes others by calling ``servectl.get_handle("endpoint")`` in
its code, so the call graph is not declared in the config. It is read from
the source (never run): every ``get_handle("literal")`` inside the class or
function the backend serves. A cycle (backend a calls endpoint b, whose
backend calls endpoint a) would have each request call itself until it times
out, so it is refused at plan time. A handle whose endpoint name is computed
at run time cannot be seen here.
"""
from __future__ import annotations

import ast
import inspect
import os
import textwrap
from typing import Any, Optional

from servectl.config import Backend
from servectl.errors import ConfigError


def _handle_targets(tree: ast.AST, where: str, first_line: int) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        target = node.args[0]
        if name == "get_handle" and isinstance(target, ast.Constant) and isinstance(target.value, str):
            found.append((target.value, f"{where}:{first_line + node.lineno - 1}"))
    return found


def _served_definition(tree: ast.Module, attribute: str) -> Optional[ast.AST]:
    top = attribute.split(".")[0]
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == top:
            return node
    return None


def handle_calls(backend: Backend, code_attributes: dict[str, Any], config_dir: str) -> list[tuple[str, str]]:
    """(endpoint name, file:line) for each ``get_handle("…")`` in the code this backend serves."""
    code = backend.code
    if isinstance(code, str):
        origin = code_attributes.get("origin")
        if origin in (None, "installed", "workers", "config"):
            return []  # not in the config dir: nothing of ours to read
        path = os.path.join(config_dir, origin)
        try:
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), filename=origin)
        except (OSError, SyntaxError, ValueError):
            return []  # the code checks that run before this one name such problems
        served = _served_definition(tree, code.partition(":")[2])
        return _handle_targets(served, origin, 1) if served is not None else []
    try:
        lines, first = inspect.getsourcelines(code)
        where = os.path.relpath(inspect.getsourcefile(code) or "", config_dir)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return []
    return _handle_targets(tree, where, first)


def check_cycles(calls: dict[str, list[tuple[str, str]]], routes: dict[str, list[str]], declared_at: dict[str, str]) -> None:
    """Refuse a cycle in backend → endpoint (by handle) → backend (by traffic or shadow).

    ``calls``: backend → [(endpoint, file:line)]; ``routes``: endpoint → its backends.
    """
    state: dict[str, str] = {}  # backend → "open" while on the path, "done" after

    def visit(backend: str, path: list[str]) -> None:
        state[backend] = "open"
        for endpoint, site in calls.get(backend, []):
            for target in routes.get(endpoint, []):
                step = f"backend {backend!r} calls endpoint {endpoint!r} ({site}), which routes to backend {target!r}"
                if state.get(target) == "open":
                    cycle = path[path.index(target):] if target in path else []
                    chain = "; ".join([*cycle_steps(cycle, calls, routes), step]) if cycle else step
                    raise ConfigError(
                        f"{declared_at.get(target, '<config>')}: cyclic composition: {chain}; a request would call "
                        "itself until it times out: break the cycle"
                    )
                if target not in state:
                    visit(target, [*path, target])
        state[backend] = "done"

    for backend in sorted(calls):
        if backend not in state:
            visit(backend, [backend])


def cycle_steps(cycle: list[str], calls: dict[str, list[tuple[str, str]]], routes: dict[str, list[str]]) -> list[str]:
    """The steps between consecutive backends of ``cycle`` (all but the closing one)."""
    steps = []
    for here, there in zip(cycle, cycle[1:]):
        for endpoint, site in calls.get(here, []):
            if there in routes.get(endpoint, []):
                steps.append(f"backend {here!r} calls endpoint {endpoint!r} ({site}), which routes to backend {there!r}")
                break
    return steps
