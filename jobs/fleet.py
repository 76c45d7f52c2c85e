"""What the jobs' drivers share: connecting to Ray, asking it for what the user asked for while
the cluster grows and shrinks, and streaming Ray tasks through it with a bounded number in
flight and a progress display.

Placement is never frozen at the start: an autoscaling cluster (infra/k8s, infra/aws) starts with
a head that has no CPU for tasks and no GPU at all, and GPU nodes join as the autoscaler sees
tasks waiting for GPUs. So tasks ask for the GPUs the user asked for whether or not a GPU has
joined yet; the number in flight follows the cluster's size, re-read as the job runs, and never
falls below DEMAND tasks, so that the autoscaler sees enough demand to add nodes; and each task
trains on the device Ray gave it (`ray.get_gpu_ids()`). The only fall-back to CPU is a local Ray
that the job started itself on a machine without GPUs, said in one line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline import tracking
from singan.errors import one_line

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# Tasks in flight however small the cluster is now: what an autoscaler sees as demand.
DEMAND = 32
RESOURCES_EVERY = 10.0  # seconds between two reads of the cluster's resources
WAITING_NOTICE = 120.0  # seconds with tasks waiting and none running before the job says so


def add_tracking_options(p: argparse.ArgumentParser, experiment_help: str) -> None:
    """--tracking-uri, --no-tracking and --experiment, as every job takes them: MLflow's own
    variables are the defaults, then a local sqlite database (tracking_target)."""
    p.add_argument("--tracking-uri", metavar="URL", default=tracking.default_tracking_uri(),
                   help="MLflow tracking server (default: $MLFLOW_TRACKING_URI, else a local "
                        "sqlite database, ./mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not track to MLflow at all")
    p.add_argument("--experiment", default=tracking.default_experiment(), metavar="NAME",
                   help=f"{experiment_help} (default: $MLFLOW_EXPERIMENT_NAME, else "
                        f"{tracking.DEFAULT_EXPERIMENT})")


def tracking_target(args: argparse.Namespace) -> str | None:
    """The tracking URI a job uses: --tracking-uri (or $MLFLOW_TRACKING_URI), else a local
    sqlite database; None with --no-tracking."""
    if args.no_tracking:
        return None
    return args.tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"


class Renamed(argparse.Action):
    """An option's old name: still works, with a one-line notice of the new one."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--" + self.dest.replace("_", "-")
        print(f"{option_string} is now {new} (it is per Ray task)", file=sys.stderr)
        setattr(namespace, self.dest, values)


# glibc gives each thread that allocates its own malloc arena, up to 8 per core, and the freed
# memory of the driver's many small objects (a result per image, decoded on Ray's threads,
# spooled on the main one) stays spread over them: measured with the training job's driver on a
# 150,000-image manifest, RSS grew by 1.9 KB per image (450 MiB at 10k images, 709 at 150k: 2.4
# GB projected at 1M); with 2 arenas it stayed at 450-462 MiB from 20k to 60k images.
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> bool:
    """Limit this process to MALLOC_ARENAS malloc arenas (glibc; elsewhere nothing), unless
    MALLOC_ARENA_MAX says otherwise; whether the limit was set. A driver calls it first thing, before
    Arrow's and Ray's threads allocate (workers do not: torch's threads allocate there)."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


def connect(verbose: bool) -> bool:
    """Join the cluster of `ray job submit` (RAY_ADDRESS), or start a local Ray; whether the job
    started its own (local) Ray."""
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        # The local Ray of a direct run listens on loopback only. Ray reads this when imported;
        # without it, it binds to the machine's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    global _DASHBOARD
    start = time.perf_counter()
    if not ray.is_initialized():
        if local:
            # The project importable by the local workers, whatever is installed.
            context = ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
                               log_to_driver=verbose,
                               runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        else:
            context = ray.init(log_to_driver=verbose)
        _DASHBOARD = getattr(context, "dashboard_url", None) or None
    print(f"Ray ready in {time.perf_counter() - start:.1f} s")
    return local


_DASHBOARD: str | None = None  # host:port of the Ray dashboard, when connect() learnt it
# What `ray job submit` gives its driver: the job's config, with the submission id in it.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ray_tags() -> dict[str, str]:
    """MLflow tags that tie a job's runs to Ray (after connect): the Ray job id, the submission
    id of `ray job submit` (`ray job logs ID`), and the dashboard's page of the job."""
    import ray

    tags = {"ray.job_id": ray.get_runtime_context().get_job_id()}
    try:
        config = json.loads(os.environ.get(JOB_CONFIG_VARIABLE) or "{}")
    except ValueError:
        config = {}
    submission = (config.get("metadata") or {}).get("job_submission_id")
    if submission:
        tags["ray.submission_id"] = submission
    if _DASHBOARD:
        page = f"#/jobs/{submission}" if submission else "#/jobs"
        tags["ray.dashboard"] = f"http://{_DASHBOARD.removeprefix('http://')}/{page}"
    return tags


class Placement:
    """What each task asks Ray for, and how many tasks the cluster runs at once, re-read from
    `ray.cluster_resources()` at most every RESOURCES_EVERY seconds as nodes join and leave.

    `gpus_per_task` is what the user asked for. It is kept even when no GPU has joined yet (an
    autoscaler adds GPU nodes for waiting tasks), except on a local Ray the job started itself on
    a machine without GPUs, where tasks train on CPU (one line says so). `max_in_flight`: a
    fixed number of tasks in flight; by default twice what runs at once, and at least DEMAND.
    """

    def __init__(self, gpus_per_task: float, cpus_per_task: float, *, local: bool,
                 max_in_flight: int | None = None, what: str = "trainings"):
        self.cpus_per_task, self.fixed_window, self.what = cpus_per_task, max_in_flight, what
        self.gpus_per_task = gpus_per_task
        self._read_at = -float("inf")
        self.resources: dict = {}
        self.refresh()
        if gpus_per_task > 0 and self.resources.get("GPU", 0) == 0:
            if local:
                print(f"no GPU on this machine: the local Ray runs the {what} on CPU")
                self.gpus_per_task = 0.0
            else:
                print(f"no GPU in the Ray cluster yet: each task asks for {gpus_per_task:g} GPU "
                      "and waits for one (an autoscaler adds GPU nodes for them); "
                      "--gpus-per-task 0 runs on CPU instead")
        print(f"Ray: {self.resources.get('CPU', 0):g} CPUs, {self.resources.get('GPU', 0):g} "
              f"GPUs now, {self.slots} {what} at a time")

    def refresh(self) -> None:
        """Read the cluster's resources again, at most every RESOURCES_EVERY seconds."""
        import ray

        if time.monotonic() - self._read_at < RESOURCES_EVERY:
            return
        first = self._read_at == -float("inf")
        self._read_at = time.monotonic()
        before = _size(self.resources)
        self.resources = ray.cluster_resources()
        if not first and _size(self.resources) != before:
            print(f"Ray: the cluster now has {self.resources.get('CPU', 0):g} CPUs and "
                  f"{self.resources.get('GPU', 0):g} GPUs: {self.slots} {self.what} at a time",
                  flush=True)

    @property
    def slots(self) -> int:
        """Tasks the cluster can run at once now (0 while none fits, e.g. no GPU yet)."""
        fits = self.resources.get("CPU", 0) / self.cpus_per_task if self.cpus_per_task else 1e9
        if self.gpus_per_task:
            fits = min(fits, self.resources.get("GPU", 0) / self.gpus_per_task)
        return int(fits)

    def window(self) -> int:
        """Tasks to keep in flight now."""
        if self.fixed_window is not None:
            return self.fixed_window
        self.refresh()
        return max(2 * self.slots, DEMAND)

    def options(self) -> dict:
        """The resources a task asks Ray for."""
        return {"num_gpus": self.gpus_per_task, "num_cpus": self.cpus_per_task}


def _size(resources: dict) -> tuple[float, float]:
    return resources.get("CPU", 0), resources.get("GPU", 0)


def run_on_worker(fn: Callable, *args: Any) -> Any:
    """What a job's Ray task runs: `fn(*args, device=..., node=...)` on the device Ray assigned
    the task (CUDA when it got a GPU, else CPU) and naming the Ray node it ran on."""
    import ray

    return fn(*args, device=assigned_device(ray.get_gpu_ids()),
              node=ray.get_runtime_context().get_node_id())


def assigned_device(gpu_ids: list) -> str:
    """"cuda" when Ray gave the task GPUs (it shows the task only those: CUDA_VISIBLE_DEVICES), else
    "cpu": Ray does not hide the GPUs from a task that asked for none, and such a task must not
    share GPU 0 with the tasks that reserved it. A task given GPUs that torch cannot see (fake
    GPUs of a test cluster, a CPU build of torch) trains on CPU and says so."""
    if not gpu_ids:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    logger.warning("Ray gave this task GPU %s, but torch sees no CUDA device here: training on "
                   "CPU", ",".join(map(str, gpu_ids)))
    return "cpu"


def stream(submit: Callable[[Any], Any], items: Iterable, *, placement: Placement,
           on_crash: Callable[[Any, Exception], Any], progress: Progress,
           tick: Callable[[], None] | None = None) -> Iterator:
    """Submit `submit(item)` for each item (an ObjectRef each), as many in flight as
    `placement.window()` says at the time, and yield the results as they finish (ray.wait); the
    items are taken from `items` only as the window has room, and nothing is kept once yielded.
    A task that raised through Ray (retries exhausted, worker lost) becomes
    `on_crash(item, error)`. A task whose result is a list (a bucket of images) gives one result
    per element. `tick()` runs at least every 5 seconds (the driver's heartbeat)."""
    import ray

    queue = iter(items)
    in_flight: dict = {}
    exhausted = False
    waiting_since = None
    while True:
        # Top up, counting before each submit: a wait that timed out comes back here with
        # nothing collected, and must not add a task (one per 5 s timeout, unbounded).
        while not exhausted and len(in_flight) < max(1, placement.window()):
            item = next(queue, None)
            if item is None:
                exhausted = True
                break
            in_flight[submit(item)] = item
            progress.submitted(len(item) if isinstance(item, list) else 1)
        if not in_flight:
            break
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
        for ref in ready:
            item = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - retries exhausted or the task crashed
                result = on_crash(item, err)
            for one in result if isinstance(result, list) else [result]:
                progress.finished(one, len(in_flight))
                yield one
        placement.refresh()  # the cluster may have grown or shrunk (at most every 10 s)
        waiting_since = _notice_waiting(placement, in_flight, progress, waiting_since)
        progress.show(len(in_flight))
        if tick is not None:
            tick()
    progress.close()


def _notice_waiting(placement: Placement, in_flight: dict, progress: Progress,
                    since: float | None) -> float | None:
    """Say, once every WAITING_NOTICE seconds, that tasks wait while nothing runs (no node
    fits them yet); the time since when."""
    if progress.any_finished or placement.slots > 0 or not in_flight:
        return None
    now = time.monotonic()
    if since is None:
        return now
    if now - since >= WAITING_NOTICE:
        print(f"{len(in_flight)} tasks have waited {now - since:.0f} s for "
              f"{placement.options()} each; the cluster has {placement.resources.get('CPU', 0):g} "
              f"CPUs and {placement.resources.get('GPU', 0):g} GPUs. An autoscaler may still be "
              "adding nodes; without one, rerun with --gpus-per-task 0 (CPU)", flush=True)
        return now
    return since


def crash_reason(err: Exception) -> str:
    """One line for a task that raised through Ray."""
    cause = getattr(err, "cause", None) or err
    if type(err).__name__ in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError"):
        return f"the worker died ({type(err).__name__}) on every attempt"
    return one_line(cause)


class Progress:
    """The driver's view: a bar (done, skipped, failed, running, ETA) on a terminal; in a log
    (`ray job logs`, CI) one line per finished item instead of a redrawn bar. `describe(result)`
    gives (status, line). `skip(n)` counts items done before (never sent), without a line each.
    """

    def __init__(self, total: int | None, placement: Placement,
                 describe: Callable[[Any], tuple[str, str]], unit: str = "img",
                 started: float | None = None):
        from tqdm import tqdm

        from pipeline.ledger import Status

        self.total, self.placement, self.describe = total, placement, describe
        self.start = time.perf_counter()
        self.started = self.start if started is None else started  # the job's start
        self.counts = {str(status): 0 for status in Status}
        self.in_flight = 0  # items in the tasks submitted and not finished
        self.tasks = 0  # tasks submitted
        self.tty = sys.stdout.isatty()
        self.bar = tqdm(total=total, unit=unit, desc="images", dynamic_ncols=True,
                        disable=not self.tty)
        self.first_submit: float | None = None
        self.first_finish: float | None = None

    @property
    def any_finished(self) -> bool:
        return self.first_finish is not None

    def submitted(self, items: int) -> None:
        self.tasks += 1
        self.in_flight += items
        if self.first_submit is None:
            self.first_submit = time.perf_counter() - self.started
            print(f"first Ray task submitted {self.first_submit:.1f} s after the job started",
                  flush=True)

    def skip(self, count: int) -> None:
        self.counts["skipped"] += count
        self.bar.update(count)

    def finished(self, result: Any, in_flight: int) -> None:
        if self.first_finish is None:
            self.first_finish = time.perf_counter() - self.started
        status, line = self.describe(result)
        self.counts[str(status)] += 1
        self.in_flight -= 1
        if self.tty:
            if status == "failed":
                self.bar.write(line)
            self.bar.update(1)
        else:
            count = sum(self.counts.values())
            if self.total is None:  # not known ahead (a stream of models)
                print(f"[{count}] {line} | {self.summary(in_flight)}", flush=True)
                return
            rate = (time.perf_counter() - self.start) / count
            print(f"[{count}/{self.total}] {line} | {self.summary(in_flight)}, "
                  f"ETA {rate * (self.total - count):.0f} s", flush=True)

    def running(self, tasks: int) -> int:
        """An estimate of the items being worked on: those of the `tasks` in flight, in the
        share of them that the cluster runs at once."""
        if not tasks:
            return 0
        return round(self.in_flight * min(1.0, self.placement.slots / tasks))

    def summary(self, in_flight: int) -> str:
        return ", ".join(f"{k} {v}" for k, v in {**self.counts,
                                                   "running": self.running(in_flight)}.items())

    def show(self, in_flight: int) -> None:
        if self.tty:
            self.bar.set_postfix_str(self.summary(in_flight), refresh=True)

    def close(self) -> None:
        self.bar.close()
