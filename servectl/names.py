"""What a name, a route or an AWS identifier may be: one rule each, in one place.

The config language checks them where users write them (pydantic
validators); the same rules are checked again at the point of use, wherever
such a value reaches a configuration file (the front proxy's HAProxy
configuration, rendered on every AWS node from a document in S3), a command
line or a boot script, because a value can arrive there by another way than
a validated config (an edited state or routing document). Every rule matches
the whole value (``fullmatch``): ``re.match`` with ``$`` lets a trailing
newline through, and a newline is how a line gets added to a configuration.
"""
from __future__ import annotations

import re
from typing import Any

# Backend, endpoint and node-type names: they name Serve applications, routes and HAProxy variables.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
# An endpoint's HTTP route prefix; servectl's internal routes and Serve's own (/-/healthz, /-/routes) are not free.
ROUTE = re.compile(r"(?!/_servectl(/|$))(?!/-(/|$))/[A-Za-z0-9._~/-]{0,255}")
# "module:attr" of a backend's code.
IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*")
# AWS: us-east-1, eu-central-2, us-gov-west-1, ap-southeast-4.
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
# An S3 bucket (no "..", no IP-address look-alikes needed here: S3 refuses those itself).
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
CLUSTER_NAME = re.compile(r"[a-z][a-z0-9-]{0,23}")
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")
IMAGE_ID = re.compile(r"ami-[0-9a-f]{8,17}")
KEY_PAIR = re.compile(r"[A-Za-z0-9._-]{1,255}")
VPC_ID = re.compile(r"vpc-[0-9a-f]{8,17}")
SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8,17}")
RAY_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
# A plain absolute path (no spaces, quotes or newlines): where the front proxy keeps its PID file.
PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./-]{1,4000}")
# A custom Ray resource name (as ray start --resources takes it).
RESOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
# A multiplexed model id an endpoint routes by (Ray Serve's serve_multiplexed_model_id): an HAProxy match value.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
# An S3 object key servectl writes (the code zips under the cluster's prefix).
OBJECT_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,1000}")


def matches(rule: re.Pattern[str], value: Any) -> bool:
    """Whether ``value`` is a string the whole of which ``rule`` matches."""
    return isinstance(value, str) and rule.fullmatch(value) is not None


def require(rule: re.Pattern[str], value: Any, what: str) -> str:
    """``value`` if ``rule`` matches the whole of it; raises ValueError naming ``what`` otherwise."""
    if not matches(rule, value):
        raise ValueError(f"{what} {value!r} is not allowed (it must match {rule.pattern})")
    return value
