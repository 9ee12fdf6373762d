"""The S3 state store against a real moto_server: conditional writes, the lock race, versions, encryption."""
from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest

from servectl.model.desired import StateBackendSpec
from servectl.errors import LockError, StateError
from servectl.state.history import HistoryEntry
from servectl.state.document import StateDocument
from servectl.state.s3 import S3StateStore

_buckets = itertools.count()


def new_bucket(moto_server, versioned: bool = True) -> str:
    # Unique per call: a name made from a counter repeats when this module is imported twice (by pytest, and by
    # test_s3_state_e2e), and a reused bucket holds another test's objects.
    name = f"state-{next(_buckets)}-{uuid.uuid4().hex[:12]}"
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def store(bucket: str, key: str = "serving/prod.json", **settings) -> S3StateStore:
    return S3StateStore(StateBackendSpec(bucket=bucket, key=key, region="us-east-1", **settings))


def test_state_round_trips_as_encrypted_versions(moto_server):
    bucket = new_bucket(moto_server)
    first = store(bucket, encrypt=True)
    assert first.read() is None
    document = StateDocument.new()
    document.stamp("test")
    first.write(document)
    document.stamp("test")
    first.write(document)

    again = store(bucket).read()
    assert (again.lineage, again.serial) == (document.lineage, 2)
    s3 = moto_server.client("s3")
    versions = s3.list_object_versions(Bucket=bucket, Prefix="serving/prod.json")["Versions"]
    assert len([v for v in versions if v["Key"] == "serving/prod.json"]) == 2  # every write is a kept version
    assert s3.head_object(Bucket=bucket, Key="serving/prod.json")["ServerSideEncryption"] == "AES256"


def test_history_entries_are_objects_under_the_key(moto_server):
    bucket = new_bucket(moto_server)
    kept = store(bucket)
    for serial in (3, 1, 2):
        kept.append_history(HistoryEntry(
            serial=serial, lineage="L", time="t", who="me", operation="apply", summary=f"#{serial}",
            desired=None, bundle_b64="",
        ))
    assert [entry.serial for entry in store(bucket).history()] == [1, 2, 3]
    keys = [o["Key"] for o in moto_server.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert "serving/prod.json.history/0000000001.json" in keys


def test_latest_history_reads_only_the_newest_entry(moto_server):
    bucket = new_bucket(moto_server)
    kept = store(bucket)
    assert kept.latest_history() is None
    for serial in (1, 2, 12):
        kept.append_history(HistoryEntry(
            serial=serial, lineage="L", time="t", who="me", operation="apply", summary=f"#{serial}",
            desired=None, bundle_b64="",
        ))
    # An unreadable old entry proves the newest is found without reading the others.
    moto_server.client("s3").put_object(Bucket=bucket, Key="serving/prod.json.history/0000000001.json", Body=b"{")
    with pytest.raises(StateError, match="history entry is unreadable"):
        kept.history()
    latest = kept.latest_history()
    assert (latest.serial, latest.lineage) == (12, "L")


def test_exactly_one_of_many_racing_processes_gets_the_lock(moto_server):
    bucket = new_bucket(moto_server)
    for round_ in range(3):
        winners: list[str] = []
        refusals: list[str] = []
        start = threading.Barrier(6)

        def contend() -> None:
            mine = store(bucket)  # its own client, as another process would have
            start.wait()
            try:
                winners.append(mine.lock("apply").id)
            except LockError as err:
                refusals.append(str(err))

        threads = [threading.Thread(target=contend) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, (round_, winners, refusals)
        assert len(refusals) == 5
        for refusal in refusals:
            assert refusal.startswith(f"state s3://{bucket}/serving/prod.json is locked by ")
            assert f"servectl force-unlock {winners[0]}" in refusal
        store(bucket).force_unlock(winners[0])


def test_a_held_s3_lock_is_waited_for_up_to_the_lock_timeout(moto_server):
    bucket = new_bucket(moto_server)
    holder, waiter = store(bucket), store(bucket)
    info = holder.lock("apply")
    threading.Timer(0.8, holder.unlock, args=(info,)).start()
    started = time.monotonic()
    with waiter.locked("apply", timeout_s=30):
        assert 0.7 < time.monotonic() - started < 5
    info = holder.lock("apply")
    with pytest.raises(LockError) as raised:
        with waiter.locked("apply", timeout_s=1):
            pass
    assert str(raised.value).endswith("; still held after --lock-timeout 1 s") and info.id in str(raised.value)
    holder.unlock(info)


def test_unlock_and_force_unlock(moto_server):
    bucket = new_bucket(moto_server)
    holder = store(bucket)
    info = holder.lock("apply")
    with pytest.raises(LockError, match="does not match the lock"):
        store(bucket).force_unlock("not-the-id")
    holder.unlock(info)
    with pytest.raises(LockError, match="is not locked; nothing to unlock"):
        store(bucket).force_unlock(info.id)
    again = store(bucket).lock("apply")  # the lock can be taken again after a delete marker
    released = store(bucket).force_unlock(again.id)
    assert released.id == again.id
    # The first holder's late unlock must not delete a lock someone else holds now.
    third = store(bucket)
    third_info = third.lock("apply")
    holder._lock_etag = '"stale"'
    holder.unlock(info)
    with pytest.raises(LockError, match=third_info.id):
        store(bucket).lock("apply")


def test_a_writer_that_lost_its_lock_cannot_overwrite_the_state(moto_server):
    bucket = new_bucket(moto_server)
    seed = StateDocument.new()
    store(bucket).write(seed)
    slow = store(bucket)
    slow.read()
    fast = store(bucket)
    newer = fast.read()
    newer.stamp("test")
    fast.write(newer)
    stale = seed.copy()
    stale.stamp("slow")  # not the bytes the fast writer put there (those a lost-answer retry would find: ours)
    with pytest.raises(StateError, match="changed by another process while this one held the lock"):
        slow.write(stale)
    assert store(bucket).read().serial == newer.serial  # nothing lost


def test_bucket_problems_are_one_clear_line(moto_server):
    unversioned = new_bucket(moto_server, versioned=False)
    with pytest.raises(StateError) as refused:
        store(unversioned).lock("apply")
    assert "does not keep versions" in str(refused.value)
    assert f"put-bucket-versioning --bucket {unversioned}" in str(refused.value)

    with pytest.raises(StateError, match="bucket 'no-such-bucket' does not exist in us-east-1"):
        store("no-such-bucket").read()

    from servectl.providers.embedded_cluster import free_ports

    (closed,) = free_ports(1)
    unreachable = store("any-bucket", endpoint_url=f"http://127.0.0.1:{closed}")
    with pytest.raises(StateError, match=r"^s3://any-bucket/serving/prod.json: cannot reach S3 to read the state: "):
        unreachable.read()


def test_a_retried_put_whose_first_answer_was_lost_is_ours(moto_server):
    """boto3 retries a PUT whose answer it never saw; the retry meets its own object (412): the lock and the
    state write it made are ours, not another process's."""
    bucket = new_bucket(moto_server)
    lost = store(bucket)
    answers_lost = []

    def lose_first_answer(attempts, response, request_dict, **kwargs):
        key = request_dict.get("url", "")
        if attempts == 1 and response is not None and response[0].status_code == 200 and not answers_lost:
            answers_lost.append(key)
            return 0  # retry at once, as after a connection reset: the first PUT did land
        return None

    lost.client.meta.events.register_first("needs-retry.s3.PutObject", lose_first_answer)
    info = lost.lock("apply")  # the retry is refused (412) by the lock the first attempt created
    assert answers_lost and answers_lost[0].endswith(".lock")
    assert lost._read_lock()[0].id == info.id
    with pytest.raises(LockError):
        store(bucket).lock("apply")  # it is held, by us
    answers_lost.clear()
    document = StateDocument.new()
    document.stamp("test")
    lost.write(document)  # the state write's retry is refused (IfNoneMatch) by what the first attempt wrote
    assert answers_lost and store(bucket).read().serial == document.serial
    document.stamp("test")
    lost.write(document)  # and the store still knows the ETag to write the next one
    lost.unlock(info)
    store(bucket).lock("apply")


def test_the_s3_history_is_indexed_and_pruned_to_its_keep_setting(moto_server):
    from tests.test_state import check_history_is_indexed_and_pruned

    check_history_is_indexed_and_pruned(store(new_bucket(moto_server)))
