"""The layout's rules, checked on the source: every import points down a layer, no cycles, no private imports.

Layers, lowest first (docs/architecture.md). A module may import its own layer
and those below; the module graph has no cycle. Imports inside functions and
under TYPE_CHECKING count for the layers (a lazy import upward is still an
arrow pointing up); for cycles only what runs counts, so two modules of one
layer may name each other's types in annotations.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where each installed package lives in the checkout.
ROOTS = {"servectl": REPO / "servectl", "servectl.providers": REPO / "providers", "servectl.state": REPO / "state"}
LAYERS = [
    ("foundation", ["servectl.errors", "servectl.names", "servectl.statuses", "servectl.sensitive", "servectl.version"]),
    ("routing", ["servectl.routing"]),
    ("runtime", ["servectl.runtime"]),
    ("config", ["servectl.config"]),
    ("model", ["servectl.model", "servectl.state.document"]),
    ("loading", ["servectl.loading"]),
    ("planning", ["servectl.planning"]),
    ("state", ["servectl.state"]),
    ("providers", ["servectl.providers"]),
    ("engine", ["servectl.engine"]),
    ("render", ["servectl.render"]),
    ("entry points", ["servectl.cli", "servectl.node_agent", "servectl"]),
]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, directory in ROOTS.items():
        for path in directory.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "servectl" and parts and parts[0] in ("providers", "state"):
                continue  # not in a checkout; a wheel's copy would be the same files
            found[name] = path
    return found


def _layer(module: str) -> int:
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)"
    return best


def _type_only_lines(tree: ast.Module) -> set[int]:
    """Lines of the imports under ``if TYPE_CHECKING:`` (annotations only: nothing runs them)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {inner.lineno for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))}
    return lines


def _imports(module: str, path: Path, modules: dict[str, Path], runtime_only: bool = False) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every servectl import in ``path`` (``runtime_only``: not
    those under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = _type_only_lines(tree) if runtime_only else set()
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped and isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.split(".")[0] == "servectl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "servectl":
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
            if submodules:  # `from servectl.loading import bundle`: the module is what is imported
                found += [(sub, [], node.lineno) for sub in submodules]
                names = [name for name in names if f"{target}.{name}" not in modules]
                if not names:
                    continue
            found.append((target, names, node.lineno))
    return found


def _graph(runtime_only: bool = False) -> dict[str, list[tuple[str, list[str], int]]]:
    modules = _modules()
    return {module: _imports(module, path, modules, runtime_only) for module, path in sorted(modules.items())}


def test_every_import_points_down_a_layer():
    upward = []
    for module, imports in _graph().items():
        for target, _, line in imports:
            if target == "servectl" and module != "servectl":
                upward.append(f"{module}:{line} imports the servectl facade (import the module that defines it)")
            elif _layer(target) > _layer(module):
                upward.append(f"{module}:{line} ({LAYERS[_layer(module)][0]}) imports {target} "
                              f"({LAYERS[_layer(target)][0]})")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{module}:{line} takes {name} from {target}"
        for module, imports in _graph().items()
        for target, names, line in imports
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert not private, "\n".join(private)


def test_the_module_graph_has_no_cycle():
    modules = _modules()
    graph = {
        module: sorted({t for t, _, _ in imports if t in modules and t != module})
        for module, imports in _graph(runtime_only=True).items()
    }
    # A package's __init__ importing its own submodules is how packages re-export; a submodule importing its
    # package's __init__ back is then a cycle in name only. Count edges between modules proper.
    def is_parent(parent: str, child: str) -> bool:
        return child.startswith(parent + ".")

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in graph.get(node, []):
            if is_parent(node, target) or is_parent(target, node):
                continue
            if state.get(target) == 1:
                cycles.append(" → ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_subpackage_says_what_it_holds():
    for module, path in _modules().items():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            assert doc and len(doc) > 80, f"{module}: its __init__ needs a paragraph saying what the package holds"
