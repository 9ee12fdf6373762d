"""Routing on AWS: the policy document apply publishes in S3, and the node agents' reports back.

Every node runs servectl's front proxy in front of Serve's own proxy. Nodes
come and go with their Auto Scaling groups, so apply cannot push to them:
it writes one document (``<cluster>/routing.json`` in the code bucket) with
each endpoint's route, key-space segments and shadows, under a version
number one above the last; each node's agent (``servectl.node_agent``) polls
it, reloads its proxy and reports the version it serves
(``<cluster>/agents/<node ip>.json``). Apply moves on once every live Ray
node has reported the version, so traffic has moved everywhere before a
backend it left is deleted.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from servectl.errors import ProviderError


@dataclass
class RoutingStore:
    """One cluster's routing document and node agents' reports in its code bucket (``s3`` is a boto3 S3 client)."""

    s3: Any  # a boto3 S3 client
    bucket: str
    cluster: str

    @property
    def document_key(self) -> str:
        """The routing document's S3 key: ``<cluster>/routing.json``."""
        return f"{self.cluster}/routing.json"

    @property
    def reports_prefix(self) -> str:
        """The S3 prefix of the node agents' reports, one ``<node ip>.json`` each: ``<cluster>/agents/``."""
        return f"{self.cluster}/agents/"

    def read(self, etag: Optional[str] = None) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        """The routing document and its ETag; (None, etag) when unchanged since ``etag`` or not written yet."""
        from botocore.exceptions import ClientError

        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.document_key}
        if etag:
            params["IfNoneMatch"] = etag
        try:
            answer = self.s3.get_object(**params)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "304", "NotModified") or status == 304:
                return None, etag
            raise
        return json.loads(answer["Body"].read()), answer["ETag"]

    def publish(
        self, endpoints: dict[str, dict[str, Any]], backends: list[str], serve_port: int,
        node_groups: Optional[dict[str, dict[str, Any]]] = None,
    ) -> int:
        """Write the next version of the document; returns its version.

        ``node_groups`` (Auto Scaling group, node resources, min and max per
        worker type) is what the head's node scaler sizes.
        """
        from servectl.providers.aws.resources import call

        current, _ = self._read_or_fail()
        version = int((current or {}).get("version", 0)) + 1
        document = {"version": version, "serve_port": serve_port, "backends": sorted(backends), "endpoints": endpoints,
                    "node_groups": node_groups or {}}
        call("publish the routing policy", self.s3.put_object, Bucket=self.bucket, Key=self.document_key,
             Body=json.dumps(document, sort_keys=True).encode(), ServerSideEncryption="AES256")
        return version

    def _read_or_fail(self) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.read()
        except (ClientError, BotoCoreError) as err:
            raise ProviderError(f"cannot read the routing policy s3://{self.bucket}/{self.document_key}: {err}") from None

    def current(self) -> Optional[dict[str, Any]]:
        """The routing document last published (``version``, ``serve_port``, ``backends``, ``endpoints``,
        ``node_groups``), or None before the first. Raises ProviderError when S3 cannot be read.
        """
        return self._read_or_fail()[0]

    def report(
        self, node_ip: str, version: int, serving: bool, detail: str = "", websockets: Optional[dict[str, int]] = None,
    ) -> None:
        """A node agent says which version its front proxy serves, whether Serve answers behind it, and how many
        open WebSocket connections its front proxy holds on each backend."""
        body = {"node_ip": node_ip, "version": version, "serving": serving, "detail": detail,
                "websockets": dict(websockets or {}), "at": time.time()}
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.reports_prefix}{node_ip}.json",
                           Body=json.dumps(body).encode(), ServerSideEncryption="AES256")

    def report_of(self, node_ip: str) -> Optional[dict[str, Any]]:
        """One node agent's last report, or None before its first."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"{self.reports_prefix}{node_ip}.json"
        try:
            answer = self.s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            error = err.response.get("Error", {})
            if str(error.get("Code", "")) == "NoSuchKey":
                return None
            raise ProviderError(f"cannot read node {node_ip}'s report: {error.get('Code')}: {error.get('Message')}") from None
        except BotoCoreError as err:
            raise ProviderError(f"cannot read node {node_ip}'s report: {err}") from None
        return json.loads(answer["Body"].read())

    def open_websockets(self, backend: str, node_ips: list[str]) -> int:
        """Open WebSocket connections on ``backend`` over the nodes' front proxies, as their agents last reported
        (an agent reports a change within its poll interval)."""
        total = 0
        for ip in node_ips:
            counts = (self.report_of(ip) or {}).get("websockets") or {}
            count = counts.get(backend, 0) if isinstance(counts, dict) else 0
            total += count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0
        return total

    def wait_for_websockets(
        self, backend: str, node_ips: list[str], bound_s: float, progress: Callable[[str], None], poll_s: float = 1.0,
    ) -> None:
        """Block until no node reports an open WebSocket on ``backend``, at most ``bound_s`` seconds (the front
        proxies close what is left then), saying what it waits for through ``progress`` — the same lines as the
        local provider's wait."""
        open_now = self.open_websockets(backend, node_ips)
        if not open_now:
            return
        progress(f"waiting for {open_now} open WebSocket connection(s) on {backend} to close (at most {bound_s:g} s)")
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline and self.open_websockets(backend, node_ips):
            time.sleep(poll_s)
        left = self.open_websockets(backend, node_ips)
        if left:
            progress(f"{left} WebSocket connection(s) on {backend} still open after {bound_s:g} s: closed with it")

    def wait_for(self, version: int, node_ips: list[str], timeout_s: float) -> None:
        """Block until every node in ``node_ips`` serves ``version`` (or a later one).

        Each poll reads only the reports of nodes still behind, so a large
        cluster costs a read per lagging node, not per node.
        """
        deadline = time.monotonic() + timeout_s
        behind = list(node_ips)
        while True:
            reports = {ip: self.report_of(ip) or {} for ip in behind}
            for ip, report in sorted(reports.items()):
                if report.get("version") == version and str(report.get("detail", "")).startswith("refused"):
                    raise ProviderError(f"node {ip} {report['detail']}; nothing changed on it")
            behind = [ip for ip in behind if int(reports[ip].get("version", 0)) < version]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"routing version {version} not served after {timeout_s:.0f}s by node(s) {', '.join(sorted(behind))}: "
                    "their node agent is not running or cannot read the code bucket (see /var/log/servectl-agent.log "
                    "on the node)"
                )
            time.sleep(0.5)

    def clear(self) -> None:
        """Remove the document and every report (destroy)."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.cluster}/")
        for item in (item for page in pages for item in page.get("Contents", [])):  # any number of nodes' reports
            if item["Key"] == self.document_key or item["Key"].startswith(self.reports_prefix):
                self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
