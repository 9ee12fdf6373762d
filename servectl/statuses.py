"""The words servectl records and prints for where things stand: string enums, one per kind of status.

Each member is a ``str`` whose value is the word in the state file and the
JSON outputs, so files written before these were enums read the same, and
``str()``/f-strings give the word, not ``Class.MEMBER`` (Python 3.11's default).
"""
from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A string enum that reads as its value everywhere (``str``, ``format``, JSON)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ResourceStatus(Word):
    """Where one resource's last change stands in the state."""

    APPLIED = "applied"
    FAILED = "failed"  # the last change failed; the resource's ``error`` says why
    # Written before a change starts and replaced when it ends: a state that still
    # says "applying" was left by an apply that died mid-change (kill -9, power cut).
    APPLYING = "applying"


class RolloutStatus(Word):
    """Where a declared rollout stands (the endpoint's ``rollout.status``)."""

    PENDING = "pending"  # declared, no step taken: all traffic on the stable backend
    PROGRESSING = "progressing"  # at a step, being watched
    PAUSED = "paused"  # stopped by its gates (on_failure="pause") or for want of requests; --resume or --abort
    COMPLETED = "completed"  # the new backend takes all the traffic
    ABORTED = "aborted"  # rolled back to the stable backend; --retry starts it again


class DriftKind(Word):
    """How the live system differs from the state for one drift item."""

    CHANGED = "changed"  # a recorded value differs live
    DELETED = "deleted"  # recorded, but gone from the live system
    UNMANAGED = "unmanaged"  # live, but not in the state


class ProviderKind(Word):
    """Which provider a config declares (``ProviderSpec.kind``)."""

    LOCAL_RAY = "local_ray"
    AWS_RAY = "aws_ray"
