"""What a node's Python environment can give a backend, asked before anything is deployed.

Runs on the cluster (as a zero-CPU Ray task) or, for an embedded cluster
that is not started yet, in the CLI itself: that cluster will run this
machine's Python.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from typing import Optional


def conda_envs() -> Optional[set[str]]:
    """Names and paths of the conda envs on this node; None when conda is not installed."""
    conda = os.environ.get("CONDA_EXE") or shutil.which("conda")
    if not conda:
        return None
    try:
        out = subprocess.run([conda, "env", "list", "--json"], capture_output=True, text=True, timeout=60, check=True)
        paths = json.loads(out.stdout).get("envs", [])
    except (OSError, subprocess.SubprocessError, ValueError):
        return set()
    return {os.path.basename(p) for p in paths} | set(paths) | {"base"}


def module_missing(module: str) -> Optional[str]:
    """Why ``module`` cannot be imported here, or None when it can."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None if found is not None else f"No module named {module!r}"


def environment_problems(checks: dict[str, dict[str, Optional[str]]]) -> dict[str, str]:
    """``checks``: backend -> {"conda": env name or None, "module": worker-only module or None}."""
    problems: dict[str, str] = {}
    envs: Optional[set[str]] = None
    envs_read = False
    for backend, check in checks.items():
        env = check.get("conda")
        if env:
            if not envs_read:
                envs, envs_read = conda_envs(), True
            if envs is None:
                problems[backend] = (
                    f"conda env {env!r} cannot be used: conda is not installed on the cluster's nodes "
                    "(install it there, or use pip=[...] instead)"
                )
                continue
            if env not in envs:
                problems[backend] = f"conda env {env!r} does not exist on the cluster's nodes (known: {', '.join(sorted(e for e in envs if '/' not in e))})"
                continue
        module = check.get("module")
        if module:
            why = module_missing(module)
            if why:
                problems[backend] = (
                    f"{module!r} cannot be imported on the workers ({why}); install it on the cluster's nodes "
                    "or list it in pip=[...]"
                )
    return problems
