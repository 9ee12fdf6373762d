"""The registry one load of a config directory fills: what ``main.py`` declared, in order, and where.

Constructing a resource registers it with the active registry (as Pulumi
resources do); ``declaration_site`` names the user's ``file:line`` for every
error; ``first_error`` turns pydantic's report into the one line a mistake gets.
"""
from __future__ import annotations

import contextvars
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from servectl.config.blocks import History, S3State
    from servectl.config.resources import Backend, Endpoint, ProviderBlock
    from servectl.config.variables import Variable

# Frames inside servectl (and its providers) are never the user's line.
_OWN_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


@dataclass
class Registry:
    """What one load of a config directory declared, in declaration order."""

    config_dir: str
    variables_given: dict[str, str]
    backends: list["Backend"] = field(default_factory=list)
    endpoints: list["Endpoint"] = field(default_factory=list)
    providers: list["ProviderBlock"] = field(default_factory=list)
    state_backends: list["S3State"] = field(default_factory=list)
    variables: dict[str, "Variable"] = field(default_factory=dict)
    rollouts: list[Any] = field(default_factory=list)  # servectl.config.rollout.Rollout
    histories: list["History"] = field(default_factory=list)


_active: contextvars.ContextVar[Optional[Registry]] = contextvars.ContextVar("servectl_registry", default=None)


def active_registry() -> Optional[Registry]:
    """The Registry of the config load running in this context; None outside a load (a worker importing main.py)."""
    return _active.get()


def set_registry(registry: Optional[Registry]) -> contextvars.Token:
    """Make ``registry`` the active one in this context (the loader, around running ``main.py``).

    Returns the token ``reset_registry`` takes.
    """
    return _active.set(registry)


def reset_registry(token: contextvars.Token) -> None:
    """Make active again the registry that was active before the ``set_registry`` call that returned ``token``."""
    _active.reset(token)


def declaration_site() -> str:
    """``file:line`` of the config statement that is running, for error messages.

    The innermost frame inside the config directory is the user's line; when
    no load is active (a worker importing ``main`` for a callable) any caller will do.
    """
    registry = active_registry()
    frame = sys._getframe(1)
    fallback = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if registry is not None and os.path.abspath(filename).startswith(registry.config_dir + os.sep):
            return f"{os.path.relpath(filename, registry.config_dir)}:{frame.f_lineno}"
        if fallback is None and not os.path.abspath(filename).startswith(_OWN_DIRS) and "pydantic" not in filename:
            fallback = f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return fallback or "<config>"


RULE = "servectl_rule"  # the error type of servectl's own rules: their message is the whole line


def rule_error(message: str) -> PydanticCustomError:
    """A validator's error for one of servectl's rules (names, routes, import paths): ``first_error`` shows
    ``message`` as it is, without pydantic's ``field: … (got …)`` around it."""
    return PydanticCustomError(RULE, "{message}", {"message": message})


def broke_rule_on(err: ValidationError, field: str) -> bool:
    """Whether ``err``'s first error is one of servectl's rules on ``field`` (a name: the line then leads with it)."""
    first = err.errors()[0]
    return first["type"] == RULE and tuple(first["loc"]) == (field,)


def first_error(err: ValidationError) -> str:
    """A pydantic ValidationError as the one line a config mistake gets: ``where: what (got value)``.

    Only the first error is told (fix one, run again, as a compiler does); an
    unknown setting says to check the spelling. Sensitive values print as
    ``sensitive(…)`` (their repr).
    """
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == RULE:
        return message
    if first["type"] == "extra_forbidden":
        message = "unknown setting (check the spelling)"
    if not first["loc"]:  # a check across settings: the input is the whole block, too long to echo
        return message
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {message} (got {echo_value(first.get('input'))})"


ECHO_CHARS = 80  # a value echoed in an error line: enough to recognise it, never a screenful (10**400)


def echo_value(value: object) -> str:
    """``repr(value)`` for an error line, cut to ECHO_CHARS with the count of what was left out."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"an int of more than {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}… ({len(text) - ECHO_CHARS} more characters)"


