"""State in an S3 object, locked by a conditional write, as Terraform's S3 backend with ``use_lockfile``.

Three kinds of object sit beside each other under the configured key:

- ``KEY``: the state document. The bucket must keep versions, so every write
  is a recoverable version. Writes are conditional on the version this process
  last read or wrote (``If-Match``; ``If-None-Match: *`` for the first), so a
  writer that lost its lock (force-unlocked behind its back) fails instead of
  overwriting someone else's state.
- ``KEY.lock``: the lock, created with ``If-None-Match: *`` so exactly one of
  any number of racing processes gets it; its body is the holder's LockInfo.
- ``KEY.history/SERIAL.json``: one object per applied version, for rollback,
  and ``KEY.history/index.json``, their summaries (``state history`` and
  ``rollback`` read it and one entry, never every bundle).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

from servectl.model.desired import StateBackendSpec
from servectl.errors import LockError, StateError
from servectl.state.document import StateDocument
from servectl.state.local import INDEX_NAME
from servectl.state.store import LockInfo, StateStore

# S3's answers to a failed condition: 412 normally, 409 when two conditional writes race.
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
MISSING = ("NoSuchKey", "404", "NotFound")


class S3StateStore(StateStore):
    """The state document, its lock and its history as objects in one versioned bucket."""

    def __init__(self, spec: StateBackendSpec, client: Any = None) -> None:
        self.spec = spec
        self.lock_key = spec.key + ".lock"
        self.history_prefix = spec.key + ".history/"
        self._client = client
        # The state object's ETag as this process last saw it: None = not seen yet, "" = it did not exist.
        self._etag: Optional[str] = None
        self._lock_etag: Optional[str] = None
        self._versioning_checked = False

    def describe(self) -> str:
        """``s3://BUCKET/KEY`` of the state object."""
        return self.spec.describe()

    # -- plumbing -------------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use: the spec's region and endpoint, 5 s connect and 30 s read
        timeouts, 3 attempts.
        """
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                region_name=self.spec.region,
                endpoint_url=self.spec.endpoint_url or None,  # None: boto3 honours AWS_ENDPOINT_URL
                config=Config(
                    connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
                ),
            )
        return self._client

    def _call(self, what: str, operation: Callable[..., Any], **params: Any) -> Any:
        """Run one S3 call; anything but a condition or a missing key becomes one StateError line."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return operation(Bucket=self.spec.bucket, **params)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in CONDITION_FAILED or code in MISSING:
                raise
            if code == "NoSuchBucket":
                raise StateError(
                    f"{self.describe()}: bucket {self.spec.bucket!r} does not exist in {self.spec.region}; "
                    "create it (with versioning) before using S3State"
                ) from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StateError(
                    f"{self.describe()}: access denied while trying to {what} ({code}); check the AWS credentials "
                    "and that they may read and write this bucket"
                ) from None
            message = err.response.get("Error", {}).get("Message", "") or code
            raise StateError(f"{self.describe()}: cannot {what}: {message}") from None
        except NoCredentialsError:
            raise StateError(
                f"{self.describe()}: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY"
            ) from None
        except BotoCoreError as err:
            raise StateError(f"{self.describe()}: cannot reach S3 to {what}: {err}") from None

    @staticmethod
    def _code(err: Exception) -> str:
        return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))

    def _encryption(self) -> dict[str, str]:
        if not self.spec.encrypt:
            return {}
        if self.spec.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.spec.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def _put(self, what: str, key: str, text: str, **conditions: str) -> str:
        response = self._call(
            what, self.client.put_object, Key=key, Body=text.encode("utf-8"),
            ContentType="application/json", **self._encryption(), **conditions,
        )
        return str(response.get("ETag", ""))

    def _get(self, what: str, key: str) -> Optional[tuple[str, str]]:
        """(body, ETag) of ``key``, or None when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            response = self._call(what, self.client.get_object, Key=key)
        except ClientError as err:
            if self._code(err) in MISSING:
                return None
            raise StateError(f"{self.describe()}: cannot {what}: {err}") from None
        try:
            body = response["Body"].read().decode("utf-8")
        except UnicodeDecodeError:
            raise StateError(f"s3://{self.spec.bucket}/{key}: not UTF-8 text; servectl will not overwrite it") from None
        return body, str(response.get("ETag", ""))

    def _require_versioning(self) -> None:
        """Refuse to write into a bucket that would not keep the previous state."""
        if self._versioning_checked:
            return
        answer = self._call("read the bucket's versioning", self.client.get_bucket_versioning)
        if answer.get("Status") != "Enabled":
            raise StateError(
                f"{self.describe()}: bucket {self.spec.bucket!r} does not keep versions, so a bad write could not be "
                f"undone; enable it: aws s3api put-bucket-versioning --bucket {self.spec.bucket} "
                "--versioning-configuration Status=Enabled"
            )
        self._versioning_checked = True

    # -- the state document ---------------------------------------------------------------------------------------

    def read(self) -> Optional[StateDocument]:
        """The state document in the object, or None when the object does not exist.

        Remembers the object's ETag ("" when missing) so the next ``write`` is conditional on it. Raises StateError when
        S3 cannot be read (credentials, access, bucket) or the document is corrupt.
        """
        found = self._get("read the state", self.spec.key)
        if found is None:
            self._etag = ""
            return None
        text, self._etag = found
        return StateDocument.from_json(text, self.describe())

    def write(self, document: StateDocument) -> None:
        """Store ``document`` as a new version of the object, conditional on the ETag last read or written
        (``If-Match``; ``If-None-Match: *`` when it did not exist); reads first if this process has not.

        Raises StateError when the bucket does not keep versions, or when another process changed the object meanwhile
        (a lost lock) and nothing is overwritten; a failed condition where the object already holds exactly this
        document (a retried PUT) counts as written.
        """
        from botocore.exceptions import ClientError

        self._require_versioning()
        if self._etag is None:  # never read: read now, so the write is still conditional
            self.read()
        condition = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
        try:
            self._etag = self._put("write the state", self.spec.key, document.to_json(), **condition)
        except ClientError as err:
            if self._code(err) not in CONDITION_FAILED and self._code(err) not in MISSING:
                raise
            found = self._get("read the state", self.spec.key)
            if found is not None and found[0] == document.to_json():
                self._etag = found[1]  # a retried PUT whose first answer was lost: what is there is what we wrote
                return
            raise StateError(
                f"{self.describe()}: the state was changed by another process while this one held the lock (was the "
                "lock force-unlocked?); nothing was overwritten: run plan again"
            ) from None

    # -- history --------------------------------------------------------------------------------------------------

    def _history_key(self, serial: int) -> str:
        return f"{self.history_prefix}{serial:010d}.json"

    def _history_serials(self) -> list[int]:
        serials: list[int] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list the history", self.client.list_objects_v2, Prefix=self.history_prefix, **token)
            for item in page.get("Contents", []):
                name = item["Key"][len(self.history_prefix):]
                if name.endswith(".json") and name[:-5].isdigit():
                    serials.append(int(name[:-5]))
            if not page.get("IsTruncated"):
                return sorted(serials)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _read_history_text(self, serial: int) -> Optional[tuple[str, str]]:
        key = self._history_key(serial)
        found = self._get("read a history entry", key)
        return None if found is None else (found[0], f"s3://{self.spec.bucket}/{key}")

    def _write_history_text(self, serial: int, text: str) -> None:
        self._put("keep a history entry", self._history_key(serial), text)

    def _delete_history_entry(self, serial: int) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call("prune the history", self.client.delete_object, Key=self._history_key(serial))
        except ClientError as err:
            if self._code(err) not in MISSING:
                raise StateError(f"{self.describe()}: cannot prune the history: {err}") from None

    def _read_history_index(self) -> Optional[str]:
        found = self._get("read the history's index", self.history_prefix + INDEX_NAME)
        return None if found is None else found[0]

    def _write_history_index(self, text: str) -> None:
        self._put("write the history's index", self.history_prefix + INDEX_NAME, text)

    def _read_lock(self) -> Optional[tuple[LockInfo, str]]:
        found = self._get("read the lock", self.lock_key)
        if found is None:
            return None
        text, etag = found
        try:
            return LockInfo(**json.loads(text)), etag
        except (ValueError, TypeError):
            return LockInfo(id="unreadable", operation="?", who="?", created="?", pid=0), etag

    def lock(self, operation: str) -> LockInfo:
        """Take the lock by creating ``KEY.lock`` with ``If-None-Match: *``, as Terraform's S3 backend with
        ``use_lockfile``; the object's body is the returned LockInfo.

        Raises LockError naming the holder when the lock object exists; StateError when the bucket does not keep
        versions or S3 fails otherwise.
        """
        from botocore.exceptions import ClientError

        self._require_versioning()
        info = LockInfo.for_operation(operation)
        try:
            self._lock_etag = self._put("take the lock", self.lock_key, json.dumps(info.to_dict()), IfNoneMatch="*")
        except ClientError as err:
            if self._code(err) not in CONDITION_FAILED:
                raise StateError(f"{self.describe()}: cannot take the lock: {err}") from None
            holder = self._read_lock()
            if holder is not None and holder[0].id == info.id:
                # boto3 retried a PUT whose first answer was lost: the lock it failed to create is the one we made.
                self._lock_etag = holder[1]
                return info
            who = holder[0].describe() if holder else "another process (its lock was just released; run again)"
            hint = (
                f"; if that operation is no longer running, run `servectl force-unlock {holder[0].id}`"
                if holder else ""
            )
            raise LockError(f"state {self.describe()} is locked by {who}{hint}") from None
        return info

    def unlock(self, info: LockInfo) -> None:
        """Delete ``KEY.lock`` only if it is still the object this process created (``If-Match`` on its ETag); a lock
        that is gone or taken by another process is left alone. Without that ETag (a lock taken by another store
        object of this process) the lock is read first and deleted only if it carries ``info``'s ID. Raises
        StateError when S3 fails otherwise.
        """
        from botocore.exceptions import ClientError

        etag = self._lock_etag
        if etag is None:
            held = self._read_lock()
            if held is None or held[0].id != info.id:
                return  # gone, or someone else's: not ours to delete
            etag = held[1]
        condition = {"IfMatch": etag}
        try:
            self._call("release the lock", self.client.delete_object, Key=self.lock_key, **condition)
        except ClientError as err:
            # Someone force-unlocked it and another process holds it now: that lock is not ours to delete.
            if self._code(err) not in CONDITION_FAILED and self._code(err) not in MISSING:
                raise StateError(f"{self.describe()}: cannot release the lock: {err}") from None
        self._lock_etag = None

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Delete ``KEY.lock`` when its holder's ID is ``lock_id``, as ``terraform force-unlock``; returns its LockInfo.

        Raises LockError when there is no lock, when the ID does not match, or when the lock changed between reading and
        deleting it.
        """
        from botocore.exceptions import ClientError

        held = self._read_lock()
        if held is None:
            raise LockError(f"state {self.describe()} is not locked; nothing to unlock")
        current, etag = held
        if current.id != lock_id:
            raise LockError(f"lock ID {lock_id!r} does not match the lock on {self.describe()} (held with ID {current.id})")
        try:
            self._call("release the lock", self.client.delete_object, Key=self.lock_key, IfMatch=etag)
        except ClientError:
            raise LockError(f"the lock on {self.describe()} changed while it was being released; look again") from None
        return current
