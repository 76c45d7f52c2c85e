"""What the jobs' drivers share: connecting to Ray, sizing the tasks, and streaming one task per
item through the cluster with a bounded number in flight and a progress display."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.results import Status
from singan.errors import one_line

ROOT = Path(__file__).resolve().parents[1]


def connect(verbose: bool) -> dict:
    """Join the cluster of `ray job submit` (RAY_ADDRESS), or start a local Ray; its resources."""
    if not os.environ.get("RAY_ADDRESS"):
        # The local Ray of a direct run listens on loopback only. Ray reads this when imported;
        # without it, it binds to the machine's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    start = time.perf_counter()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=verbose)
        else:
            # The project importable by the local workers, whatever is installed.
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
                     log_to_driver=verbose, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    print(f"Ray ready in {time.perf_counter() - start:.1f} s")
    return ray.cluster_resources()


def placement(resources: dict, gpus_per_task: float, cpus_per_task: float,
              what: str = "trainings") -> tuple[float, int]:
    """(GPUs per task, tasks that fit at once). GPU requests fall back to CPU on a cluster
    without GPUs."""
    gpus = gpus_per_task
    if gpus > 0 and resources.get("GPU", 0) == 0:
        print(f"no GPU in the Ray cluster: {what} run on CPU")
        gpus = 0
    per_gpu = resources.get("GPU", 0) / gpus if gpus else float("inf")
    slots = max(1, int(min(resources.get("CPU", 1) / cpus_per_task, per_gpu)))
    print(f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs, {slots} "
          f"{what} at a time")
    return gpus, slots


def stream(submit: Callable[[Any], Any], items: Iterable, *, max_in_flight: int,
           on_crash: Callable[[Any, Exception], Any], progress: Progress,
           tick: Callable[[], None] | None = None) -> list:
    """Submit `submit(item)` for each item (an ObjectRef each), at most `max_in_flight` at once,
    and collect the results as they finish (ray.wait). A task that raised through Ray (retries
    exhausted, worker lost) becomes `on_crash(item, error)`. A task whose result is a list (a
    bucket of images) gives one result per element. `tick()` runs at least every 5 seconds
    (the driver's heartbeat)."""
    import ray

    results = []
    queue = iter(items)
    in_flight: dict = {}
    while True:
        # Top up, counting before each submit: a wait that timed out comes back here with
        # nothing collected, and must not add a task (one per 5 s timeout, unbounded).
        for item in itertools.islice(queue, max(1, max_in_flight) - len(in_flight)):
            in_flight[submit(item)] = item
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
                results.append(one)
                progress.finished(one, len(in_flight))
        progress.show(len(in_flight))
        if tick is not None:
            tick()
    progress.close()
    return results


def crash_reason(err: Exception) -> str:
    """One line for a task that raised through Ray."""
    cause = getattr(err, "cause", None) or err
    if type(err).__name__ in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError"):
        return f"the worker died ({type(err).__name__}) on every attempt"
    return one_line(cause)


class Progress:
    """The driver's view: a bar (done, skipped, failed, running, ETA) on a terminal; in a log
    (`ray job logs`, CI) one line per finished item instead of a redrawn bar. `describe(result)`
    gives (status, line)."""

    def __init__(self, total: int, slots: int, describe: Callable[[Any], tuple[str, str]],
                 unit: str = "img"):
        from tqdm import tqdm

        self.total, self.slots, self.describe = total, slots, describe
        self.start = time.perf_counter()
        self.counts = {status: 0 for status in Status}
        self.tty = sys.stdout.isatty()
        self.bar = tqdm(total=total, unit=unit, desc="images", dynamic_ncols=True,
                        disable=not self.tty)

    def finished(self, result: Any, in_flight: int) -> None:
        status, line = self.describe(result)
        self.counts[status] += 1
        if self.tty:
            if status == Status.FAILED:
                self.bar.write(line)
            self.bar.update(1)
        else:
            count = sum(self.counts.values())
            eta = (time.perf_counter() - self.start) / count * (self.total - count)
            print(f"[{count}/{self.total}] {line} | {self.summary(in_flight)}, ETA {eta:.0f} s",
                  flush=True)

    def summary(self, in_flight: int) -> str:
        running = min(in_flight, self.slots)
        return ", ".join(f"{k} {v}" for k, v in {**self.counts, "running": running}.items())

    def show(self, in_flight: int) -> None:
        if self.tty:
            self.bar.set_postfix_str(self.summary(in_flight), refresh=True)

    def close(self) -> None:
        self.bar.close()
