"""Providers (installed as ``servectl.providers``): where plans are carried out, behind one small interface.

``base`` is the ``Provider`` interface (prepare, read the cluster, converge one
change, observe, tear down); ``local_ray`` runs on a local or embedded Ray
with servectl's front proxy (``front_proxy``, ``embedded_cluster``,
``processes``); ``aws`` is an autoscaled Ray cluster with a proxy per node
behind a load balancer. Both send Serve the same deploy step
(``serve_deploy``, ``serve_apps``, ``serve_health``) through Ray's dashboard
REST API (``dashboard``).
"""
from typing import Optional

from servectl.model.desired import ProviderSpec
from servectl.providers.base import ClusterView, Provider
from servectl.statuses import ProviderKind


def provider_for(spec: ProviderSpec, config_dir: str, code_dir: Optional[str] = None) -> Provider:
    """``code_dir``: where the code to deploy is, when not the config dir (a saved plan's or history's bundle)."""
    if spec.kind == ProviderKind.LOCAL_RAY:
        from servectl.providers.local_ray import LocalRayProvider

        return LocalRayProvider(spec, config_dir, code_dir)
    if spec.kind == ProviderKind.AWS_RAY:
        from servectl.providers.aws.provider import AwsRayProvider

        return AwsRayProvider(spec, config_dir, code_dir)
    raise ValueError(f"unknown provider kind {spec.kind!r}")


__all__ = ["ClusterView", "Provider", "provider_for"]
