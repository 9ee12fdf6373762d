"""Code identity: which code a backend runs, hashed so that a code edit shows in the plan as a replace.

The hash covers the module that defines a backend's code and every module of
the config dir it imports, transitively; code importable only on the workers
is identified by its import path and declared ``code_version``.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import os
from typing import Any, Optional

from servectl.config.resources import Backend
from servectl.errors import ConfigError
from servectl.runtime.multiplexing import loader_of

# The module name main.py runs under while loading; workers import the same file as `main`.
CONFIG_MODULE_RUN_NAME = "__servectl_config__"


def code_identity(backend: Backend, config_dir: str) -> dict[str, Any]:
    """Import path and content hash of a backend's code, so a code edit shows as a replace.

    The hash covers the module that defines the code and every module of the
    config dir it imports, transitively (for a callable defined in main.py: its
    own source and the local modules main.py imports). Editing a helper thus
    restarts exactly the backends that use it. Code importable only on the
    workers is identified by its path alone.
    """
    code = backend.code
    if isinstance(code, str):
        module_name, _, _ = code.partition(":")
        source_file = _local_module_file(module_name, config_dir)
        if source_file is not None:
            _check_defines(backend, source_file, config_dir, code.partition(":")[2])
            digest = _digest_files(_local_closure(source_file, config_dir), config_dir)
            return {"import_path": code, "sha256": digest, "origin": os.path.relpath(source_file, config_dir)}
        origin = _installed_origin(module_name)
        if origin is not None:
            with open(origin, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            return {"import_path": code, "sha256": digest, "origin": "installed"}
        # Not importable here: the workers' copy is what runs, identified by its
        # path and the version the config declares for it.
        version = backend.code_version or ""
        digest = hashlib.sha256(f"worker-only:{code}:{version}".encode()).hexdigest()
        identity = {"import_path": code, "sha256": digest, "origin": "workers"}
        if backend.code_version is not None:
            identity["version"] = backend.code_version
        return identity
    qualname = getattr(code, "__qualname__", "")
    module = getattr(code, "__module__", "")
    if module == CONFIG_MODULE_RUN_NAME:  # defined in main.py itself: workers import it as `main`
        module = "main"
    if "<locals>" in qualname or "<lambda>" in qualname or not module:
        raise ConfigError(
            f"{backend.declared_at}: backend {backend.name!r}: code must be a module-level class or function "
            "(workers import it by name)"
        )
    if backend.max_models_per_replica is not None and (not isinstance(code, type) or loader_of(code) is None):
        raise ConfigError(
            f"{backend.declared_at}: backend {backend.name!r}: max_models_per_replica={backend.max_models_per_replica} "
            f"but {qualname} has no @serve.multiplexed loader method: add one (async def load(self, model_id)) or "
            "drop max_models_per_replica"
        )
    try:
        source = inspect.getsource(code)
    except (OSError, TypeError):
        raise ConfigError(f"{backend.declared_at}: backend {backend.name!r}: cannot read the source of {qualname}") from None
    defining_file = inspect.getsourcefile(code) or ""
    helpers = [f for f in _local_closure(defining_file, config_dir) if f != defining_file] if defining_file else []
    digest = hashlib.sha256(source.encode() + _digest_files(helpers, config_dir).encode()).hexdigest()
    return {"import_path": f"{module}:{qualname}", "sha256": digest, "origin": "config"}


def _digest_files(paths: list[str], config_dir: str) -> str:
    total = hashlib.sha256()
    for path in sorted(paths):
        total.update(os.path.relpath(path, config_dir).encode() + b"\0" + _file_digest(path).encode())
    return total.hexdigest()


@functools.lru_cache(maxsize=4096)
def _file_digest_cached(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _file_digest(path: str) -> str:
    stat = os.stat(path)
    return _file_digest_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _imports_of(path: str, mtime_ns: int) -> tuple[tuple[str, int], ...]:
    """(module, relative level) pairs a Python file imports, read from its syntax tree."""
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read(), filename=path)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.append((base, node.level))
            found += [(f"{base}.{alias.name}" if base else alias.name, node.level) for alias in node.names]
    return tuple(found)


def _local_closure(path: str, config_dir: str) -> list[str]:
    """``path`` and every config-dir module it imports, transitively."""
    seen: set[str] = set()
    stack = [path]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            imports = _imports_of(current, os.stat(current).st_mtime_ns)
        except (OSError, SyntaxError, ValueError):
            continue  # a syntax error surfaces on the workers' import with its own message
        package_dir = os.path.dirname(current)
        for name, level in imports:
            if level:
                base = package_dir
                for _ in range(level - 1):
                    base = os.path.dirname(base)
                candidate = _local_module_file(name, base) if name else os.path.join(base, "__init__.py")
            else:
                candidate = _local_module_file(name, config_dir)
            if candidate and os.path.isfile(candidate) and candidate.startswith(config_dir + os.sep):
                stack.append(candidate)
    return sorted(seen)


def _check_defines(backend: Backend, source_file: str, config_dir: str, attribute: str) -> None:
    """Refuse at plan time what the workers would fail to import: a syntax error, or a name the module lacks.

    Read, not imported: the CLI must not run model code (nor need its packages).
    """
    import ast

    relative = os.path.relpath(source_file, config_dir)
    with open(source_file, "rb") as handle:
        source = handle.read()
    try:
        tree = ast.parse(source, filename=relative)
    except SyntaxError as err:
        raise ConfigError(
            f"{relative}:{err.lineno}: syntax error in the code of backend {backend.name!r}: {err.msg} "
            f"(declared at {backend.declared_at})"
        ) from None
    top = attribute.split(".")[0]
    if not top:
        return
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == top and "." not in attribute:
            _check_servable(backend, node, relative)
            _check_multiplexed(backend, node, relative)
        elif (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == top
            and backend.max_models_per_replica is not None
        ):
            raise ConfigError(
                f"{backend.declared_at}: backend {backend.name!r}: max_models_per_replica needs a class with a "
                f"@serve.multiplexed loader method; {node.name} ({relative}:{node.lineno}) is a function"
            )
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return  # a star import may define it: the workers will tell
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif not isinstance(node, (ast.Expr, ast.Pass)):
            return  # if/try/with/for at top level may define it: leave it to the workers
    if top not in names:
        defined = ", ".join(sorted(n for n in names if not n.startswith("_"))) or "nothing"
        raise ConfigError(
            f"{backend.declared_at}: backend {backend.name!r}: {relative} defines no {top!r} "
            f"(it defines: {defined}); fix the code path {backend.code!r}"
        )


def _installed_origin(module_name: str) -> Optional[str]:
    if not _safe_find(module_name):
        return None
    spec = importlib.util.find_spec(module_name.split(".")[0])
    origin = getattr(spec, "origin", None)
    return origin if origin and os.path.isfile(origin) else None


def _safe_find(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _local_module_file(module_name: str, config_dir: str) -> Optional[str]:
    parts = module_name.split(".")
    base = os.path.join(config_dir, *parts)
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _check_servable(backend: Backend, node: ast.ClassDef, relative: str) -> None:
    """Refuse a class Serve could not call: no ``__call__``, no ``@serve.ingress(app)`` (nor any decorator that may
    make it one) and no base class that may bring either."""
    defines_call = any(
        isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "__call__" for item in node.body
    )
    if defines_call or node.decorator_list or node.bases:
        return
    raise ConfigError(
        f"{backend.declared_at}: backend {backend.name!r}: class {node.name} ({relative}:{node.lineno}) has no "
        "__call__(self, request) method and is not under @serve.ingress(app): give it one of the two"
    )



def _is_multiplexed_decorator(decorator: Any) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name == "multiplexed"


def _check_multiplexed(backend: Backend, node: Any, relative: str) -> None:
    """Refuse ``max_models_per_replica`` on a class with no ``@serve.multiplexed`` method (nor a base that may
    bring one): there would be no loader for the limit to bound."""
    if backend.max_models_per_replica is None or node.bases:
        return
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
            _is_multiplexed_decorator(d) for d in item.decorator_list
        ):
            return
    raise ConfigError(
        f"{backend.declared_at}: backend {backend.name!r}: max_models_per_replica={backend.max_models_per_replica} "
        f"but class {node.name} ({relative}:{node.lineno}) has no @serve.multiplexed loader method: add one "
        "(async def load(self, model_id)) or drop max_models_per_replica"
    )
