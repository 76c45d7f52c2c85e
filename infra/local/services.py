"""Local development services on 127.0.0.1: a Ray head, an MLflow tracking server, moto's S3.

A module (the integration tests' fixtures import it) and a command-line script:

    python infra/local/services.py start [ray] [mlflow] [s3]   # none named: all three
    eval "$(python infra/local/services.py env)"                # RAY_ADDRESS, MLFLOW_..., AWS_...
    python infra/local/services.py status
    python infra/local/services.py stop [ray] [mlflow] [s3]

For tests of autoscaling, `start_fake_autoscaling_cluster` starts a Ray head with no CPU and an
autoscaler that adds worker nodes with fake GPUs as processes on this machine.

Each service runs as a background process in its own process group, with its state in one folder
(default `.local-services/` in the current directory):

    services.json            what runs where: addresses and the process id of each service
    ray.log, ray/            `ray start` output; Ray's temp dir (sessions, logs), the jobs' cwd
    autoscaling.json         the fake autoscaling cluster's config (start_fake_autoscaling_cluster)
    mlflow.log, mlflow/      tracking server output; mlflow.db (SQLite) and artifacts/
    s3.log                   moto's output (its buckets live in memory only)

Only the standard library here: this file must run before anything of the project is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVICE_NAMES = ("ray", "mlflow", "s3")
DEFAULT_STATE_DIR = Path(".local-services")
DEFAULT_RAY_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_S3_PORT = 5002  # not 5000: that is MLflow's
DEFAULT_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0

# Ray puts unix sockets at {temp_dir}/session_<date>_<time>_<pid>/sockets/plasma_store, and a
# socket path may not exceed 107 bytes: the session part takes about 64, so the temp dir may take 40.
_RAY_TEMP_DIR_MAX = 40
# Read by Ray when it is imported; see start_ray.
_RAY_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# A process's command line must contain this for `stop` to signal it: a stale services.json
# whose process id was reused by an unrelated process must not get that process killed.
_COMMAND_MARKERS = {"ray": "ray start", "mlflow": "mlflow server", "s3": "moto_server"}
# The fake autoscaling cluster (start_fake_autoscaling_cluster): its node types, the object
# store of each node (Ray's default, 30% of the machine's memory per node, would let four nodes
# claim more shared memory than there is; 75 MiB is Ray's minimum), and the key of its record in
# services.json that holds the path of its autoscaling config.
FAKE_HEAD_NODE_TYPE = "ray.head.default"
FAKE_WORKER_NODE_TYPE = "ray.worker.gpu"
_FAKE_OBJECT_STORE_BYTES = 128 * 2**20
_AUTOSCALING_KEY = "autoscaling_config"


class ServiceError(RuntimeError):
    """A service could not be started: the message names its log file and shows its end."""


@dataclasses.dataclass(frozen=True)
class RayHead:
    """A running Ray head.

    `address` (host:port of the GCS) is what `ray.init(address=...)` and worker nodes use;
    `dashboard_url` is what `ray job submit --address` and `JobSubmissionClient` use.
    """

    address: str
    dashboard_url: str

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for clients: RAY_ADDRESS is the dashboard address, which
        `ray job submit` reads. A driver run by hand calls `ray.init(address=head.address)`,
        and needs the loopback switch in its environment before it imports ray (see start_ray).
        """
        return {"RAY_ADDRESS": self.dashboard_url, _RAY_LOOPBACK_SWITCH: "0"}


@dataclasses.dataclass(frozen=True)
class MlflowServer:
    """A running MLflow tracking server; `url` is the tracking URI (artifacts go through it)."""

    url: str

    @property
    def env(self) -> dict[str, str]:
        """Environment variables pointing MLflow clients at this server."""
        return {"MLFLOW_TRACKING_URI": self.url}


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running moto S3 server."""

    endpoint_url: str

    @property
    def env(self) -> dict[str, str]:
        """Environment variables pointing boto3, s3fs and pyarrow at this server."""
        return s3_env(self.endpoint_url)


Service = RayHead | MlflowServer | S3Server
_SERVICE_TYPES: dict[str, type] = {"ray": RayHead, "mlflow": MlflowServer, "s3": S3Server}


# ---------------------------------------------------------------------------------------------
# Starting


def start_ray(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, port: int = DEFAULT_RAY_PORT,
              dashboard_port: int = DEFAULT_DASHBOARD_PORT, num_cpus: int | None = None,
              num_gpus: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> RayHead:
    """Start a one-node Ray cluster on 127.0.0.1 and wait until its job API answers.

    A port of 0 picks a free one. `num_cpus` defaults to the machine's cores; `num_gpus` to what
    Ray detects. The head runs with RAY_AUTH_MODE=disabled because it is a throwaway cluster on
    the loopback interface: a real cluster keeps Ray's token authentication on.
    """
    state = _state_dir(state_dir)
    existing = _reuse_ray(state, autoscaling=False)
    if existing is not None:
        return existing
    args, env, head, ray_dir = _ray_head_command(state, port, dashboard_port)
    args += ["--num-cpus", str(num_cpus or os.cpu_count() or 1)]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    _launch(state, "ray", args, head, f"{head.dashboard_url}/api/jobs/", timeout, env=env,
            cwd=ray_dir)
    return head


def fake_autoscaling_config(gcs_address: str, *, worker_cpus: float = 1, worker_gpus: float = 1,
                            max_workers: int = 3, idle_timeout_minutes: float = 1.0) -> dict:
    """The autoscaling config of `start_fake_autoscaling_cluster`: Ray's `fake_multinode`
    provider, a head with no CPU and no GPU, and one worker type of `worker_cpus` CPUs and
    `worker_gpus` (fake) GPUs, from 0 to `max_workers` nodes, as in infra/aws/cluster.yaml.

    Ray's wheel lacks the example config that `ray.cluster_utils.AutoscalingCluster` starts
    from, and the monitor reads this file as it is (no defaults filled in): every key that the
    autoscaler reads is here, the ones a cloud config needs for SSH and setup left empty. That
    missing file also rules out Ray's autoscaler v2 (the default on KubeRay), which fills in
    defaults from it: this cluster runs v1, as the cluster launcher (infra/aws) does.
    """
    return {
        "cluster_name": "fake-autoscaling",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            # Where the worker nodes it starts connect; without it, the machine's network
            # address and port 6379.
            "gcs_address": gcs_address,
            # No "launch_multiple": the provider then starts one node per launch whatever the
            # count asked, and the autoscaler asks again for the rest a second later. With it,
            # v1 starts a node past max_workers (and then terminates it).
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,  # no SSH, no setup commands: nodes start as processes
            "disable_launch_config_check": True,
        },
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "available_node_types": {
            # The autoscaler cannot set the head's resources: they must match `ray start`'s.
            FAKE_HEAD_NODE_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            FAKE_WORKER_NODE_TYPE: {
                "resources": {"CPU": worker_cpus, "GPU": worker_gpus,
                              "object_store_memory": _FAKE_OBJECT_STORE_BYTES},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def start_fake_autoscaling_cluster(
        state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, worker_cpus: float = 1,
        worker_gpus: float = 1, max_workers: int = 3, port: int = 0, dashboard_port: int = 0,
        idle_timeout_minutes: float = 1.0, timeout: float = DEFAULT_TIMEOUT) -> RayHead:
    """Start an autoscaling Ray cluster on 127.0.0.1 that begins as our cloud clusters do: a
    head with no CPU and no GPU, and no worker node until a demand for CPUs or GPUs comes.

    Ray's autoscaler then starts worker nodes of `worker_cpus` CPUs and `worker_gpus` GPUs (up
    to `max_workers`) as processes on this machine (Ray's `fake_multinode` provider), and stops
    them after `idle_timeout_minutes` idle. Their GPUs are fake: Ray assigns GPU ids and sets
    CUDA_VISIBLE_DEVICES, with no device behind them. Waits until the job API answers and the
    autoscaler has reported once. Stop it with `stop(["ray"], state_dir)`, which stops its
    worker nodes too. A port of 0 picks a free one.
    """
    state = _state_dir(state_dir)
    existing = _reuse_ray(state, autoscaling=True)
    if existing is not None:
        return existing
    args, env, head, ray_dir = _ray_head_command(state, port, dashboard_port)
    config = state / "autoscaling.json"
    config.write_text(json.dumps(fake_autoscaling_config(
        head.address, worker_cpus=worker_cpus, worker_gpus=worker_gpus, max_workers=max_workers,
        idle_timeout_minutes=idle_timeout_minutes), indent=2) + "\n")
    args += ["--num-cpus", "0", "--num-gpus", "0", f"--autoscaling-config={config}",
             "--object-store-memory", str(_FAKE_OBJECT_STORE_BYTES)]
    env["RAY_FAKE_CLUSTER"] = "1"  # the fake provider refuses to start without it
    # The autoscaler's period: 1 s, as ray.cluster_utils.AutoscalingCluster has it (Ray: 5 s).
    env["AUTOSCALER_UPDATE_INTERVAL_S"] = "1"
    try:
        _launch(state, "ray", args, head, f"{head.dashboard_url}/api/jobs/", timeout, env=env,
                cwd=ray_dir, ready=lambda: _autoscaler_reported(head.dashboard_url),
                extra={_AUTOSCALING_KEY: str(config)})
    except ServiceError as error:
        # The autoscaler's own errors (a config it refuses) are in its log, not in ray.log.
        raise ServiceError(f"{error}\n{_log_tail(ray_dir / 'session_latest/logs/monitor.log')}"
                           ) from None
    return head


def _ray_head_command(state: Path, port: int, dashboard_port: int
                      ) -> tuple[list[str], dict[str, str], RayHead, Path]:
    """`ray start` arguments and environment for a head on 127.0.0.1, its RayHead, its cwd."""
    # Distinct free ports: for ports given as 0, and for two that Ray would otherwise fix
    # (10001, 52365), which would clash with a second local cluster.
    spare_gcs, spare_dashboard, client_port, agent_port = _free_ports(4)
    port = _claim_port(port, "ray") if port else spare_gcs
    dashboard_port = (_claim_port(dashboard_port, "ray dashboard") if dashboard_port
                      else spare_dashboard)
    ray_dir = state / "ray"
    ray_dir.mkdir(exist_ok=True)
    args = [
        _executable("ray"), "start", "--head",
        # --block keeps `ray start` in the foreground as the parent of every Ray process, so
        # stopping signals this cluster only; `ray stop` would stop every Ray on the machine.
        "--block",
        "--node-ip-address", HOST, "--port", str(port),
        "--dashboard-host", HOST, "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(client_port),
        "--dashboard-agent-listen-port", str(agent_port),
        "--disable-usage-stats",
    ]
    if len(str(ray_dir)) <= _RAY_TEMP_DIR_MAX:
        args += ["--temp-dir", str(ray_dir)]
    else:
        logger.warning("state dir path too long for Ray's unix sockets: Ray keeps its sessions "
                       "in its default temp dir instead of %s", ray_dir)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # left over from `eval "$(... env)"`; the head must not join it
    env["RAY_AUTH_MODE"] = "disabled"
    # Ray turns 127.0.0.1 (as node IP, and in addresses to connect to) into the machine's
    # network address, and then listens on every interface; this switch (meant for one-node
    # macOS/Windows clusters) keeps it on loopback. It rules out adding nodes from other
    # machines, which a local cluster does not need; the fake autoscaler's nodes, processes on
    # this machine, inherit it and take 127.0.0.1 too. Drivers outside the cluster need it too
    # (RayHead.env).
    env[_RAY_LOOPBACK_SWITCH] = "0"
    # `python` in a job's entrypoint then means this interpreter, the one with Ray in it.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    head = RayHead(address=f"{HOST}:{port}", dashboard_url=f"http://{HOST}:{dashboard_port}")
    # A job without a working_dir runs in the cwd: ray/ holds no folder that shadows a package
    # (the state dir itself holds mlflow/).
    return args, env, head, ray_dir


def _reuse_ray(state: Path, *, autoscaling: bool) -> RayHead | None:
    record = _read_records(state).get("ray")
    if record is not None and bool(record.get(_AUTOSCALING_KEY)) != autoscaling:
        if _is_running(record["pid"], "ray"):
            kind = "an autoscaling" if record.get(_AUTOSCALING_KEY) else "a one-node"
            raise ServiceError(f"{kind} Ray cluster already runs in {state}: stop it, or use "
                               "another state dir")
    return _reuse(state, "ray")


def _autoscaler_reported(dashboard_url: str) -> bool:
    # The dashboard relays the autoscaler's last report, absent until its first update.
    try:
        status = json.loads(_fetch(f"{dashboard_url}/api/cluster_status"))
        return status["data"]["clusterStatus"].get("autoscalerReport") is not None
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def start_mlflow(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *,
                 port: int = DEFAULT_MLFLOW_PORT, timeout: float = DEFAULT_TIMEOUT) -> MlflowServer:
    """Start an MLflow tracking server on 127.0.0.1 (SQLite runs, proxied artifacts) and wait
    until /health answers. A port of 0 picks a free one."""
    state = _state_dir(state_dir)
    existing = _reuse(state, "mlflow")
    if existing is not None:
        return existing
    port = _claim_port(port, "mlflow")
    data = state / "mlflow"
    data.mkdir(exist_ok=True)
    args = [
        _executable("mlflow"), "server", "--host", HOST, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}",
        # Clients upload artifacts over HTTP; workers need no access to this folder.
        "--artifacts-destination", str(data / "artifacts"),
        "--workers", "1",
    ]
    # Server-side jobs (GenAI features) would add seven worker processes and triple the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = MlflowServer(url=f"http://{HOST}:{port}")
    _launch(state, "mlflow", args, server, f"{server.url}/health", timeout, env=env, cwd=data)
    return server


def start_s3(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, port: int = DEFAULT_S3_PORT,
             timeout: float = DEFAULT_TIMEOUT) -> S3Server:
    """Start moto's S3 server on 127.0.0.1 and wait until it answers. It starts with no buckets
    (see `make_bucket`) and keeps them in memory only. A port of 0 picks a free one."""
    state = _state_dir(state_dir)
    existing = _reuse(state, "s3")
    if existing is not None:
        return existing
    port = _claim_port(port, "s3")
    args = [_executable("moto_server"), "-H", HOST, "-p", str(port)]
    server = S3Server(endpoint_url=f"http://{HOST}:{port}")
    # GET / is S3's ListBuckets.
    _launch(state, "s3", args, server, f"{server.endpoint_url}/", timeout, cwd=state)
    return server


def start(names: Iterable[str] = SERVICE_NAMES, state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
          *, ray_port: int = DEFAULT_RAY_PORT, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
          mlflow_port: int = DEFAULT_MLFLOW_PORT, s3_port: int = DEFAULT_S3_PORT,
          num_cpus: int | None = None, num_gpus: int | None = None,
          timeout: float = DEFAULT_TIMEOUT) -> dict[str, Service]:
    """Start the named services (already running ones are reused); returns them by name."""
    started: dict[str, Service] = {}
    for name in _check_names(names):
        if name == "ray":
            started[name] = start_ray(state_dir, port=ray_port, dashboard_port=dashboard_port,
                                      num_cpus=num_cpus, num_gpus=num_gpus, timeout=timeout)
        elif name == "mlflow":
            started[name] = start_mlflow(state_dir, port=mlflow_port, timeout=timeout)
        else:
            started[name] = start_s3(state_dir, port=s3_port, timeout=timeout)
    return started


# ---------------------------------------------------------------------------------------------
# Stopping and looking


def stop(names: Iterable[str] = SERVICE_NAMES, state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
         *, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop the named services started in `state_dir`; returns the names that were running.

    Each service's process group gets SIGTERM, and SIGKILL after `timeout` seconds. For Ray only
    the `ray start --block` process gets the SIGTERM: it shuts the other Ray processes down in
    order, and Ray processes signalled all at once wait for each other before giving up. This
    stops only the Ray started here, unlike `ray stop`, which stops every Ray on the machine.
    A fake autoscaling cluster's worker nodes are stopped first (see
    `_terminate_autoscaling_cluster`).
    """
    state = Path(state_dir)
    stopped = []
    for name in _check_names(names):
        record = _read_records(state).get(name)
        if record is None:
            continue
        pid = record["pid"]
        if _is_running(pid, name):
            logger.info("stopping %s (process group %d)", name, pid)
            if record.get(_AUTOSCALING_KEY):
                _terminate_autoscaling_cluster(pid, timeout)
            else:
                _terminate(pid, timeout, leader_only=name == "ray")
            stopped.append(name)
        _forget(state, name)
    return stopped


def health(name: str, state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *,
           timeout: float = 30.0) -> str | None:
    """None when service `name` started in `state_dir` is alive and answers its readiness URL
    within `timeout` seconds (a loaded machine may take a while); otherwise what is wrong, with
    the last lines of its log."""
    _check_names([name])
    record = _read_records(Path(state_dir)).get(name)
    if record is None:
        return f"{name} is not recorded in {state_dir}"
    log = Path(record["log"])
    deadline = time.monotonic() + timeout
    while True:
        if not _is_running(record["pid"], name):
            return f"{name} (pid {record['pid']}) is not running; {_log_tail(log)}"
        if record.get("ready_url") is None or _answers(record["ready_url"]):
            return None  # records written before readiness URLs were kept: alive is all we know
        if time.monotonic() > deadline:
            return (f"{name} (pid {record['pid']}) runs but did not answer {record['ready_url']} "
                    f"within {timeout:.0f} s; {_log_tail(log)}")
        time.sleep(0.5)


def recorded(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict[str, Service]:
    """The services recorded in `state_dir`/services.json, running or not."""
    return {name: _from_record(name, record)
            for name, record in _read_records(Path(state_dir)).items()}


def running(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict[str, Service]:
    """The services recorded in `state_dir` whose process is still alive."""
    records = _read_records(Path(state_dir))
    return {name: _from_record(name, record) for name, record in records.items()
            if _is_running(record["pid"], name)}


def service_env(services: Mapping[str, Service]) -> dict[str, str]:
    """Environment variables that point clients at `services` (as `recorded` returns them)."""
    env = {}
    for service in services.values():
        env.update(service.env)
    return env


def s3_env(endpoint_url: str) -> dict[str, str]:
    """Environment for boto3, s3fs and pyarrow to use the S3 server at `endpoint_url`.

    The credentials are fake: moto accepts any, and real ones must never reach a test server.
    """
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def make_bucket(endpoint_url: str, name: str) -> None:
    """Create bucket `name` on the S3 server at `endpoint_url` (moto starts with none)."""
    import boto3  # lazily: the rest of this file needs only the standard library

    credentials = s3_env(endpoint_url)
    client = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=credentials["AWS_DEFAULT_REGION"],
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    # All sockets open at once, so that the ports are distinct.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------------------------------
# Processes and state


def _state_dir(state_dir: str | os.PathLike) -> Path:
    # Absolute: the paths go to processes that run elsewhere (cwd) and into services.json.
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Local services' state (infra/local/services.py)\n*\n")
    return state


def _executable(name: str) -> str:
    # The one next to this interpreter first: it belongs to the environment running this file.
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"`{name}` not found next to {sys.executable} nor on PATH: "
                           "install the project with its test extras (pip install -e '.[test]')")
    return found


def _claim_port(port: int, what: str) -> int:
    if port == 0:
        return free_port()
    # Checked before starting because another server on the port would answer the readiness check.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a server stopped a moment ago leaves connections in
        # TIME_WAIT for a minute, which must not count as in use; a listening socket still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ServiceError(f"port {port} on {HOST} for {what} is in use: stop what uses it, "
                               "or choose another port (0 picks a free one)") from None
    return port


def _reuse(state: Path, name: str) -> Service | None:
    record = _read_records(state).get(name)
    if record is None:
        return None
    if _is_running(record["pid"], name):
        service = _from_record(name, record)
        logger.info("%s is already running in %s: reusing it (%s)", name, state, service)
        return service
    _forget(state, name)
    return None


def _launch(state: Path, name: str, args: list[str], service: Service, ready_url: str,
            timeout: float, *, env: Mapping[str, str] | None = None, cwd: Path,
            ready: Callable[[], bool] | None = None, extra: Mapping[str, str] | None = None
            ) -> None:
    """Start `args` in the background and wait until `ready_url` answers (and `ready()` says
    so); then record the service in services.json, with `extra` in its record."""
    log = state / f"{name}.log"
    logger.info("starting %s: %s", name, shlex.join(args))
    with open(log, "ab") as out:
        # Its own session: a process group to stop as a whole, and no Ctrl-C from our terminal.
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    started = time.monotonic()
    try:
        _wait_ready(name, process, ready_url, log, timeout, ready)
    except BaseException:
        if extra and _AUTOSCALING_KEY in extra:
            _terminate_autoscaling_cluster(process.pid, STOP_TIMEOUT)
        else:
            _terminate(process.pid, STOP_TIMEOUT, leader_only=name == "ray")
        raise
    records = _read_records(state)
    records[name] = {**dataclasses.asdict(service), "pid": process.pid, "log": str(log),
                     "ready_url": ready_url, **(extra or {})}
    _write_records(state, records)
    logger.info("%s is up after %.1f s: %s", name, time.monotonic() - started, service)


def _wait_ready(name: str, process: subprocess.Popen, url: str, log: Path,
                timeout: float, ready: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServiceError(f"{name} exited with status {process.returncode} while starting; "
                               f"{_log_tail(log)}")
        if _answers(url) and (ready is None or ready()):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} did not answer {url} within {timeout:.0f} s; "
                               f"{_log_tail(log)}")
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        with _open(url) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _fetch(url: str) -> bytes:
    with _open(url) as response:
        return response.read()


def _open(url: str):
    # No proxy: an HTTP(S)_PROXY from the environment must not see requests for 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(url, timeout=5)


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"no log at {log}"
    return f"last lines of {log}:\n" + "\n".join(text)


def _is_running(pid: int, name: str) -> bool:
    if not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return True  # no /proc (macOS): trust the process id
    return _COMMAND_MARKERS[name] in command


def _alive(pid: int) -> bool:
    try:
        # Reaps it when it is our own child that has exited (fixtures start and stop in one
        # process): a zombie would otherwise look alive.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    _alive(pgid)  # reap the leader if it is our child
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, timeout: float, *, leader_only: bool = False) -> None:
    """SIGTERM (to the leader, or to its whole process group), then SIGKILL to the group."""
    try:
        if leader_only:
            os.kill(pid, signal.SIGTERM)
        else:
            os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if _wait_gone(pid, timeout):
        return
    logger.warning("process group %d still alive %.0f s after SIGTERM: sending SIGKILL",
                   pid, timeout)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, 10.0):
        logger.warning("process group %d survived SIGKILL", pid)


def _terminate_autoscaling_cluster(pid: int, timeout: float) -> None:
    """Stop a fake autoscaling cluster whose `ray start --block` process is `pid`.

    Its provider starts each worker node's processes (a raylet, which starts the node's agents
    and workers, and a log monitor) from the autoscaler's monitor: they are in the head's
    process group but not under `ray start`, whose shutdown leaves them running, and once the
    head is gone their agents wait for it and ignore SIGTERM for a long while. So, while the
    head still runs, the monitor (which would start nodes again for a pending demand) and the
    processes it started get SIGTERM first; then the head is stopped as `stop` does, and
    whatever is left gets SIGKILL.
    """
    members = _group_members(pid)  # empty without /proc: the final SIGKILL does it all
    monitors = {member for member, _, command in members
                if "autoscaler/_private/monitor.py" in command}
    nodes = {member for member, parent, _ in members if parent in monitors}
    for member in monitors | nodes:
        try:
            os.kill(member, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and nodes & {member for member, _, _ in _group_members(pid)}:
        time.sleep(0.2)
    _terminate(pid, max(deadline - time.monotonic(), 5.0), leader_only=True)


def _group_members(pgid: int) -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of each live process in group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue  # gone meanwhile
        # After the command name in parentheses (which may hold spaces): state, ppid, pgrp.
        state, parent, group = stat[stat.rindex(")") + 2:].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append((int(entry.name), int(parent), command))
    return members


def _wait_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _check_names(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [name for name in names if name not in SERVICE_NAMES]
    if unknown:
        raise ValueError(f"unknown service {', '.join(unknown)}; choose from "
                         f"{', '.join(SERVICE_NAMES)}")
    return names


def _records_path(state: Path) -> Path:
    return state / "services.json"


def _read_records(state: Path) -> dict[str, dict]:
    try:
        return json.loads(_records_path(state).read_text())
    except FileNotFoundError:
        return {}


def _write_records(state: Path, records: dict[str, dict]) -> None:
    path = _records_path(state)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(temporary, path)  # whole or absent, for a concurrent `env` or `status`


def _forget(state: Path, name: str) -> None:
    records = _read_records(state)
    if records.pop(name, None) is not None:
        _write_records(state, records)


def _from_record(name: str, record: Mapping) -> Service:
    cls = _SERVICE_TYPES[name]
    return cls(**{field.name: record[field.name] for field in dataclasses.fields(cls)})


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="where pid records, logs and data live (default: %(default)s)")
    names = argparse.ArgumentParser(add_help=False)
    names.add_argument("services", nargs="*", metavar="SERVICE",
                       help=f"any of {', '.join(SERVICE_NAMES)} (default: all)")

    parser = argparse.ArgumentParser(
        prog="services.py", description="Local Ray, MLflow and S3 (moto) services on 127.0.0.1.")
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", parents=[common, names],
                                       help="start services (already running ones are reused)")
    for flag, default in (("--ray-port", DEFAULT_RAY_PORT),
                          ("--dashboard-port", DEFAULT_DASHBOARD_PORT),
                          ("--mlflow-port", DEFAULT_MLFLOW_PORT), ("--s3-port", DEFAULT_S3_PORT)):
        start_parser.add_argument(flag, type=int, default=default,
                                  help="0 picks a free port (default: %(default)s)")
    start_parser.add_argument("--num-cpus", type=int, default=None,
                              help="CPUs the Ray head offers (default: all cores)")
    start_parser.add_argument("--num-gpus", type=int, default=None,
                              help="GPUs the Ray head offers (default: as Ray detects)")
    start_parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                              help="seconds to wait for each service (default: %(default)s)")
    commands.add_parser("stop", parents=[common, names], help="stop services")
    commands.add_parser("status", parents=[common], help="show what runs where")
    commands.add_parser("env", parents=[common],
                        help="print `export` lines for a shell to eval")
    args = parser.parse_args(argv)
    services = getattr(args, "services", None)
    if services is not None:
        try:
            args.services = _check_names(services) or list(SERVICE_NAMES)
        except ValueError as error:
            parser.error(str(error))
    return args


def format_env(env: Mapping[str, str]) -> str:
    """`export NAME=value` lines, quoted for a POSIX shell."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def _describe(service: Service) -> str:
    if isinstance(service, RayHead):
        return f"GCS {service.address}, dashboard and job API {service.dashboard_url}"
    if isinstance(service, MlflowServer):
        return f"tracking URI {service.url}"
    return f"endpoint {service.endpoint_url} (fake credentials, see `env`)"


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    state = args.state_dir
    if args.command == "start":
        try:
            services = start(args.services, state, ray_port=args.ray_port,
                             dashboard_port=args.dashboard_port, mlflow_port=args.mlflow_port,
                             s3_port=args.s3_port, num_cpus=args.num_cpus,
                             num_gpus=args.num_gpus, timeout=args.timeout)
        except ServiceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for name, service in services.items():
            print(f"{name:7} {_describe(service)}")
        state_flag = "" if state == DEFAULT_STATE_DIR else f" --state-dir {shlex.quote(str(state))}"
        print(f"state and logs in {state}/\n"
              f'to use them from this shell: eval "$(python {sys.argv[0]} env{state_flag})"')
    elif args.command == "stop":
        stopped = stop(args.services, state)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    elif args.command == "status":
        records = _read_records(Path(state))
        alive = running(state)
        for name in SERVICE_NAMES:
            if name in alive:
                print(f"{name:7} running  {_describe(alive[name])}  "
                      f"(pid {records[name]['pid']}, log {records[name]['log']})")
            else:
                print(f"{name:7} stopped")
    else:
        services = recorded(state)
        if not services:
            print(f"error: no services recorded in {state}: run `start` first", file=sys.stderr)
            return 1
        for name in set(services) - set(running(state)):
            print(f"warning: {name} is recorded but not running", file=sys.stderr)
        sys.stdout.write(format_env(service_env(services)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
