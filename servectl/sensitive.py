"""Sensitive values: `sensitive("…")` in a config keeps a value out of everything servectl prints.

In the desired state and the state file a sensitive value is held as
``{"__servectl_sensitive__": value}``: diffs and hashes still see it change,
the state (0600) keeps it to apply it, the provider seals it (see
``servectl.runtime.sealed``) in what it sends to the cluster, and plan, show,
drift and their JSON print ``(sensitive)`` instead.

Two layers keep it out of what servectl prints, as Terraform's redaction and
GitHub Actions' log masking do together: every renderer redacts marked values
structurally, and every text the CLI writes passes through ``mask``, which
replaces any sensitive value servectl has seen in this process (from the
config, a state, a saved plan or a history entry) — so an error message from
Ray or a bug in a renderer cannot print one either.
"""
from __future__ import annotations

import io
import json
import threading
from typing import Any, Callable, TextIO

MARK = "__servectl_sensitive__"
REDACTED = "(sensitive)"


class Sensitive:
    """A config value never to be printed. ``repr`` hides it too, so errors cannot leak it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value
        remember(value)

    def __repr__(self) -> str:
        return "sensitive(…)"


def sensitive(value: Any) -> Sensitive:
    """Mark ``value`` (a string, number or JSON value) as sensitive."""
    return value if isinstance(value, Sensitive) else Sensitive(value)


def is_marked(value: Any) -> bool:
    """Whether ``value`` is one sensitive value in marked form: the one-key dict ``{"__servectl_sensitive__": v}``."""
    return isinstance(value, dict) and len(value) == 1 and MARK in value


def to_plain(value: Any) -> Any:
    """Config value → attribute value: Sensitive becomes its marked form, recursively."""
    if isinstance(value, Sensitive):
        return {MARK: to_plain(value.value)}
    if isinstance(value, dict):
        return {key: to_plain(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(inner) for inner in value]
    return value


def _replace_marked(value: Any, replace: Callable[[Any], Any]) -> Any:
    if is_marked(value):
        return replace(value)
    if isinstance(value, dict):
        return {key: _replace_marked(inner, replace) for key, inner in value.items()}
    if isinstance(value, list):
        return [_replace_marked(inner, replace) for inner in value]
    return value


def reveal(value: Any) -> Any:
    """The real values, for what is sent to the cluster only."""
    return _replace_marked(value, lambda marked: reveal(marked[MARK]))


def redact(value: Any) -> Any:
    """What may be printed: every sensitive value replaced by ``(sensitive)``."""
    return _replace_marked(value, lambda marked: REDACTED)


def holds_sensitive(value: Any) -> bool:
    """Whether ``value`` is, or holds anywhere in its dicts and lists, a marked sensitive value."""
    if is_marked(value):
        return True
    if isinstance(value, dict):
        return any(holds_sensitive(inner) for inner in value.values())
    if isinstance(value, list):
        return any(holds_sensitive(inner) for inner in value)
    return False


# Values shorter than this are redacted structurally only: masking "1" or "true"
# in every line would garble the output and hide nothing worth hiding.
MIN_MASKED_LENGTH = 6
_known: set[str] = set()
_known_lock = threading.Lock()
_pattern_cache: list[str] = []


def _texts(value: Any) -> list[str]:
    """Every form in which ``value`` could appear in a line of text: as written, JSON-escaped, repr-escaped."""
    if isinstance(value, Sensitive):
        return _texts(value.value)
    if is_marked(value):
        return _texts(value[MARK])
    if isinstance(value, dict):  # a sensitive dict's keys are part of it too
        return [text for key, inner in value.items() for text in _texts(key) + _texts(inner)]
    if isinstance(value, (list, tuple)):
        return [text for inner in value for text in _texts(inner)]
    if value is None or isinstance(value, bool):
        return []
    text = str(value)
    return [text, json.dumps(text)[1:-1], repr(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]]


def remember(value: Any) -> None:
    """Mask ``value`` (every leaf of it) in everything this process prints from now on."""
    texts = {text for text in _texts(value) if len(text) >= MIN_MASKED_LENGTH}
    if not texts - _known:
        return
    with _known_lock:
        _known.update(texts)
        _pattern_cache[:] = sorted(_known, key=len, reverse=True)  # longest first: no partial leftovers


def learn(body: Any) -> None:
    """Remember every marked value inside a JSON body read from disk (a state, a saved plan, a history entry)."""
    if is_marked(body):
        remember(body[MARK])
    elif isinstance(body, dict):
        for inner in body.values():
            learn(inner)
    elif isinstance(body, list):
        for inner in body:
            learn(inner)


def mask(text: str) -> str:
    """``text`` with every remembered sensitive value replaced by ``(sensitive)``.

    Every occurrence of every value is found in the original text first and
    the union of those spans replaced at once, so two values that overlap
    ("abcdefgh", "ghijklmn" in "abcdefghijklmn") leave nothing of either.
    """
    if not _pattern_cache or not text:
        return text
    spans: list[tuple[int, int]] = []
    for secret in list(_pattern_cache):
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    spans.sort()
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts, cursor = [], 0
    for start, end in merged:
        parts += [text[cursor:start], REDACTED]
        cursor = end
    parts.append(text[cursor:])
    return "".join(parts)


class MaskedStream(io.TextIOBase):
    """A text stream that masks sensitive values in everything written to it (the CLI's stdout and stderr)."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        """Write ``text`` to the inner stream with every remembered sensitive value masked; returns ``len(text)``."""
        self.inner.write(mask(text))
        return len(text)

    def flush(self) -> None:
        """Flush the inner stream."""
        self.inner.flush()

    def isatty(self) -> bool:
        """Whether the inner stream is a terminal."""
        return self.inner.isatty()

    def fileno(self) -> int:
        """The inner stream's file descriptor (raises as the inner stream does when it has none)."""
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The inner stream's encoding, or ``"utf-8"`` when it names none."""
        return getattr(self.inner, "encoding", "utf-8")
