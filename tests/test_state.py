"""State documents and the local store: atomic private writes, refusals, locking."""
from __future__ import annotations

import json
import os
import stat

import pytest

from servectl.errors import LockError, StateError
from servectl.history import HistoryEntry
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
