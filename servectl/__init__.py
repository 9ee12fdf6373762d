"""servectl: Terraform-style plan/apply for model serving on Ray Serve.

Config modules import their vocabulary from here::

    from servectl import Backend, Endpoint, LocalRay, S3State, var
    from servectl import Rollout, ErrorRate, LatencyP99, MinRequests
"""
from servectl.version import __version__  # noqa: E402

from servectl.config import Backend, Endpoint, History, LocalRay, RayActorOptions, S3State, var  # noqa: E402
from servectl.providers.aws.config import AwsRay, LoadBalancer, NodeType  # noqa: E402
from servectl.config.rollout import ErrorRate, LatencyP99, MinRequests, Rollout  # noqa: E402
from servectl.errors import ServectlError  # noqa: E402
from servectl.runtime.handles import get_handle  # noqa: E402
from servectl.engine.driver import connect  # noqa: E402
from servectl.sensitive import sensitive  # noqa: E402
from servectl.runtime.context import get_current_backend_tag, get_current_replica_tag  # noqa: E402

__all__ = [
    "Backend", "Endpoint", "LocalRay", "RayActorOptions", "S3State", "var", "get_handle", "connect", "ServectlError", "__version__",
    "get_current_backend_tag", "get_current_replica_tag", "sensitive", "AwsRay", "NodeType", "LoadBalancer",
    "Rollout", "ErrorRate", "LatencyP99", "MinRequests", "History",
]
