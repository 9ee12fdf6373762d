"""Input variables: ``var()`` as Terraform's ``variable`` blocks (``--var``, ``SERVECTL_VAR_name``, the default)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from servectl.config.registry import active_registry, declaration_site
from servectl.errors import ConfigError
from servectl.sensitive import REDACTED, Sensitive, remember


@dataclass
class Variable:
    """One input variable a config declared with ``var()``: its default, description and ``file:line``.

    ``value`` is what the load resolved (``--var``, then ``SERVECTL_VAR_name``, then the default), wrapped in
    Sensitive when the variable is declared ``sensitive=True``.
    """

    name: str
    default: Any
    description: str
    declared_at: str
    value: Any = None


_MISSING = object()
ENV_VARIABLE_PREFIX = "SERVECTL_VAR_"


def var(
    name: str, default: Any = _MISSING, description: str = "", type: Optional[type] = None, sensitive: bool = False
) -> Any:
    """Declare an input variable and return its value (``--var name=value``, env ``SERVECTL_VAR_name``, or the default).

    The value given on the command line is converted to ``type`` (or the
    default's type), so ``var("replicas", default=2)`` with ``--var replicas=4`` is ``4``.
    ``sensitive=True`` returns it as ``sensitive(value)``: never printed, kept only in the 0600 state.
    """
    site = declaration_site()
    registry = active_registry()
    target_type = type or (default.__class__ if default not in (_MISSING, None) else str)
    if registry is None:  # imported outside a load (a worker importing main.py): defaults only
        value = None if default is _MISSING else default
        return Sensitive(value) if sensitive else value
    if name in registry.variables:
        raise ConfigError(f"{site}: variable {name!r} is declared twice (first at {registry.variables[name].declared_at})")
    variable = Variable(name=name, default=None if default is _MISSING else default, description=description, declared_at=site)
    from_env = ENV_VARIABLE_PREFIX + name
    if name in registry.variables_given:
        variable.value = _convert(name, registry.variables_given[name], target_type, site, secret=sensitive)
    elif from_env in os.environ:  # as Terraform's TF_VAR_name: CI sets it once for every command
        variable.value = _convert(name, os.environ[from_env], target_type, site, source=from_env, secret=sensitive)
    elif default is _MISSING:
        raise ConfigError(f"{site}: variable {name!r} has no default: pass --var {name}=VALUE (or set {from_env})")
    else:
        variable.value = default
    if sensitive:
        variable.value = Sensitive(variable.value)
    registry.variables[name] = variable
    return variable.value


def _convert(name: str, raw: str, target: type, site: str, source: str = "", secret: bool = False) -> Any:
    """``raw`` (from --var or the environment) as ``target``; a sensitive variable's value is never echoed."""
    if secret:
        remember(raw)
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("true", "1", "yes")
        if target in (int, float, str):
            return target(raw)
        import json

        value = json.loads(raw)
        if target in (dict, list) and not isinstance(value, target):  # JSON of the default's own shape
            raise TypeError(raw)
        return value
    except (ValueError, TypeError):
        shown = REDACTED if secret else repr(raw)
        given = f"{source}={shown}" if source else f"--var {name}={shown}"
        shape = {"dict": "JSON object", "list": "JSON array"}.get(target.__name__, target.__name__)
        raise ConfigError(f"{given}: not a valid {shape} (declared at {site})") from None
