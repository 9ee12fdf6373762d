"""What a replica does before the user's code runs: open its sealed environment, import its code by path."""
from __future__ import annotations

import importlib
import os
from typing import Any, Optional

from servectl.runtime.sealed import unseal


def import_target(import_path: str) -> Any:
    """The object an import path names: ``"module:attr.attr"``, Serve's ``import_path`` form.

    Imports the module, then follows the dotted attributes. Raises ImportError when the module
    does not import and AttributeError when an attribute is missing (a path without ``:`` included).
    """
    module_name, _, attr = import_path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def open_environment(args: dict[str, Any]) -> dict[str, Optional[str]]:
    """Put the backend's sensitive environment variables (sealed in ``args``) into this process's environment.

    Called before the backend's code is imported, wherever that happens (the
    application's build task, each replica), so module-level reads see them.
    Returns what the variables were before, for ``restore_environment``.
    """
    opened = unseal(args.get("sensitive_env") or {})
    before = {name: os.environ.get(name) for name in opened}
    os.environ.update({name: str(value) for name, value in opened.items()})
    return before


def restore_environment(before: dict[str, Optional[str]]) -> None:
    """Undo ``open_environment`` (the build task's worker may serve another application next)."""
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
