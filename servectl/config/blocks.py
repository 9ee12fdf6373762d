"""Top-level blocks besides resources: the ``LocalRay`` provider, the ``S3State`` backend, ``History`` retention."""
from __future__ import annotations

import re
from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from servectl import names
from servectl.config.resources import MAX_NODE_CPUS, MAX_NODE_GPUS, Block, ProviderBlock

HISTORY_KEEP = 50  # History(keep=…)'s default: entries the state's history keeps
INGRESSES = ("direct", "python")


def ingress_problem(ingress: str, http_location: str) -> Optional[str]:
    """What is wrong with data path ``ingress`` at ``http_location``, as the tail of one error line; None if nothing.

    The one home of the rule, for ``LocalRay(ingress=…)`` and for ``SERVECTL_INGRESS`` alike: direct ingress
    (Serve's, which servectl's front proxy rides) serves HTTP from the head only.
    """
    if ingress not in INGRESSES:
        return "must be 'direct' or 'python'"
    if ingress == "direct" and http_location != "HeadOnly":
        return f"needs http_location='HeadOnly' (got {http_location!r})"
    return None


class LocalRay(ProviderBlock):
    """The local Ray provider: an embedded cluster servectl starts itself, or an existing one.

    ``address`` (or env ``SERVECTL_RAY_ADDRESS``) names an existing cluster that
    servectl uses but never stops; without it servectl owns a head node on
    its own ports and temp dir.
    """

    address: Optional[str] = Field(None, description="GCS address host:port of an existing cluster")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    http_location: Literal["HeadOnly", "EveryNode", "NoServer"] = "HeadOnly"
    num_cpus: Optional[float] = Field(
        None, ge=0, le=MAX_NODE_CPUS, allow_inf_nan=False, description="CPUs of the embedded head (default: this machine's)"
    )
    num_gpus: int = Field(0, ge=0, le=MAX_NODE_GPUS, description="GPUs of the embedded head (logical GPUs work on CPU machines)")
    resources: dict[str, float] = Field(default_factory=dict)
    auth_token_path: Optional[str] = Field(None, description="token file for an existing cluster with token auth")
    ingress: Optional[Literal["python", "direct"]] = Field(
        None,
        description="how HTTP reaches the replicas: 'direct' (the default with http_location='HeadOnly') from the "
        "front proxy straight to each replica's own port (Serve's direct ingress; the embedded head is started with "
        "it); 'python' through Serve's proxy (the default otherwise, and the fallback)",
    )

    @model_validator(mode="after")
    def _address_shape(self) -> "LocalRay":
        if self.address is not None and not re.fullmatch(r"[\w.-]+:\d{1,5}", self.address):
            raise ValueError(f"address {self.address!r} must be host:port")
        if self.ingress is None:  # the default follows the location; left out of model_fields_set (not given)
            self.__dict__["ingress"] = "direct" if self.http_location == "HeadOnly" else "python"
        problem = ingress_problem(self.ingress, self.http_location)
        if problem:
            raise ValueError(
                f"ingress={self.ingress!r} {problem}: under direct ingress "
                "Serve runs its proxy on the head only, and the front proxy there reaches every replica itself"
            )
        return self


BUCKET_PATTERN = names.BUCKET


class S3State(Block):
    """Keep the state in S3 instead of ``servectl.state.json``, as Terraform's S3 backend with ``use_lockfile``.

    The bucket must exist and have versioning on (every state write is then a
    kept version). The lock is the object ``KEY.lock``, created only if absent.
    """

    bucket: str = Field(..., description="an existing bucket with versioning enabled")
    key: str = Field(..., min_length=1, max_length=1000, description="object key of the state, e.g. serving/prod.json")
    region: str = Field(..., min_length=1)
    encrypt: bool = Field(False, description="server-side encryption (SSE-S3, or SSE-KMS with kms_key_id)")
    kms_key_id: Optional[str] = None
    endpoint_url: Optional[str] = Field(None, description="an S3-compatible endpoint; AWS_ENDPOINT_URL also works")

    registry_field: ClassVar[str] = "state_backends"

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not names.matches(names.BUCKET, value) or ".." in value:
            raise ValueError("not a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)")
        return value

    @field_validator("key")
    @classmethod
    def _plain_key(cls, value: str) -> str:
        if value.startswith("/") or value.endswith("/"):
            raise ValueError("the key names an object: no leading or trailing '/'")
        return value

    @model_validator(mode="after")
    def _kms_needs_encrypt(self) -> "S3State":
        if self.kms_key_id is not None and not self.encrypt:
            raise ValueError("kms_key_id is set but encrypt is False: set encrypt=True")
        return self


class History(Block):
    """How many applied versions the state's history keeps (``servectl state history``, ``servectl rollback``).

    Every apply, destroy, rollback and refresh adds one entry with the
    config's files; past ``keep`` the oldest go, except the state's own version
    and the two newest applied ones (what ``rollback`` returns to).
    """

    keep: int = Field(HISTORY_KEEP, ge=2, le=10_000, description="entries kept; the oldest beyond it are pruned on each apply")

    registry_field: ClassVar[str] = "histories"


