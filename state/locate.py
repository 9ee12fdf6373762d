"""Which store holds a config directory's state: the config's S3State, or the local file.

Applying with an S3 state records where it is in ``servectl.backend.json``
beside the config (as ``terraform init`` does in ``.terraform/``), so commands
that must work when the config no longer loads — rollback above all — still
find the state.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from servectl.model.desired import StateBackendSpec
from servectl.errors import StateError
from servectl.state.local import LocalStateStore, write_private
from servectl.state.store import StateStore

POINTER_FILE = "servectl.backend.json"


def store_for(spec: Optional[StateBackendSpec], config_dir: str) -> StateStore:
    """The store for ``config_dir``'s state: an S3StateStore for ``spec``, or the local ``servectl.state.json`` in
    ``config_dir`` when ``spec`` is None. Nothing is read, locked or connected yet.
    """
    if spec is None:
        return LocalStateStore.in_dir(config_dir)
    from servectl.state.s3 import S3StateStore

    return S3StateStore(spec)


def remember(spec: Optional[StateBackendSpec], config_dir: str) -> None:
    """Record where the state is (or that it is local), changing the file only when that moved."""
    path = os.path.join(config_dir, POINTER_FILE)
    if spec is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    text = json.dumps({"format_version": 1, "state_backend": dataclasses.asdict(spec)}, indent=2)
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    except FileNotFoundError:
        pass
    write_private(path, text)


def remembered(config_dir: str) -> Optional[StateBackendSpec]:
    """The state backend the last apply here used, or None when none was recorded."""
    path = os.path.join(config_dir, POINTER_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
        return StateBackendSpec(**body["state_backend"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise StateError(f"{path}: unreadable; delete it and run the command with a config that loads") from None
