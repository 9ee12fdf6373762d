"""The config language: what users write in ``main.py`` (pydantic models, no I/O).

``Backend``, ``Endpoint``, the ``LocalRay``/``S3State``/``History`` blocks,
``var`` and the ``Rollout`` gates. Constructing one registers it with the
config being loaded (as Pulumi resources register), so a config reads as a
list of declarations; every field is bounded and validated where it is
written, and declares what changing it costs on Ray Serve (``update_type``,
as Ray Serve's own config fields do). Provider blocks other than ``LocalRay``
(``AwsRay``) live with their provider and subclass ``ProviderBlock``.
"""
from servectl.config.blocks import HISTORY_KEEP, History, LocalRay, S3State
from servectl.config.registry import Registry, declaration_site, first_error
from servectl.config.resources import Autoscaling, Backend, Block, Endpoint, ProviderBlock, RayActorOptions
from servectl.config.rollout import ErrorRate, LatencyP99, MinRequests, Rollout
from servectl.config.variables import var

__all__ = [
    "Autoscaling", "Backend", "Block", "Endpoint", "ErrorRate", "HISTORY_KEEP", "History", "LatencyP99", "LocalRay",
    "MinRequests", "ProviderBlock", "RayActorOptions", "Registry", "Rollout", "S3State", "declaration_site",
    "first_error", "var",
]
