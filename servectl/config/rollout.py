"""The config vocabulary of progressive delivery: ``Rollout`` and its gates.

```python
Rollout(endpoint=api, new=v2, steps=[0.01, 0.1, 0.5, 1.0], pause_s=60,
        analysis=[ErrorRate(max=0.01), LatencyP99(max_ms=300, vs_stable=1.2), MinRequests(100)],
        on_failure="rollback")
```
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servectl import names
from servectl.config.registry import declaration_site, echo_value, first_error
from servectl.config.resources import Backend, Block, Endpoint
from servectl.errors import ConfigError


class _Gate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def plain(self) -> dict[str, Any]:
        raise NotImplementedError


class ErrorRate(_Gate):
    """The new backend's failed requests / its requests in the step's window must not exceed ``max``."""

    max: float = Field(ge=0, le=1)

    def __init__(self, max: float) -> None:  # noqa: A002 - the issue's spelling: ErrorRate(max=0.01)
        _gate(self, max=max)

    def plain(self) -> dict[str, Any]:
        """The gate as ``desired`` records it: ``{"kind": "error_rate", "max": …}``."""
        return {"kind": "error_rate", "max": self.max}


class LatencyP99(_Gate):
    """The new backend's p99 latency in the window: at most ``max_ms``, and at most ``vs_stable`` × the stable's."""

    max_ms: Optional[float] = Field(None, gt=0, le=3_600_000)  # at most an hour
    vs_stable: Optional[float] = Field(None, ge=1, le=1_000)

    def __init__(self, max_ms: Optional[float] = None, vs_stable: Optional[float] = None) -> None:
        _gate(self, max_ms=max_ms, vs_stable=vs_stable)

    @model_validator(mode="after")
    def _something(self) -> "LatencyP99":
        if self.max_ms is None and self.vs_stable is None:
            raise ValueError("give max_ms=…, vs_stable=…, or both")
        return self

    def plain(self) -> dict[str, Any]:
        """The gate as ``desired`` records it: ``{"kind": "latency_p99", "max_ms": …, "vs_stable": …}``."""
        return {"kind": "latency_p99", "max_ms": self.max_ms, "vs_stable": self.vs_stable}


class MinRequests(_Gate):
    """A step is judged only once the new backend served this many requests in its window."""

    count: int = Field(ge=1, le=100_000_000)

    def __init__(self, count: int) -> None:
        _gate(self, count=count)

    def plain(self) -> dict[str, Any]:
        """The gate as ``desired`` records it: ``{"kind": "min_requests", "count": …}``."""
        return {"kind": "min_requests", "count": self.count}


def _gate(gate: _Gate, **settings: Any) -> None:
    site = declaration_site()
    try:
        BaseModel.__init__(gate, **{k: v for k, v in settings.items() if v is not None})
    except ValidationError as err:
        raise ConfigError(f"{site}: {type(gate).__name__}: {first_error(err)}") from None


Gate = Union[ErrorRate, LatencyP99, MinRequests]


class Rollout(Block):
    """Move ``endpoint`` from its backend to ``new`` in ``steps``, each watched for ``pause_s`` through ``analysis``."""

    registry_field: ClassVar[str] = "rollouts"

    endpoint: Any = Field(description="the Endpoint (or its name); it must send all its traffic to one backend")
    new: Any = Field(description="the Backend (or its name) that takes the traffic over")
    steps: list[float] = Field(max_length=100, description="the new backend's weight at each step, rising to 1.0")
    pause_s: float = Field(60.0, ge=0, le=86_400, description="how long each step is watched before the next (≤ a day)")
    max_wait_s: Optional[float] = Field(
        None, ge=0, le=7 * 86_400, description="how long a step may watch in all for MinRequests (default 3 × pause_s); then it pauses"
    )
    analysis: list[Any] = Field(default_factory=list, description="gates: ErrorRate, LatencyP99, MinRequests")
    on_failure: Literal["rollback", "pause"] = "rollback"
    model: Optional[str] = Field(
        None, description="a multiplexed model id: move only that id's traffic (the endpoint's models=), every other "
        "id stays where it is",
    )

    def _check(self, site: str) -> None:
        if self.model is not None and not names.matches(names.MODEL_ID, self.model):
            raise ConfigError(
                f"{site}: Rollout: model id {self.model!r} is invalid: up to 128 letters, digits or '.', '_', ':', "
                "'/', '@', '+', '-', starting with a letter or digit"
            )
        if not isinstance(self.endpoint, (Endpoint, str)):
            raise ConfigError(f"{site}: Rollout: endpoint must be an Endpoint or an endpoint name, got {echo_value(self.endpoint)}")
        if not isinstance(self.new, (Backend, str)):
            raise ConfigError(f"{site}: Rollout: new must be a Backend or a backend name, got {echo_value(self.new)}")
        if self.max_wait_s is not None and self.max_wait_s < self.pause_s:
            raise ConfigError(f"{site}: Rollout: max_wait_s {self.max_wait_s:g} is shorter than pause_s {self.pause_s:g}")
        for gate in self.analysis:
            if not isinstance(gate, (ErrorRate, LatencyP99, MinRequests)):
                raise ConfigError(
                    f"{site}: Rollout: analysis takes ErrorRate(...), LatencyP99(...) and MinRequests(...), got {echo_value(gate)}"
                )

    @field_validator("steps")
    @classmethod
    def _rising_to_one(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("give at least one step")
        if any(math.isnan(step) or not 0 < step <= 1 for step in steps):
            raise ValueError("every step is a weight above 0 and at most 1")
        if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
            raise ValueError("steps must rise")
        if steps[-1] != 1.0:
            raise ValueError("the last step must be 1.0 (the new backend takes all the traffic)")
        return steps

    @property
    def endpoint_name(self) -> str:
        """The endpoint's name, whether it was given as an Endpoint or as a name."""
        return self.endpoint.name if isinstance(self.endpoint, Endpoint) else str(self.endpoint)

    @property
    def new_name(self) -> str:
        """The new backend's name, whether it was given as a Backend or as a name."""
        return self.new.name if isinstance(self.new, Backend) else str(self.new)

    @property
    def wait_limit_s(self) -> float:
        """How long a step may watch in all, in seconds: ``max_wait_s``, or 3 × ``pause_s`` when not given."""
        return self.max_wait_s if self.max_wait_s is not None else 3 * self.pause_s

    def gates(self) -> list[dict[str, Any]]:
        """The analysis gates in their plain form (``{"kind": …, …}``), in declaration order."""
        return [gate.plain() for gate in self.analysis]
