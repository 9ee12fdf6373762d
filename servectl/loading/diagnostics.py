"""A config error's one line, read back as a diagnostic: the file and line, the resource address, the message.

Every ``ConfigError`` the config language and the loader raise leads with where it happened — ``FILE:LINE: `` (or
``main.py: ``, ``--var NAME: ``, an environment variable) — and, for a resource, ``KIND 'NAME': ``; that shape is
the error contract every bad-input test holds them to. ``validate --json`` reports it as Terraform's ``validate
-json`` reports a diagnostic (severity, summary, the range's file and line), with the address added.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from servectl.model.desired import address_of

_SITE = re.compile(r"^(?P<file>[^\s:]+\.py)(?::(?P<line>\d+))?: (?P<rest>.*)$", re.DOTALL)
_RESOURCE = re.compile(r"\b(?P<kind>backend|endpoint) '(?P<name>[^']+)'")  # the first resource the line names
_VARIABLE = re.compile(r"^(?:--var |variable '|SERVECTL_VAR_)(?P<name>[A-Za-z_][A-Za-z0-9_]*)'?(?P<rest>[:= ].*)$", re.DOTALL)


@dataclass(frozen=True)
class Diagnostic:
    """One error as ``validate --json`` reports it: ``summary`` the whole line as the CLI prints it, ``detail``
    what is wrong (the line less its place), ``file`` relative to the config dir and ``line`` (1-based) where it
    was declared (None when the error has no place in a file: an environment variable, a missing ``main.py``),
    ``address`` the resource or variable it concerns (``backend.NAME``, ``endpoint.NAME``, ``var.NAME``) or None.
    """

    summary: str
    detail: str
    file: Optional[str] = None
    line: Optional[int] = None
    address: Optional[str] = None
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        """The diagnostic as JSON-ready data."""
        return asdict(self)


def diagnose(message: str) -> Diagnostic:
    """Read ``message`` (a ConfigError's line, already masked) back into its parts; the parts it does not have
    are None, and ``detail`` is then the whole line."""
    file: Optional[str] = None
    line: Optional[int] = None
    rest = message
    site = _SITE.match(message)
    if site:
        file, rest = site["file"], site["rest"]
        line = int(site["line"]) if site["line"] else None
    address = None
    resource = _RESOURCE.search(rest)
    if resource:
        address = address_of(resource["kind"], resource["name"])
    else:
        variable = _VARIABLE.match(rest)
        if variable:
            address = f"var.{variable['name']}"
    return Diagnostic(summary=message, detail=rest, file=file, line=line, address=address)
