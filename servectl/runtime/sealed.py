"""Sealed values: how a sensitive value travels to the replicas without landing in Ray's logs or Serve's config.

Ray Serve logs an application's builder arguments at INFO ("Building
application with args …"), its runtime-env agent logs every ``runtime_env``
(env_vars included), and the dashboard returns each deployed config to anyone
holding the token. So servectl never sends a sensitive value in clear: the
provider replaces each one by ``{"__servectl_sealed__": "<base64>"}``,
encrypted with AES-SIV under a key derived (HKDF-SHA256) from the cluster's
Ray auth token, and the replica opens it where the backend needs it (its
constructor arguments, ``reconfigure``, its environment).

AES-SIV is deterministic on purpose: the same value under the same key seals
to the same bytes, so an apply that re-sends an unchanged backend sends
byte-identical arguments and Serve restarts nothing (Serve derives a
deployment's version from them). It reveals only whether two sealed values
are equal, to someone who can read Serve's config already.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Any, Optional

from servectl.sensitive import is_marked, reveal

SEAL_MARK = "__servectl_sealed__"
KEY_INFO = b"servectl sealed values v1"
ASSOCIATED_DATA = [b"servectl"]


class SealError(Exception):
    """A sealed value that cannot be opened: the cluster's token is not the one it was sealed under, or it was edited."""


def key_from_token(token: str) -> bytes:
    """The 64-byte AES-256-SIV key for a cluster whose Ray auth token is ``token`` (HKDF-SHA256, no salt)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if not token:
        raise SealError("no Ray auth token to derive the sealing key from")
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=KEY_INFO).derive(token.encode())


def is_sealed(value: Any) -> bool:
    """Whether ``value`` is one sealed value, ``{"__servectl_sealed__": "<base64>"}`` (a one-key dict)."""
    return isinstance(value, dict) and len(value) == 1 and SEAL_MARK in value


def seal(value: Any, key: bytes) -> Any:
    """``value`` with every sensitive-marked part (``{"__servectl_sensitive__": v}``) replaced by its sealed form."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    if is_marked(value):
        plain = json.dumps(reveal(value), sort_keys=True, separators=(",", ":")).encode()
        return {SEAL_MARK: base64.b64encode(AESSIV(key).encrypt(plain, ASSOCIATED_DATA)).decode("ascii")}
    if isinstance(value, dict):
        return {k: seal(inner, key) for k, inner in value.items()}
    if isinstance(value, list):
        return [seal(inner, key) for inner in value]
    return value


def holds_sealed(value: Any) -> bool:
    """Whether ``value`` is, or holds anywhere in its dicts and lists, a sealed value."""
    if is_sealed(value):
        return True
    if isinstance(value, dict):
        return any(holds_sealed(inner) for inner in value.values())
    if isinstance(value, list):
        return any(holds_sealed(inner) for inner in value)
    return False


def unseal(value: Any, key: Optional[bytes] = None) -> Any:
    """``value`` with every sealed part opened; ``key`` defaults to this Ray worker's (``worker_key``).

    Raises SealError when a sealed part does not open under the key.
    """
    if not holds_sealed(value):
        return value
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    cipher = AESSIV(key if key is not None else worker_key())

    def walk(inner: Any) -> Any:
        if is_sealed(inner):
            payload = inner[SEAL_MARK]
            try:
                if not isinstance(payload, str):
                    raise ValueError(f"a sealed value is a base64 string, not {type(payload).__name__}")
                return json.loads(cipher.decrypt(base64.b64decode(payload, validate=True), ASSOCIATED_DATA))
            except (InvalidTag, ValueError, TypeError) as err:
                raise SealError(
                    "a sensitive value does not open with this cluster's token (sealed for another cluster, or "
                    f"edited): {type(err).__name__}; apply again"
                ) from None
        if isinstance(inner, dict):
            return {k: walk(v) for k, v in inner.items()}
        if isinstance(inner, list):
            return [walk(v) for v in inner]
        return inner

    return walk(value)


def worker_token() -> str:
    """The Ray auth token of the cluster this process runs in, as Ray 2.60 gives it to its workers.

    ``RAY_AUTH_TOKEN`` wins, then the file ``RAY_AUTH_TOKEN_PATH`` names, then
    Ray's default ``~/.ray/auth_token`` — the order Ray itself reads them in.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        raise SealError(f"this worker has no Ray auth token ({path} is unreadable): sensitive values need token auth") from None


def worker_key() -> bytes:
    """The sealing key on a Ray worker (a replica, the application's build task)."""
    return key_from_token(worker_token())
