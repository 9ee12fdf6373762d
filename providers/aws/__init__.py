"""The AWS provider: an autoscaled Ray cluster with a proxy on every node behind a load balancer.

``config`` holds the ``AwsRay`` block users write, ``infra`` the AWS resources
it plans (and the resource kinds it registers with the planner), ``resources``
creates and reads them with boto3, ``routing`` writes the routing document the
node agents apply, and ``provider`` is the ``Provider`` that ties them together.
"""
from servectl.providers.aws import infra  # noqa: F401,E402 - imported to register the plugin: the planner learns the AWS kinds
