"""A config directory frozen as bytes: what a saved plan and a history entry carry.

A saved plan applies the code it was planned with, and a rollback deploys the
code it rolls back to, even after the files on disk changed or are gone. The
bundle holds the config dir's files (not the state, not servectl's runtime
files, not caches) in a zip with fixed timestamps, so the same files give the
same bytes and the same digest.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import zipfile
from typing import Iterator

# Never frozen nor uploaded: state, history and saved plans may hold secrets (and a
# plan file inside the config would nest in the next one); runtime files and caches
# change nothing.
EXCLUDED = ("servectl.state.json*", "servectl.backend.json", ".servectl.state.*", ".servectl", "__pycache__", "*.pyc", ".git", "*.plan", "plan.bin")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDED)


def _files(config_dir: str) -> Iterator[tuple[str, str]]:
    for root, dirs, files in os.walk(config_dir):
        dirs[:] = sorted(d for d in dirs if not _excluded(d))
        for name in sorted(files):
            if _excluded(name):
                continue
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield os.path.relpath(path, config_dir), path


def freeze(config_dir: str) -> bytes:
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, path in _files(config_dir):
            total += os.path.getsize(path)
            if total > MAX_BUNDLE_BYTES:
                raise ValueError(f"the config dir holds over {MAX_BUNDLE_BYTES // 2**20} MiB of files; keep models out of it")
            info = zipfile.ZipInfo(relative.replace(os.sep, "/"), date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            with open(path, "rb") as handle:
                archive.writestr(info, handle.read(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def digest(frozen: bytes) -> str:
    return hashlib.sha256(frozen).hexdigest()


def thaw(frozen: bytes, destination: str) -> str:
    """Write the bundle's files under ``destination`` (which must be empty or new); returns it."""
    os.makedirs(destination, mode=0o700, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(frozen)) as archive:
        for info in archive.infolist():
            target = os.path.realpath(os.path.join(destination, info.filename))
            if not target.startswith(os.path.realpath(destination) + os.sep):
                raise ValueError(f"bundle entry {info.filename!r} points outside its directory")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(archive.read(info))
    return destination


def freeze_servectl() -> bytes:
    """servectl's own modules as an importable zip (``servectl/...`` at its top) for nodes that do not have it.

    Read from where the packages were imported, so an editable checkout (whose
    ``providers/`` and ``state/`` install under ``servectl.``) and an installed
    wheel give the same layout; fixed timestamps keep the digest stable.
    """
    import servectl
    import servectl.providers
    import servectl.runtime
    import servectl.state

    roots = [("servectl", servectl), ("servectl/providers", servectl.providers), ("servectl/runtime", servectl.runtime),
             ("servectl/state", servectl.state)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for prefix, package in roots:
            directory = list(package.__path__)[0]
            for name in sorted(os.listdir(directory)):
                if not name.endswith(".py"):
                    continue
                info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=_FIXED_TIME)
                info.external_attr = 0o644 << 16
                with open(os.path.join(directory, name), "rb") as handle:
                    archive.writestr(info, handle.read(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
