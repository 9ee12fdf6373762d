"""Providers (installed as ``servectl.providers``): one module per provider behind ``Provider``."""
from servectl.desired import ProviderSpec
from servectl.providers.base import ClusterView, Provider


def provider_for(spec: ProviderSpec, config_dir: str) -> Provider:
    if spec.kind == "local_ray":
        from servectl.providers.local_ray import LocalRayProvider

        return LocalRayProvider(spec, config_dir)
    raise ValueError(f"unknown provider kind {spec.kind!r}")


__all__ = ["ClusterView", "Provider", "provider_for"]
