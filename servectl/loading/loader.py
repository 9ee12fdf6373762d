"""Load a config directory's ``main.py`` into a validated DesiredState.

The directory is put on ``sys.path`` only while ``main.py`` runs, and every
module imported from it is forgotten afterwards, so loading two directories in
one process (tests, a long-lived tool) never mixes their code.
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback
from typing import Mapping, Optional

from servectl.config import HISTORY_KEEP, Registry
from servectl.config.registry import reset_registry, set_registry
from servectl.errors import ConfigError, ServectlError
from servectl.loading.attributes import backend_attributes, declare_rollouts, endpoint_attributes, provider_spec
from servectl.loading.code_identity import CONFIG_MODULE_RUN_NAME
from servectl.loading.composition import check_cycles, handle_calls
from servectl.model.desired import (
    BACKEND, ENDPOINT, DesiredState, ResourceSpec, StateBackendSpec, address_of, backends_used,
)
from servectl.model.kinds import plugin_for_block
from servectl.sensitive import to_plain

ROOT_MODULE = "main.py"


def load_registry(config_dir: str, variables: Optional[Mapping[str, str]] = None) -> Registry:
    """Run ``main.py`` and return what it declared. Errors name file:line."""
    config_dir = os.path.abspath(config_dir)
    main_path = os.path.join(config_dir, ROOT_MODULE)
    if not os.path.isfile(main_path):
        raise ConfigError(f"{main_path}: no such file: a config directory needs a {ROOT_MODULE} (use -C DIR)")
    registry = Registry(config_dir=config_dir, variables_given=dict(variables or {}))
    modules_before = set(sys.modules)
    sys.path.insert(0, config_dir)
    token = set_registry(registry)
    try:
        try:
            with open(main_path, encoding="utf-8") as handle:
                compile(handle.read(), main_path, "exec")
        except SyntaxError as err:
            where = os.path.relpath(err.filename or main_path, config_dir)
            raise ConfigError(f"{where}:{err.lineno}: syntax error: {err.msg}; fix the config and run again") from None
        runpy.run_path(main_path, run_name=CONFIG_MODULE_RUN_NAME)
    except ServectlError:
        raise
    except SyntaxError as err:  # in a sibling module main.py imports
        where = os.path.relpath(err.filename or main_path, config_dir)
        raise ConfigError(f"{where}:{err.lineno}: syntax error: {err.msg}; fix the config and run again") from None
    except BaseException as err:  # noqa: BLE001 - any failure in user code is a config error
        if isinstance(err, KeyboardInterrupt):
            raise
        raise ConfigError(f"{_user_frame(err, config_dir)}: {type(err).__name__}: {err}") from None
    finally:
        reset_registry(token)
        try:
            sys.path.remove(config_dir)
        except ValueError:
            pass
        for name in set(sys.modules) - modules_before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(config_dir + os.sep):
                del sys.modules[name]
    unused = set(registry.variables_given) - set(registry.variables)
    if unused:
        name = sorted(unused)[0]
        raise ConfigError(f"--var {name}: no variable {name!r} is declared in {ROOT_MODULE} (declare it with var({name!r}, default=…))")
    return registry


def _user_frame(err: BaseException, config_dir: str) -> str:
    site = ROOT_MODULE
    for frame in traceback.extract_tb(err.__traceback__):
        if os.path.abspath(frame.filename).startswith(config_dir + os.sep):
            site = f"{os.path.relpath(frame.filename, config_dir)}:{frame.lineno}"
    return site


def load_config(config_dir: str, variables: Optional[Mapping[str, str]] = None) -> DesiredState:
    """Load and validate a config directory into the desired state the planner diffs."""
    registry = load_registry(config_dir, variables)
    if len(registry.providers) > 1:
        raise ConfigError(
            f"{registry.providers[1].declared_at}: a second provider block; declare LocalRay(...) or AwsRay(...) once"
        )
    declared = registry.providers[0] if registry.providers else None
    plugin = plugin_for_block(declared)
    provider = plugin.spec(declared) if plugin else provider_spec(declared)
    if len(registry.state_backends) > 1:
        raise ConfigError(f"{registry.state_backends[1].declared_at}: a second state backend; declare S3State(...) once")
    state_backend = StateBackendSpec.from_block(registry.state_backends[0]) if registry.state_backends else None
    if plugin and plugin.check:
        plugin.check(declared, state_backend)

    if len(registry.histories) > 1:
        raise ConfigError(f"{registry.histories[1].declared_at}: a second History block; declare History(keep=…) once")
    history_keep = registry.histories[0].keep if registry.histories else HISTORY_KEEP

    resources: dict[str, ResourceSpec] = {}
    seen: dict[str, str] = {}

    def claim(kind: str, name: str, declared_at: str) -> str:
        address = address_of(kind, name)
        if address in seen:
            raise ConfigError(f"{declared_at}: {kind} {name!r} is declared twice (first at {seen[address]})")
        seen[address] = declared_at
        return address

    for backend in registry.backends:
        address = claim(BACKEND, backend.name, backend.declared_at)
        resources[address] = ResourceSpec(
            kind=BACKEND,
            name=backend.name,
            attributes=backend_attributes(backend, registry.config_dir),
            declared_at=backend.declared_at,
        )
    backend_names = {b.name for b in registry.backends}
    multiplexed = frozenset(b.name for b in registry.backends if b.max_models_per_replica is not None)

    routes: dict[str, str] = {}
    for endpoint in registry.endpoints:
        address = claim(ENDPOINT, endpoint.name, endpoint.declared_at)
        attributes = endpoint_attributes(endpoint, backend_names, multiplexed)
        route = attributes["route"]
        if route is not None:
            if route in routes:
                raise ConfigError(
                    f"{endpoint.declared_at}: endpoint {endpoint.name!r} route {route!r} is already used by "
                    f"endpoint {routes[route]!r}; give each endpoint its own route"
                )
            routes[route] = endpoint.name
        resources[address] = ResourceSpec(
            kind=ENDPOINT,
            name=endpoint.name,
            attributes=attributes,
            depends_on=[address_of(BACKEND, name) for name in backends_used(attributes)],
            declared_at=endpoint.declared_at,
        )
    declare_rollouts(registry.rollouts, resources)
    check_cycles(
        {b.name: handle_calls(b, resources[address_of(BACKEND, b.name)].attributes["code"], registry.config_dir)
         for b in registry.backends},
        {spec.name: backends_used(spec.attributes)
         for spec in resources.values() if spec.kind == ENDPOINT},
        {b.name: b.declared_at for b in registry.backends},
    )
    if plugin and plugin.infra:
        backends = [spec for spec in resources.values() if spec.kind == BACKEND]
        resources.update(plugin.infra(declared, backends, registry.config_dir))
    variables = {name: to_plain(v.value) for name, v in registry.variables.items()}
    return DesiredState(
        config_dir=registry.config_dir, provider=provider, resources=resources, variables=variables,
        state_backend=state_backend, history_keep=history_keep,
    )
