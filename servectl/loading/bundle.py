"""A config directory frozen as bytes: what a saved plan, a history entry and the cluster's code upload carry.

A saved plan applies the code it was planned with, and a rollback deploys the
code it rolls back to, even after the files on disk changed or are gone. The
bundle holds the config dir's files in a zip with fixed timestamps, so the
same files give the same bytes and the same digest; the code Ray and AWS
receive is this same set of files, never a second listing.

What stays out: servectl's own files (state, history, the runtime dir, saved
plans — found by their content, whatever their name — and the S3 state
pointer), caches, ``.git``, and whatever ``.servectlignore`` names in
gitignore syntax (as ``.gitignore``, read with the ``pathspec`` library):
keys, credentials and data a backend does not need belong there.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from typing import Iterator

from servectl.errors import ConfigError

IGNORE_FILE = ".servectlignore"
# Never frozen nor uploaded, whatever the ignore file says (a "!" cannot bring them back): state, history and saved
# plans may hold secrets (and a plan file inside the config would nest in the next one); runtime files and caches
# change nothing.
ALWAYS_EXCLUDED = (
    "servectl.state.json*", "servectl.backend.json", ".servectl.state.*", ".servectl/", "__pycache__/", "*.pyc",
    ".git/", "*.plan", "plan.bin", ".servectl-plan.*",
)
# Content that marks servectl's own files wherever they are and whatever they are called: a saved plan, a state or
# history entry (or a copy of one), anything holding a value marked sensitive.
SAVED_PLAN_MARK = b'"servectl-plan"'
STATE_MARKS = (b'"lineage"', b'"format_version"')
SENSITIVE_MARK = b'"__servectl_sensitive__"'
HEAD_BYTES = 4096  # where a plan's or a state's own keys are (json.dump writes them first)
SCANNED_BYTES = 16 * 1024 * 1024  # files up to this size are searched whole for a sensitive mark
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class BundleError(ValueError):
    """The config dir cannot be frozen: too large, or an unreadable ignore file."""


@dataclass
class Listing:
    """Which files of a config dir the bundle holds, and which it leaves out and why (relative paths, sorted)."""

    included: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # named by a .servectlignore
    saved_plans: list[str] = field(default_factory=list)  # plan files, found by content
    servectl_files: list[str] = field(default_factory=list)  # states, history entries, copies: found by content

    def summary(self) -> dict[str, object]:
        """Plain data for the plan: how many files ship, and what the user's files left out are."""
        return {"files": len(self.included), "ignored": list(self.ignored), "saved_plans": list(self.saved_plans),
                "servectl_files": list(self.servectl_files)}


def _spec(patterns: list[str]):  # -> pathspec.GitIgnoreSpec
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _kind_of(path: str) -> str:
    """"plan", "servectl" (a state, a history entry, anything holding a sensitive mark) or "" for a user's file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            if head.lstrip()[:1] == b"{" and SAVED_PLAN_MARK in head and b'"format"' in head:
                return "plan"
            if head.lstrip()[:1] == b"{" and all(mark in head for mark in STATE_MARKS):
                return "servectl"
            if size <= SCANNED_BYTES and SENSITIVE_MARK in head + handle.read():
                return "servectl"
    except OSError:
        return ""
    return ""


def _read_patterns(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None


def _spec_of(patterns: list[str], where: str):  # -> pathspec.GitIgnoreSpec
    try:
        return _spec(patterns)
    except Exception as err:  # noqa: BLE001 - pathspec raises several kinds for a bad pattern
        raise BundleError(f"{where}: a pattern is not gitignore syntax: {err}") from None


def listing(config_dir: str) -> Listing:
    """Walk ``config_dir`` and sort its files into shipped and left out. Raises BundleError on a bad ignore file.

    Every ``.servectlignore`` applies below its own directory, as ``.gitignore`` files do.
    """
    always = _spec(list(ALWAYS_EXCLUDED))
    result = Listing()
    for relative, path in _walk(config_dir, always, result):
        kind = _kind_of(path)
        if kind == "plan":
            result.saved_plans.append(relative)
        elif kind == "servectl":
            result.servectl_files.append(relative)
        else:
            result.included.append(relative)
    for found in (result.included, result.ignored, result.saved_plans, result.servectl_files):
        found.sort()
    return result


def _ignored(relative: str, specs: list[tuple[str, object]]) -> bool:
    """Whether the nearest ignore files say ``relative`` is ignored (the deepest one that has a say wins)."""
    verdict = False
    for base, spec in specs:
        if relative.startswith(base):
            result = spec.check_file(relative[len(base):])  # type: ignore[attr-defined]
            if result.include is not None:
                verdict = bool(result.include)
    return verdict


def _walk(config_dir: str, always, result: Listing) -> Iterator[tuple[str, str]]:
    specs: list[tuple[str, object]] = []
    for root, dirs, files in os.walk(config_dir):
        base = os.path.relpath(root, config_dir)
        prefix = "" if base == "." else base.replace(os.sep, "/") + "/"
        if IGNORE_FILE in files:
            path = os.path.join(root, IGNORE_FILE)
            specs.append((prefix, _spec_of(_read_patterns(path), os.path.relpath(path, config_dir))))
        kept_dirs = []
        for name in sorted(dirs):
            relative = f"{prefix}{name}/"
            if always.match_file(relative) or os.path.islink(os.path.join(root, name)):
                continue
            if _ignored(relative, specs):
                result.ignored.append(relative)
                continue
            kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(files):
            relative = f"{prefix}{name}"
            path = os.path.join(root, name)
            if always.match_file(relative) or not os.path.isfile(path) or os.path.islink(path):
                continue
            if _ignored(relative, specs):
                result.ignored.append(relative)
                continue
            yield relative, path


def freeze(config_dir: str) -> bytes:
    """The config dir's shipped files (``listing``) as a zip with fixed timestamps: same files, same bytes.

    Raises BundleError above MAX_BUNDLE_BYTES (64 MiB) or on a bad ignore file.
    """
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative in listing(config_dir).included:
            path = os.path.join(config_dir, *relative.split("/"))
            total += os.path.getsize(path)
            if total > MAX_BUNDLE_BYTES:
                raise BundleError(
                    f"the config dir holds over {MAX_BUNDLE_BYTES // 2**20} MiB of files; keep models out of it "
                    f"(or list them in {IGNORE_FILE})"
                )
            info = zipfile.ZipInfo(relative, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            with open(path, "rb") as handle:
                archive.writestr(info, handle.read(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def digest(frozen: bytes) -> str:
    """The SHA-256 of a frozen bundle, as 64 hex characters (the same files freeze to the same digest)."""
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


def shipped_digest(config_dir: str) -> str:
    """sha256 of the config dir's files as servectl ships them (``freeze``). Raises ConfigError when they cannot
    be read."""
    try:
        return hashlib.sha256(freeze(config_dir)).hexdigest()
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the config dir's files to ship them: {err}") from None
