"""Session fixtures that start real services on 127.0.0.1 and stop them (infra/local/services.py).

Each starts on first use only, on free ports, with its state in a temporary folder, and is
stopped at the end of the session whether tests failed or not:

    s3_server      S3Server: .endpoint_url, and .env (the AWS_* variables for boto3, s3fs,
                   pyarrow, with fake credentials); moto starts with no buckets: make_bucket()
    mlflow_server  MlflowServer: .url, the tracking URI (artifacts are uploaded through it)
    ray_cluster    RayHead: .address for ray.init(address=...), .dashboard_url for
                   JobSubmissionClient; 2 CPUs

The services are shared by the whole session: give each test its own bucket, experiment, prefix.
Registered by tests/conftest.py (pytest_plugins); `local_services` is the loaded module, and
`from tests.services import make_bucket, free_port` works in test modules.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_SERVICES_PY = Path(__file__).resolve().parents[1] / "infra" / "local" / "services.py"


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server; an S3Server with .endpoint_url and .env."""
    state = tmp_path_factory.mktemp("s3")
    server = local_services.start_s3(state, port=0)
    yield server
    local_services.stop(["s3"], state)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server (SQLite, proxied artifacts); an MlflowServer with .url."""
    state = tmp_path_factory.mktemp("mlflow")
    server = local_services.start_mlflow(state, port=0)
    yield server
    local_services.stop(["mlflow"], state)


@pytest.fixture(scope="session")
def ray_cluster():
    """A one-node Ray cluster with 2 CPUs; a RayHead with .address and .dashboard_url."""
    # Short: Ray's unix sockets live under it (at most 107 characters in all).
    state = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        head = local_services.start_ray(state, port=0, dashboard_port=0, num_cpus=2)
        yield head
    finally:
        local_services.stop(["ray"], state)
        shutil.rmtree(state, ignore_errors=True)
