"""State documents and the local store: atomic private writes, refusals, locking."""
from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest

from servectl.errors import LockError, StateError
from servectl.state.history import HistoryEntry
from servectl.state.document import FORMAT_VERSION, ResourceState, StateDocument
from servectl.state.local import LocalStateStore


def test_round_trip_and_private_permissions(tmp_path):
    store = LocalStateStore.in_dir(str(tmp_path))
    doc = StateDocument.new()
    doc.resources["backend.a"] = ResourceState("backend", "a", {"num_replicas": 2}, live={"application": "a"})
    doc.stamp("test")
    store.write(doc)
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode == 0o600
    again = store.read()
    assert again.lineage == doc.lineage and again.serial == 1
    assert again.resources["backend.a"].attributes == {"num_replicas": 2}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".servectl.state.")]  # no temp files left


def test_corrupt_state_is_refused_and_left_untouched(tmp_path):
    store = LocalStateStore.in_dir(str(tmp_path))
    with open(store.path, "w") as handle:
        handle.write('{"format_version": 1, "serial": ')
    os.chmod(store.path, 0o600)
    with pytest.raises(StateError, match="state file is corrupt"):
        store.read()
    assert open(store.path).read() == '{"format_version": 1, "serial": '


def test_newer_format_is_refused(tmp_path):
    store = LocalStateStore.in_dir(str(tmp_path))
    with open(store.path, "w") as handle:
        json.dump({"format_version": FORMAT_VERSION + 1, "lineage": "x", "serial": 1, "resources": {}}, handle)
    os.chmod(store.path, 0o600)
    with pytest.raises(StateError, match="written by a newer servectl"):
        store.read()


def test_a_state_file_open_to_others_is_refused(tmp_path):
    store = LocalStateStore.in_dir(str(tmp_path))
    store.write(StateDocument.new())
    os.chmod(store.path, 0o644)
    with pytest.raises(StateError, match=r"open to other users \(mode 0644\).*chmod 600"):
        store.read()
    os.chmod(store.path, 0o600)
    assert store.read() is not None


def test_second_lock_names_the_holder(tmp_path):
    first = LocalStateStore.in_dir(str(tmp_path))
    second = LocalStateStore.in_dir(str(tmp_path))
    info = first.lock("apply")
    with pytest.raises(LockError) as raised:
        second.lock("apply")
    assert info.id in str(raised.value) and "for 'apply'" in str(raised.value)
    first.unlock(info)
    second.unlock(second.lock("apply"))


def test_a_held_lock_is_waited_for_up_to_the_lock_timeout_and_a_dead_holders_not_at_all(tmp_path):
    """``--lock-timeout``'s mechanism (Terraform's ``-lock-timeout``): a lock a live operation holds is polled for
    until it is released or the time is up; a record a crashed operation left is refused at once."""
    holder = LocalStateStore.in_dir(str(tmp_path))
    waiter = LocalStateStore.in_dir(str(tmp_path))
    info = holder.lock("apply")
    told: list[str] = []
    threading.Timer(0.8, holder.unlock, args=(info,)).start()
    started = time.monotonic()
    with waiter.locked("destroy", timeout_s=30, waiting=told.append) as mine:
        waited = time.monotonic() - started
        assert mine.operation == "destroy"
    assert 0.7 < waited < 5, waited  # released at 0.8 s; polled at most 2 s apart
    assert len(told) == 1 and info.id in told[0] and told[0].endswith("; waiting up to 30 s")  # once, naming the holder

    info = holder.lock("apply")
    started = time.monotonic()
    with pytest.raises(LockError) as raised:
        with waiter.locked("apply", timeout_s=1.5):
            pass
    assert 1.4 < time.monotonic() - started < 4
    assert str(raised.value).endswith("; still held after --lock-timeout 1.5 s") and info.id in str(raised.value)
    holder.unlock(info)

    info = holder.lock("apply")
    os.close(holder._lock_fd)  # a killed holder: the record stays, nobody holds the flock
    holder._lock_fd = None
    started = time.monotonic()
    with pytest.raises(LockError, match="no longer running"):
        with waiter.locked("apply", timeout_s=60):
            pass
    assert time.monotonic() - started < 1  # waiting cannot help: only force-unlock clears it
    waiter.force_unlock(info.id)


def test_lock_timeout_durations_read_as_terraforms():
    from servectl.cli.common import lock_timeout_s
    from servectl.errors import ServectlError

    assert [lock_timeout_s(text) for text in ("0", "0s", "30s", "5m", "1h30m", "250ms", "1.5m", "24h")] == [
        0, 0, 30, 300, 5400, 0.25, 90, 86400]
    for bad in ("10", "5x", "-1s", "", "1e3s", "NaN", "25h"):
        with pytest.raises(ServectlError, match="--lock-timeout"):
            lock_timeout_s(bad)


def test_lock_record_left_by_a_crash_needs_force_unlock_with_the_right_id(tmp_path):
    store = LocalStateStore.in_dir(str(tmp_path))
    info = store.lock("apply")
    os.close(store._lock_fd)  # what a killed process leaves: OS lock gone, record still there
    store._lock_fd = None
    with pytest.raises(LockError, match=f"force-unlock {info.id}"):
        store.lock("apply")
    with pytest.raises(LockError, match="does not match"):
        store.force_unlock("wrong-id")
    assert store.force_unlock(info.id).id == info.id
    store.unlock(store.lock("apply"))


def test_latest_history_reads_only_the_newest_entry(tmp_path):
    store = LocalStateStore.in_dir(str(tmp_path))
    assert store.latest_history() is None
    for serial in (2, 10, 1):
        store.append_history(HistoryEntry(
            serial=serial, lineage="L", time="t", who="me", operation="apply", summary=f"#{serial}",
            desired=None, bundle_b64="",
        ))
    # An unreadable old entry proves the newest is found without reading the others.
    with open(os.path.join(store.history_dir, "0000000001.json"), "w") as handle:
        handle.write("{")
    with pytest.raises(StateError, match="history entry is unreadable"):
        store.history()
    latest = store.latest_history()
    assert (latest.serial, latest.lineage) == (10, "L")


def _entry(serial: int, applied: bool = True, bundle: bytes = b"") -> HistoryEntry:
    import base64

    return HistoryEntry(serial=serial, lineage="L", time="t", who="me", operation="apply" if applied else "destroy",
                        summary=f"#{serial}", desired={"config_dir": "/x"} if applied else None,
                        bundle_b64=base64.b64encode(bundle).decode())


def check_history_is_indexed_and_pruned(store) -> None:
    """Shared by the local and the S3 store: listing reads the index only; pruning keeps what rollback needs."""
    for serial in range(1, 31):  # 30 entries with 256 KiB bundles: what `state history` must not read
        store.append_history(_entry(serial, bundle=os.urandom(256 * 1024)), keep=50)
    index = store.history_index()
    assert [s.serial for s in index] == list(range(1, 31)) and all(s.applied for s in index)
    assert store.history_entry(7).bundle and store.latest_history().serial == 30
    for serial in range(1, 30):  # every entry but the newest now unreadable: the listing does not care
        store._write_history_text(serial, "{")
    assert len(store.history_index()) == 30
    with pytest.raises(StateError, match="history entry is unreadable"):
        store.history_entry(3)
    for serial in range(1, 30):
        store._write_history_text(serial, json.dumps(_entry(serial).to_dict()))

    # Keep 5: the oldest go, their entries deleted; the two newest applied versions stay however many
    # destroys (no desired state) came after them.
    for serial in range(31, 41):
        store.append_history(_entry(serial, applied=serial <= 32), keep=5)
    assert [s.serial for s in store.history_index()] == [31, 32, 36, 37, 38, 39, 40]
    assert store._history_serials() == [31, 32, 36, 37, 38, 39, 40]
    with pytest.raises(StateError, match="is not kept"):
        store.history_entry(1)

    # A history written before the index existed is indexed on first read.
    store._write_history_index("not json")
    assert [s.serial for s in store.history_index()] == [31, 32, 36, 37, 38, 39, 40]


def test_the_history_is_indexed_and_pruned_to_its_keep_setting(tmp_path):
    check_history_is_indexed_and_pruned(LocalStateStore.in_dir(str(tmp_path)))
