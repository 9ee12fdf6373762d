"""Providers (installed as ``servectl.providers``): one module per provider behind ``Provider``."""
from typing import Optional

from servectl.desired import ProviderSpec
from servectl.providers.base import ClusterView, Provider
from servectl.statuses import ProviderKind


def provider_for(spec: ProviderSpec, config_dir: str, code_dir: Optional[str] = None) -> Provider:
    """``code_dir``: where the code to deploy is, when not the config dir (a saved plan's or history's bundle)."""
    if spec.kind == ProviderKind.LOCAL_RAY:
        from servectl.providers.local_ray import LocalRayProvider

        return LocalRayProvider(spec, config_dir, code_dir)
    if spec.kind == ProviderKind.AWS_RAY:
        from servectl.providers.aws_ray import AwsRayProvider

        return AwsRayProvider(spec, config_dir, code_dir)
    raise ValueError(f"unknown provider kind {spec.kind!r}")


__all__ = ["ClusterView", "Provider", "provider_for"]
