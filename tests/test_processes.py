"""servectl signals only processes it can prove it started: identity, not a PID in a file or a command line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servectl.providers.embedded_cluster import PROCESS_GROUP_SWEEP, EmbeddedCluster, head_environment
from servectl.providers.front_proxy import FrontProxy
from servectl.providers.local_ray import connect
from servectl.providers.processes import (
    TAG_VARIABLE, ProcessIdentity, identify, is_running, new_tag, session_members, signal_verified, stop_session,
)
from tests.conftest import SERVECTL, copy_example


def _stranger(tmp_path: Path, *extra: str) -> subprocess.Popen:
    """A process that is not servectl's: it even names the config's runtime dir on its command line."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *extra], start_new_session=True)


def _reaped(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_identity_tells_a_process_from_another_with_its_pid(tmp_path):
    proc = _stranger(tmp_path)
    try:
        identity = identify(proc.pid)
        assert identity is not None and is_running(identity)
        assert identity.executable == os.path.realpath(sys.executable)
        reused = ProcessIdentity(proc.pid, identity.start_ticks - 1, identity.executable, identity.boot_id)
        assert not is_running(reused)
        assert not signal_verified(proc.pid, signal.SIGTERM, reused)  # the PID is someone else's now
        rebooted = ProcessIdentity(proc.pid, identity.start_ticks, identity.executable, "another-boot")
        assert not is_running(rebooted) and session_members(rebooted) == []
        assert proc.poll() is None
        assert signal_verified(proc.pid, signal.SIGTERM, identity)
        proc.wait(timeout=10)
        assert not is_running(identity)
    finally:
        if proc.poll() is None:
            _reaped(proc)


def test_a_session_is_stopped_whole_even_after_its_leader_died(tmp_path):
    # A leader that starts a child in its own process group (as Ray's workers do), then dies.
    script = (
        "import subprocess, sys, time, os\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setpgid(0, 0); time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    tag = new_tag()
    leader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, TAG_VARIABLE: tag})
    child_pid = int(leader.stdout.readline())
    identity = identify(leader.pid, tag)
    assert identity is not None
    assert set(session_members(identity)) == {leader.pid, child_pid}
    _reaped(leader)
    assert session_members(identity) == [child_pid]  # the orphan keeps the session
    stop_session(identity, grace_s=2, kill_s=2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child_pid}/stat"):
        time.sleep(0.1)
    assert session_members(identity) == []


def test_destroy_never_signals_a_stranger_that_has_a_recorded_pid(tmp_path):
    """Stale cluster.json and haproxy records after a crash or reboot: the PIDs now belong to someone else."""
    config = copy_example("quickstart", tmp_path)
    runtime = config / ".servectl"
    runtime.mkdir(mode=0o700)
    strangers = [_stranger(tmp_path, str(runtime)) for _ in range(3)]
    try:
        cluster_pid, proxy_pid, old_format_pid = (p.pid for p in strangers)
        time.sleep(0.2)
        real = identify(cluster_pid)
        assert real is not None
        record = {
            "pid": cluster_pid, "gcs_address": "127.0.0.1:9", "temp_dir": str(tmp_path / "t"), "token_path": "",
            "dashboard_port": 1, "num_cpus": 1, "num_gpus": 0, "started_at": 0,
            "identity": {**real.to_dict(), "start_ticks": real.start_ticks - 100},  # started before: not this one
            "private_dir": str(tmp_path / "private"),
        }
        (runtime / "cluster.json").write_text(json.dumps(record))
        proxy = identify(proxy_pid)
        assert proxy is not None
        (runtime / "haproxy.json").write_text(json.dumps({**proxy.to_dict(), "boot_id": "an-earlier-boot"}))
        (runtime / "haproxy.pid").write_text(str(proxy_pid))
        assert EmbeddedCluster(str(runtime)).record() is None and FrontProxy(str(runtime)).master_pid() is None

        env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVECTL_RAY", "RAY_AUTH"))}
        destroyed = subprocess.run([SERVECTL, "-C", str(config), "destroy", "--auto-approve"], capture_output=True,
                                   text=True, env=env, timeout=120)
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
        (runtime / "cluster.json").write_text(json.dumps({k: v for k, v in record.items() if k != "identity"}
                                                        | {"pid": old_format_pid}))
        assert EmbeddedCluster(str(runtime)).stop() is False  # a record from before identities: not ours to signal
        time.sleep(0.5)
        assert all(p.poll() is None for p in strangers), "servectl signalled a process it did not start"
    finally:
        for proc in strangers:
            _reaped(proc)


def test_a_stranger_in_a_session_with_a_reused_number_is_not_a_member(tmp_path):
    """Our leader died and its PID was reused by a stranger's session leader, which died too, leaving a daemon
    behind: that daemon has our leader's number as its session id, but not our tag."""
    tag = new_tag()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                            env={**os.environ, TAG_VARIABLE: tag})
    recorded = identify(ours.pid, tag)
    assert recorded is not None and session_members(recorded) == [ours.pid]
    _reaped(ours)
    stranger = subprocess.run(
        ["setsid", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $! $$"], capture_output=True, text=True, timeout=10)
    daemon, leader = (int(x) for x in stranger.stdout.split())
    try:
        forged = ProcessIdentity(leader, recorded.start_ticks, recorded.executable, recorded.boot_id, tag)
        assert session_members(forged) == []  # its session id matches, its environment does not
        stop_session(forged, grace_s=0.5, kill_s=0.5)
        assert os.path.exists(f"/proc/{daemon}")
    finally:
        os.kill(daemon, signal.SIGKILL)
    assert ProcessIdentity.from_dict({"pid": 0, "start_ticks": 1, "executable": "x", "boot_id": "b"}) is None


def test_a_process_whose_binary_was_replaced_on_disk_is_still_ours(tmp_path):
    binary = tmp_path / "sleeper"
    binary.write_bytes(open("/bin/sleep", "rb").read())
    binary.chmod(0o755)
    tag = new_tag()
    proc = subprocess.Popen([str(binary), "60"], start_new_session=True, env={**os.environ, TAG_VARIABLE: tag})
    try:
        identity = identify(proc.pid, tag)
        replacement = tmp_path / "sleeper.new"
        replacement.write_bytes(open("/bin/sleep", "rb").read())
        os.replace(replacement, binary)  # as pip or apt upgrade a binary in use
        assert proc.poll() is None, f"the sleeper died ({proc.returncode}): someone signalled it"
        assert is_running(identity) and session_members(identity) == [proc.pid]
    finally:
        _reaped(proc)


@pytest.mark.parametrize("field", ["start_ticks", "executable"])
def test_a_recorded_identity_must_match_on_every_field(field):
    me = identify(os.getpid())
    assert me is not None and is_running(me)
    changed = {**me.to_dict(), field: me.start_ticks + 1 if field == "start_ticks" else "/bin/false"}
    assert not is_running(ProcessIdentity.from_dict(changed))
    assert ProcessIdentity.from_dict({"pid": "x"}) is None


def test_the_embedded_head_turns_off_rays_group_sweep_by_number_unless_the_user_set_it():
    """Ray SIGKILLs a dead worker's process group by number, which PID reuse can hand to a stranger."""
    assert head_environment({}, "/t")[PROCESS_GROUP_SWEEP] == "false"
    assert head_environment({PROCESS_GROUP_SWEEP: "true"}, "/t")[PROCESS_GROUP_SWEEP] == "true"


@pytest.mark.ray
def test_workers_of_the_embedded_head_lead_no_process_group_of_their_own(ray_cluster):
    connect(ray_cluster.address, ray_cluster.token_path)
    import ray

    @ray.remote(num_cpus=0)
    def groups() -> tuple[int, int]:
        return os.getpid(), os.getpgid(0)

    pid, group = ray.get(groups.remote(), timeout=60)
    assert group != pid  # no group of its own, so no group for Ray to sweep by number after it exits


def test_a_process_identified_the_moment_it_starts_is_a_member_of_its_session():
    """Popen returns once the new program's close-on-exec pipe is closed, which Linux does before it places the
    program's environment: read at once, /proc/PID/environ can be empty (seen ~3 % of starts on a busy machine),
    and the tag that proves a session ours would be missed. identify() waits for it."""
    for _ in range(400):
        tag = new_tag()
        proc = subprocess.Popen(["sleep", "30"], start_new_session=True, env={"PATH": os.environ["PATH"], TAG_VARIABLE: tag})
        try:
            recorded = identify(proc.pid, tag)
            assert recorded is not None and session_members(recorded) == [proc.pid]
        finally:
            _reaped(proc)
