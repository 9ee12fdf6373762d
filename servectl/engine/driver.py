"""Connect a driver script (a client, a batch job) to the cluster a config directory's state records."""
from __future__ import annotations

import os

from servectl.errors import ServectlError
from servectl.providers.embedded_cluster import EmbeddedCluster
from servectl.providers.local_ray import connect as connect_ray
from servectl.state.local import LocalStateStore


def connect(config_dir: str = ".") -> None:
    """Connect a driver script to the cluster a config directory's state records (address and token)."""
    document = LocalStateStore.in_dir(os.path.abspath(config_dir)).read()
    live = (document.provider.get("live") or {}) if document else {}
    if not live.get("address"):
        raise ServectlError(f"{config_dir}: nothing applied yet: run `servectl -C {config_dir} apply` first")
    token = os.environ.get("SERVECTL_RAY_AUTH_TOKEN_PATH")
    if live.get("embedded"):
        record = EmbeddedCluster.for_config_dir(os.path.abspath(config_dir)).record()
        token = record.token_path if record else token
    connect_ray(live["address"], token)
