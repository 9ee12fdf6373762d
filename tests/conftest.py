"""Test fixtures: one real local Ray cluster per test session, and the real CLI.

The cluster runs on its own free ports and temp dir with token auth and two
logical GPUs (placement and fractional sharing work on a CPU machine), and is
stopped by the PIDs it started. Configs reach it through SERVECTL_RAY_ADDRESS,
exactly as a user points an unchanged config at another cluster.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests

from servectl.providers.embedded_cluster import RUNTIME_DIR, EmbeddedCluster, free_ports
from servectl.providers.local_ray import DIRECT_INGRESS_ENV

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# On the cluster's PYTHONPATH only: code the workers can import and the CLI cannot.
WORKER_SITE = REPO / "tests" / "worker_site"
# The entry point installed beside the interpreter running the tests (a virtualenv's), else the one on PATH.
SERVECTL = next((str(path) for path in [Path(sys.executable).parent / "servectl"] if path.exists()), None) or shutil.which("servectl") or "servectl"


@dataclass
class RayCluster:
    address: str
    token_path: str
    http_port: int
    metrics_port: int
    dashboard_url: str = ""

    @property
    def token(self) -> str:
        with open(self.token_path, encoding="utf-8") as handle:
            return handle.read().strip()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"


def set_environment(values: dict[str, Optional[str]]) -> dict[str, Optional[str]]:
    """Set (or, for None, unset) environment variables; return what they were, for ``set_environment`` to put back."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return saved


@contextlib.contextmanager
def started_cluster(runtime: Path, extra_env: Optional[dict[str, str]]) -> Iterator[RayCluster]:
    """A Ray head on its own ports and temp dir (``EmbeddedCluster``: 4 CPUs, 2 logical GPUs, the workers' extra
    site on its PYTHONPATH, ``extra_env`` added), with the environment pointing servectl at it (address, token,
    a free HTTP port) while it runs; stopped by PID afterwards."""
    cluster = EmbeddedCluster(str(runtime))
    saved_path = set_environment(
        {"PYTHONPATH": os.pathsep.join(filter(None, [str(WORKER_SITE), os.environ.get("PYTHONPATH")]))}
    )
    try:
        record = cluster.start(num_cpus=4, num_gpus=2, resources={}, extra_env=extra_env)
    finally:  # the workers keep it; this process and the CLI must not have it
        set_environment(saved_path)
    (http_port,) = free_ports(1)
    env = {
        "SERVECTL_RAY_ADDRESS": record.gcs_address,
        "SERVECTL_RAY_AUTH_TOKEN_PATH": record.token_path,
        "SERVECTL_HTTP_PORT": str(http_port),
    }
    saved = set_environment(env)
    try:
        yield RayCluster(
            address=record.gcs_address, token_path=record.token_path, http_port=http_port, metrics_port=record.metrics_port,
            dashboard_url=f"http://127.0.0.1:{record.dashboard_port}",
        )
    finally:
        set_environment(saved)
        import ray

        if ray.is_initialized():  # tests that read Serve's state connected this process as a driver
            ray.shutdown()
        cluster.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """The session's cluster, with Serve's direct ingress as servectl starts its own head (the default data path,
    issue #18). A module that needs a cluster without it (Serve then allows every HTTP location) overrides this
    fixture with ``started_cluster(…, None)``."""
    with started_cluster(tmp_path_factory.mktemp("ray-cluster"), DIRECT_INGRESS_ENV) as cluster:
        yield cluster


@dataclass
class MotoServer:
    url: str
    pid: int

    def client(self, service: str):
        import boto3

        return boto3.session.Session().client(service, region_name="us-east-1", endpoint_url=self.url)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> MotoServer:
    """moto_server on 127.0.0.1 as the only AWS endpoint this session can reach, stopped by PID.

    The environment points boto3 (here and in every CLI subprocess) at it with
    dummy credentials, so no test can reach real AWS even by mistake.
    """
    (port,) = free_ports(1)
    log = open(tmp_path_factory.mktemp("moto") / "moto_server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_PROFILE": None,
        "AWS_SESSION_TOKEN": None,
    }
    saved: dict[str, Optional[str]] = {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto_server did not start on {url} (see {log.name})")
                time.sleep(0.2)
        saved = set_environment(env)
        yield MotoServer(url=url, pid=proc.pid)
    finally:
        set_environment(saved)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(config_dir: Path, *args: str, stdin: Optional[str] = None, timeout: float = 300) -> CliResult:
    """Run the installed ``servectl`` entry point as a user would. Past ``timeout`` seconds the command is killed
    and the test fails with what it printed and (where py-spy is installed) where its threads were stuck."""
    proc = subprocess.Popen(
        [SERVECTL, "-C", str(config_dir), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    try:
        stdout, stderr = proc.communicate(stdin if stdin is not None else "", timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = stuck_stacks(proc.pid)
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"servectl {' '.join(args)} ran past {timeout:g} s; it printed:\n{stdout}{stderr}\nits stacks:\n{stacks}"
        ) from None
    return CliResult(proc.returncode, stdout, stderr)


def stuck_stacks(pid: int) -> str:
    """Where the threads of process ``pid`` are now (``py-spy dump``), or why that cannot be told."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "(py-spy is not installed)"
    try:
        return subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"(py-spy failed: {err})"


def race_applies(config_dir: Path, *args: str, count: int = 2, timeout: float = 300) -> list[CliResult]:
    """``count`` ``servectl apply --auto-approve ARGS`` started together on one config; their results."""
    procs = [
        subprocess.Popen([SERVECTL, "-C", str(config_dir), "apply", "--auto-approve", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        for _ in range(count)
    ]
    return [CliResult(proc.wait(timeout=timeout), *proc.communicate()) for proc in procs]


def write_config(directory: Path, main: str, **modules: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.py").write_text(textwrap.dedent(main))
    for name, source in modules.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return directory


def copy_example(name: str, destination: Path) -> Path:
    target = destination / name
    shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns(".servectl", "servectl.state.json*", "__pycache__"))
    return target


def file_digest(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def scrape(cluster: RayCluster, prefix: str) -> dict[tuple, float]:
    """Prometheus samples whose name starts with ``prefix``: {(name, sorted labels…): value}."""
    text = requests.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=10).text
    samples: dict[tuple, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = tuple(sorted(
            (k, v.strip('"')) for k, _, v in (item.partition("=") for item in labels.rstrip("}").split(",") if item)
        ))
        samples[(name, *pairs)] = samples.get((name, *pairs), 0.0) + float(value)
    return samples


def wait_for_http(url: str, timeout: float = 30, expect: int = 200) -> requests.Response:
    deadline = time.time() + timeout
    last: object = None
    while time.time() < deadline:
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == expect:
                return response
            last = response.status_code
        except requests.RequestException as err:
            last = err
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {expect} within {timeout}s (last: {last})")


@pytest.fixture
def applied_dirs(ray_cluster: RayCluster):
    """Config dirs a test applied; cleared afterwards so the shared cluster starts clean.

    A config on the session cluster is cleared at once: its front proxy stopped (by its recorded identity) and
    every Serve application deleted in one declarative deploy, as the next test's first apply would, waited
    for until Serve reports none (~3.5 s: its replicas' graceful shutdown; not waiting — the next apply takes
    applications being deleted for no strangers — left two applies hanging in one suite run: the wait stays).
    `servectl destroy` takes a state write and a Serve wait per resource — seconds per test, minutes per suite
    — and is tested as such elsewhere. A config with its own embedded head or a remote state is destroyed by
    the CLI.
    """
    dirs: list[Path] = []
    yield dirs
    for directory in dirs:
        own_head = (directory / RUNTIME_DIR / "cluster.json").exists()
        if (directory / "servectl.backend.json").exists() or own_head:
            result = run_cli(directory, "destroy", "--auto-approve")
            assert result.code == 0, result.output
        elif (directory / "servectl.state.json").exists():
            clear_session_cluster(ray_cluster, directory)


def clear_session_cluster(cluster: RayCluster, directory: Path) -> None:
    """Stop ``directory``'s front proxy and delete every Serve application of the session cluster; wait (at most
    60 s) until Serve reports none."""
    from servectl.providers.dashboard import RayDashboard
    from servectl.providers.front_proxy import FrontProxy

    FrontProxy(str(directory / RUNTIME_DIR)).stop()
    dashboard = RayDashboard(cluster.dashboard_url, cluster.token)
    details = dashboard.serve_details()
    if details.get("applications"):
        dashboard.deploy({"proxy_location": details.get("proxy_location") or "HeadOnly",
                          "http_options": details.get("http_options") or {}, "applications": []})
    deadline = time.monotonic() + 60
    while dashboard.serve_details().get("applications"):
        assert time.monotonic() < deadline, "Serve's applications were not deleted within 60 s"
        time.sleep(0.2)


# The longest files first (seconds on the 2-core machine, from `--durations`): with two workers taking files in
# this order, the long ones run side by side from the start instead of one of them last, alone. A file missing
# here runs after these, in collection order; the order changes how long the suite takes, never what it checks.
LONGEST_FIRST = (
    "reliability/test_apply_under_load.py",  # ~105 s alone, ~250 s beside two others (paced clients)
    "test_rollout_e2e.py",  # ~125 s / ~280 s
    "reliability/test_crash_safety_writes.py",  # ~110 s / ~220 s
    "reliability/test_crash_safety_waits.py",  # ~75 s / ~200 s
    "test_multinode_lb.py",  # ~60 s / ~120-230 s
    "reliability/test_crash_safety.py",  # ~60 s / ~170 s
    "test_secrets_e2e.py",  # ~90 s / ~125 s
    "test_aws_e2e.py",  # ~65 s / ~105 s
    "test_workflow_e2e.py",  # ~75 s / ~160 s in all
    "test_shadow_e2e.py",  # ~75 s / ~95 s
    "test_bad_inputs.py",  # ~35 s / ~70 s
    "test_fast_path_e2e.py",  # ~57 s alone (its own embedded head, started with direct ingress)
    "test_multiplexing_e2e.py",  # ~45 s alone (a model id's rollout included)
    "test_fastapi_ingress_e2e.py",
    "test_embedded_cluster.py",
    "test_traffic_e2e.py",
    "test_interrupts_e2e.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest files first (see LONGEST_FIRST); within a file, tests keep their order."""
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(REPO / "tests").as_posix()
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable


# SERVECTL_TEST_TIMELINE=FILE appends one line per test — worker, start and end (epoch seconds), the machine's
# CPU seconds (all cores, /proc/stat) spent meanwhile, and the test's id — so that docs/testing.md can show where
# the suite's wall time goes (which worker finishes last, which tests take the CPU).
_TIMELINE = os.environ.get("SERVECTL_TEST_TIMELINE")


def _machine_cpu_s() -> float:
    with open("/proc/stat", encoding="ascii") as handle:
        fields = handle.readline().split()[1:]
    return (sum(int(value) for value in fields[:8]) - int(fields[3]) - int(fields[4])) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]):
    if not _TIMELINE:
        yield
        return
    started, cpu = time.time(), _machine_cpu_s()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(_TIMELINE, "a", encoding="utf-8") as handle:
        handle.write(f"{worker} {started:.1f} {time.time():.1f} {_machine_cpu_s() - cpu:.1f} {item.nodeid}\n")
