"""Fixtures that start real services on 127.0.0.1 and stop them (infra/local/services.py).

Each service starts on first use only, on free ports, with its state in a temporary folder, and
is stopped at the end of the session whether tests failed or not:

    s3_server      S3Server: .endpoint_url, and .env (the AWS_* variables for boto3, s3fs,
                   pyarrow, with fake credentials); moto starts with no buckets: make_bucket()
    mlflow_server  MlflowServer: .url, the tracking URI (artifacts are uploaded through it)
    ray_cluster    RayHead: .address for ray.init(address=...), .dashboard_url for
                   JobSubmissionClient; 2 CPUs

The services are shared by the whole session: give each test its own bucket, experiment, prefix.
Before every test that uses one, the fixture checks that it is alive and answers (with a
deadline a loaded machine meets); one that died is started afresh, and a warning names it and
shows its log's last lines. When a test fails after a service it used died, the failure report
gets a section saying so, with the log tail: a dead service is never a mystery failure.

One more Ray fixture is a test's own, started before it and stopped after it (no health checks):

    fake_autoscaling_cluster
                   RayHead of an autoscaling cluster that starts as our cloud ones do: a head
                   with no CPU and no GPU; worker nodes (1 CPU, 1 fake GPU, up to 3) added by
                   Ray's autoscaler for pending demand, removed after a minute idle
                   (local_services.start_fake_autoscaling_cluster). Other sizes by indirect
                   parametrization: @pytest.mark.parametrize("fake_autoscaling_cluster",
                   [dict(max_workers=2, idle_timeout_minutes=0.2)], indirect=True).
                   Costs: 5-10 s to start, 3 s to stop; 1.8 GiB RSS (0.7 GiB PSS), plus
                   0.3 GiB (0.2) per worker node; a node joins 2-4 s after the demand.

And a moto S3 server of a test module's own, in the test process: `moto_endpoint`, its URL.

Ray's own temporary folder (RAY_TMPDIR) is a folder of this session, removed at its end: Ray
drivers started by tests (`ray.init()` without an address, ray.cluster_utils) leave nothing in
the machine's /tmp/ray.

Registered by tests/conftest.py (pytest_plugins); `local_services` is the loaded module, and
`from tests.services import make_bucket, free_port` works in test modules.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

_SERVICES_PY = Path(__file__).resolve().parents[1] / "infra" / "local" / "services.py"

# How long a service may take to answer a readiness check before it counts as down: on a 2-core
# machine shared with a training, Ray's dashboard has been seen to take several seconds.
READY_TIMEOUT = 60.0
PORT_WAIT = 15.0  # how long a restart waits for a dead service's ports before taking others


def _load_local_services():
    # infra/ is not a package: load the file by path, once.
    name = "local_services"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _SERVICES_PY)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while being created
        spec.loader.exec_module(module)
    return sys.modules[name]


# The plugin loads this file as "services" (tests/ is on sys.path, not being a package); test
# modules import "tests.services": one module under both names, so nothing here runs twice.
sys.modules.setdefault("services", sys.modules[__name__])
sys.modules.setdefault("tests.services", sys.modules[__name__])

local_services = _load_local_services()
make_bucket = local_services.make_bucket
free_port = local_services.free_port

# A driver in this process (ray.init(address=ray_cluster.address)) must resolve 127.0.0.1 to
# 127.0.0.1, as the cluster does: Ray reads this switch once, when it is imported, so it is set
# here, as the plugin loads, before any test module imports ray. It also keeps any local
# ray.init() of the test session on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")



class SharedService:
    """One service for the whole session: started on first use, checked before each test that
    uses it, and started again when it died, on the same ports where they are free (module
    fixtures that hold its address keep working; moto's buckets and Ray's jobs are lost)."""

    def __init__(self, name: str, start: Callable[[Path, object | None], object],
                 make_state: Callable[[], Path]):
        self.name, self._start, self._make_state = name, start, make_state
        self.state: Path | None = None
        self.service = None
        self.restarts: list[str] = []  # why each restart was needed

    def get(self):
        """The running service, started or restarted as needed."""
        if self.service is None:
            self.state = self._make_state()
            self.service = self._start(self.state, None)
            return self.service
        problem = local_services.health(self.name, self.state, timeout=READY_TIMEOUT)
        if problem is None:
            return self.service
        warnings.warn(f"the shared {self.name} service is down; starting it again. {problem}",
                      stacklevel=2)
        self.restarts.append(problem)
        previous = self.service
        self.stop()
        self.state = self._make_state()
        # The dead process may hold its ports for a moment; if they stay taken, any free ones.
        deadline = time.monotonic() + PORT_WAIT
        while self.service is None:
            try:
                self.service = self._start(self.state, previous)
            except local_services.ServiceError:
                if time.monotonic() > deadline:
                    self.service = self._start(self.state, None)
                time.sleep(0.5)
        return self.service

    def problem(self) -> str | None:
        """What is wrong with the service now (None: healthy or not started)."""
        if self.service is None:
            return None
        return local_services.health(self.name, self.state, timeout=5.0)

    def stop(self) -> None:
        if self.state is not None:
            local_services.stop([self.name], self.state)
            if self.name == "ray":  # a private folder: Ray's sessions and sockets
                shutil.rmtree(self.state, ignore_errors=True)
        self.state = self.service = None


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _start_ray(state: Path, previous) -> object:
    ports = (dict(port=_port(previous.address), dashboard_port=_port(previous.dashboard_url))
             if previous else dict(port=0, dashboard_port=0))
    return local_services.start_ray(state, num_cpus=2, **ports)


def _start_mlflow(state: Path, previous) -> object:
    return local_services.start_mlflow(state, port=_port(previous.url) if previous else 0)


def _start_s3(state: Path, previous) -> object:
    return local_services.start_s3(state, port=_port(previous.endpoint_url) if previous else 0)


def _ray_state() -> Path:
    # Short: Ray's unix sockets live under it (at most 107 characters in all).
    return Path(tempfile.mkdtemp(prefix="rt", dir="/tmp" if os.path.isdir("/tmp") else None))


_SHARED: dict[str, SharedService] = {}


@pytest.fixture(scope="session")
def _shared_services(tmp_path_factory):
    shared = {
        "s3": SharedService("s3", _start_s3, lambda: tmp_path_factory.mktemp("s3")),
        "mlflow": SharedService("mlflow", _start_mlflow, lambda: tmp_path_factory.mktemp("mlflow")),
        "ray": SharedService("ray", _start_ray, _ray_state),
    }
    _SHARED.update(shared)
    yield shared
    for service in shared.values():
        service.stop()
    _SHARED.clear()


# Module-scoped, so that module fixtures (a job run once for several tests) can use them;
# `_shared_services_alive` checks them again before every test.
@pytest.fixture(scope="module")
def s3_server(_shared_services):
    """moto's S3 server; an S3Server with .endpoint_url and .env."""
    return _shared_services["s3"].get()


@pytest.fixture(scope="module")
def mlflow_server(_shared_services):
    """An MLflow tracking server (SQLite, proxied artifacts); an MlflowServer with .url."""
    return _shared_services["mlflow"].get()


@pytest.fixture(scope="module")
def ray_cluster(_shared_services):
    """A one-node Ray cluster with 2 CPUs; a RayHead with .address and .dashboard_url."""
    return _shared_services["ray"].get()


@pytest.fixture
def fake_autoscaling_cluster(request):
    """An autoscaling Ray cluster of its own for this test (see the module docstring); a
    RayHead. A driver of this process still connected at the end is shut down before it stops."""
    state = _ray_state()
    try:
        yield local_services.start_fake_autoscaling_cluster(state, **getattr(request, "param", {}))
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()  # else the driver keeps trying to reach the stopped cluster
        local_services.stop(["ray"], state)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server of the test module's own, in this process (ThreadedMotoServer), for
    tests that fill and empty buckets freely; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


_FIXTURE_NAMES = {"s3_server": "s3", "mlflow_server": "mlflow", "ray_cluster": "ray"}
# Tests using these run on the shared services' pytest-xdist worker, one at a time.
_SERIAL_FIXTURES = {*_FIXTURE_NAMES, "fake_autoscaling_cluster"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """`make test` runs the suite on two pytest-xdist workers (--dist loadgroup): every test that
    uses a shared service goes to the same one, so that the services start once and their jobs
    run one at a time; the other worker runs the rest meanwhile. Tests with a fake autoscaling
    cluster join that group: a group of their own could run beside the shared Ray's jobs on the
    other worker, two clusters starting nodes and workers on two cores at once."""
    for item in items:
        if _SERIAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("shared-services"))


@pytest.fixture(autouse=True)
def _shared_services_alive(request):
    """Before each test: every shared service it uses is alive and answers (restarted if not)."""
    for fixture, name in _FIXTURE_NAMES.items():
        if fixture in request.fixturenames and name in _SHARED:
            _SHARED[name].get()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used a shared service which is now down says so, with its log."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when == "setup":
        return
    for fixture, name in _FIXTURE_NAMES.items():
        service = _SHARED.get(name)
        if fixture in getattr(item, "fixturenames", ()) and service is not None:
            problem = service.problem()
            if problem is not None:
                report.sections.append((f"shared {name} service is down", problem))


def pytest_configure(config):
    # Ray's temporary folder for every Ray this session starts without --temp-dir (read when a
    # Ray starts); short, because Ray's unix socket paths under it may not exceed 107 characters.
    config.ray_tmpdir = tempfile.mkdtemp(prefix="rtmp", dir="/tmp" if os.path.isdir("/tmp")
                                         else None)
    os.environ["RAY_TMPDIR"] = config.ray_tmpdir


def pytest_unconfigure(config):
    shutil.rmtree(config.ray_tmpdir, ignore_errors=True)
