"""The training fleet simulated on this machine: the real driver (jobs/train_manifest.py), a real
local Ray cluster, a real `mlflow server --workers 2` (as infra/k8s runs it) behind a counting
proxy, storage with a delay per call that counts calls by kind (bench/simstore.py), and a
trainer that makes a worker's real storage and MLflow requests and sleeps instead of computing
(bench/fleet_sim.py, given to the job in code only).

    python bench/fleet_scale.py start    --rows 100000,1000000 --stop-after 64
    python bench/fleet_scale.py start    --ray local --delay 0 --rows 1000000 --stop-after 16
    python bench/fleet_scale.py restart  --rows 1000000 --kill-after 2000 --resubmit-stop-after 64
    python bench/fleet_scale.py mlflow   --rows 100000 --images 5000
    python bench/fleet_scale.py evaluate --rows 100000 --job --cpus 16
    python bench/fleet_scale.py compare                   # a real tiny training vs the simulation
    python bench/fleet_scale.py start --before /tmp/before --rows 10000,100000 --cpus 16

(bench/NOTES.md, "Fleet at scale", has the figures and how long each command takes.) Defaults:
20 ms per storage call (--delay), 0.5 s per simulated scale (10 s for mlflow), a Ray head of 2
CPUs and 2 fake GPUs for start, 4 for restart and evaluate, 16 for mlflow (--cpus, --gpus); a
slot trains a bucket of 16 images at once, and on 2 cores the simulated trainings' own client
work (storage, MLflow) is what keeps the CPUs busy.

Scenarios (each prints one JSON and writes it to bench/results/ with --out NAME):
- start: N-row manifests (250 x 250 images with height and width, 1,000 distinct files shared by
  all rows): seconds from the driver process's start to its first Ray task and to its first
  finished image, the storage calls before the first submit by kind, peak tasks in flight, the
  driver's peak RSS (VmHWM; and its RSS every second) and bytes per row, the slope between the N
  given; the job is killed after --stop-after finished images. --ray local: the job starts its
  own Ray (the machine's 2 CPUs, no GPU: 2 tasks of 4 images at once).
- restart: the job is SIGKILLed once --kill-at of its rows are done (or --kill-after images), the
  Ray cluster lives on, and the same job is submitted again: tasks it sends for images the ledger
  listed as done at the kill, images that come back skipped (finished, not yet in the ledger),
  seconds from its start to its first new training, finished images rewritten (mtimes of their
  _SUCCESS and model/config.json).
- mlflow: at least 256 images training at once (16 tasks of 16 on 16 fake GPUs) at the paper
  preset's scales and iterations against the 2-worker server through the proxy: requests per
  image by endpoint, peak requests per second, p50/p99 latency, timeouts and failures, images
  left for replay (`tracking_complete` false in _results.parquet), trainings running at once.
- evaluate: a ledger of N finished images written straight into the store; the LIST calls of
  pipeline.evaluate.trained_image_ids and jobs/sync_tracking.image_ids, and with --job those of
  the real jobs/evaluate_sifid.py driver with a simulated evaluation.
- compare: one tiny real training (tests/conftest.py's tiny config) and its simulation, in one
  process against the real MLflow server: their storage calls by file pattern and their MLflow
  requests by endpoint, side by side.
- --before PATH (start only): a worktree of an older commit (`git worktree add /tmp/before
  8791515`): its driver, with `jobs.train_manifest.train_bucket` replaced by a sleep that returns
  done results (bench/fleet_before.py), the same driver-side figures, the job run to its end.
  --driver-only does the same to today's driver (bench/fleet_sim.sleeping_bucket), for a
  like-for-like comparison (and the driver's memory over a whole job: results, compaction).

Everything listens on 127.0.0.1, in a private folder under /tmp (Ray's sockets want a short path)
that is removed at the end (--keep keeps it); every process started is stopped, also on Ctrl-C.
Internals: `python -m bench.fleet_scale driver ...` is the wrapped driver (it counts from
inside: wrapped fleet.stream and ray.get), `python -m bench.fleet_scale proxy ...` the MLflow
proxy (GET /__stats, POST /__reset).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import simstore  # noqa: E402 - the project root first
from bench.fleet_before import BUCKET_SECONDS_ENV  # noqa: E402

RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
SOURCE_FILES = 1000  # distinct image files shared by all rows of a manifest
SIZE = 250  # px: 250 x 250 plans 11 scales at the paper preset
CLIENT_TIMEOUT = 20.0  # s: MLflow's HTTP timeout in the workers (pipeline.tracking.HTTP_DEFAULTS)
MiB = 2**20


# --- the wrapped driver (runs as its own process) ----------------------------------------------

def driver_main(argv: list[str]) -> int:
    """The job's driver, counting from inside. Modes: new (the job with the simulated trainer),
    driver-only (today's job, train_bucket replaced by a sleep), before (an older commit's job,
    the same; PYTHONPATH puts its worktree first), evaluate (jobs/evaluate_sifid.py with the
    simulated evaluation). Writes --report every second and at the end; with --kill-after K it
    SIGKILLs itself once K images are finished."""
    if "--" in argv:
        split = argv.index("--")
        argv, job_args = argv[:split], argv[split + 1:]
    else:
        job_args = []
    p = argparse.ArgumentParser(prog="fleet_scale.py driver")
    p.add_argument("--report", required=True)
    p.add_argument("--submits", help="file of one line per task submitted: time and ids")
    p.add_argument("--mode", choices=("new", "driver-only", "before", "evaluate"), default="new")
    p.add_argument("--sim", default="{}", help="SimulatedTrainer's arguments (JSON)")
    p.add_argument("--kill-after", type=int)
    args = p.parse_args(argv)

    import ray

    from jobs import fleet

    state = {"started": time.time(), "mode": args.mode, "tasks_submitted": 0,
             "tasks_collected": 0, "peak_tasks_in_flight": 0, "images_submitted": 0,
             "images_finished": 0, "statuses": Counter(), "first_submit": None,
             "first_finish": None, "storage_before_first_submit": None, "exit": None}
    lock = threading.Lock()
    submits = open(args.submits, "a", buffering=1) if args.submits else None  # noqa: SIM115

    def report() -> None:
        with lock:
            values = {**state, "statuses": dict(state["statuses"]), "vm": _vm(os.getpid()),
                      "storage": simstore.snapshot()["kinds"], "time": time.time()}
        simstore.flush()
        text = json.dumps(values)
        with open(args.report + ".tmp", "w") as file:
            file.write(text)
        os.replace(args.report + ".tmp", args.report)

    def reporter() -> None:
        while True:
            time.sleep(1.0)
            report()

    threading.Thread(target=reporter, daemon=True).start()

    original_get = ray.get

    def counted_get(*a, **k):  # fleet.stream calls ray.get once per finished task
        result = original_get(*a, **k)
        with lock:
            state["tasks_collected"] += 1
        return result

    ray.get = counted_get
    original_stream = fleet.stream

    def stream(submit, items, **options):
        progress = options["progress"]
        finished = progress.finished

        def counted_submit(item):
            rows = item if isinstance(item, list) else [item]
            with lock:
                if state["first_submit"] is None:
                    state["first_submit"] = time.time()
                    state["storage_before_first_submit"] = simstore.snapshot()
            ref = submit(item)
            now = time.time()
            with lock:
                state["tasks_submitted"] += 1
                state["images_submitted"] += len(rows)
                state["peak_tasks_in_flight"] = max(
                    state["peak_tasks_in_flight"],
                    state["tasks_submitted"] - state["tasks_collected"])
            if submits is not None:
                submits.write(f"{now:.3f} " + " ".join(_item_id(r) for r in rows) + "\n")
            return ref

        def counted_finished(result, in_flight):
            with lock:
                if state["first_finish"] is None:
                    state["first_finish"] = time.time()
                state["images_finished"] += 1
                state["statuses"][str(getattr(result, "status", "?"))] += 1
                done = state["images_finished"]
            finished(result, in_flight)
            if args.kill_after is not None and done >= args.kill_after:
                with lock:
                    state["exit"] = "killed"
                report()
                os.kill(os.getpid(), signal.SIGKILL)

        progress.finished = counted_finished
        return original_stream(counted_submit, items, **options)

    fleet.stream = stream
    code = None
    try:
        if args.mode == "new":
            from bench.fleet_sim import SimulatedTrainer
            from jobs import train_manifest

            code = train_manifest.main(job_args, trainer=SimulatedTrainer(**json.loads(args.sim)))
        elif args.mode in ("driver-only", "before"):
            from jobs import train_manifest

            if args.mode == "before":
                from bench.fleet_before import sleeping_bucket
            else:
                from bench.fleet_sim import sleeping_bucket
            train_manifest.train_bucket = sleeping_bucket
            code = train_manifest.main(job_args)
        else:
            from bench.fleet_sim import simulated_evaluation
            from jobs import evaluate_sifid

            evaluate_sifid.evaluate_models = simulated_evaluation
            evaluate_sifid.stem_weights = lambda *a, **k: {}
            code = evaluate_sifid.main(job_args)
    finally:
        with lock:
            state["exit"] = code
        report()
    return code or 0


def _item_id(row) -> str:
    return row.image_id if hasattr(row, "image_id") else str(row[0])


def _vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            lines = file.read().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines
            if line.startswith(("VmRSS:", "VmHWM:"))}


# --- the MLflow proxy (runs as its own process) -------------------------------------------------

_IDS = [(re.compile(r"(/mlflow-artifacts/artifacts/)\d+/[0-9a-f]{32}/artifacts/.*"),
         r"\1{experiment}/{run}/artifacts/{path}"),
        (re.compile(r"(/mlflow-artifacts/artifacts/)\d+/models/m-[0-9a-f]{32}/artifacts/.*"),
         r"\1{experiment}/models/{model}/artifacts/{path}"),
        (re.compile(r"/m-[0-9a-f]{32}(?=/|$)"), "/{model}"),
        (re.compile(r"/[0-9a-f]{32}(?=/|$)"), "/{id}"), (re.compile(r"/\d+(?=/|$)"), "/{n}")]
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
        "accept-encoding", "content-encoding"}


def endpoint(method: str, path: str) -> str:
    """`METHOD /path` with run, model and experiment ids and artifact paths as placeholders."""
    for regex, replacement in _IDS:
        path = regex.sub(replacement, path)
    return f"{method} {path}"


class ProxyStats:
    """What went through the proxy: per endpoint counts and latencies, per second counts,
    answers by status, and failures."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.endpoints: Counter = Counter()
        self.latencies: dict[str, list[float]] = {}
        self.seconds: Counter = Counter()
        self.statuses: Counter = Counter()
        self.failures: Counter = Counter()  # upstream errors, 5xx, clients gone, >= timeout
        self.in_flight = self.peak_in_flight = 0

    def summary(self) -> dict:
        every = sorted(x for values in self.latencies.values() for x in values)
        return {
            "requests": sum(self.endpoints.values()),
            "endpoints": dict(self.endpoints.most_common()),
            "latency_s": _quantiles(every),
            "latency_by_endpoint_s": {key: _quantiles(sorted(values))
                                      for key, values in self.latencies.items()},
            "peak_requests_per_second": max(self.seconds.values(), default=0),
            "busy_seconds": len(self.seconds),
            "statuses": dict(self.statuses),
            "failures": dict(self.failures),
            "over_client_timeout": sum(x >= CLIENT_TIMEOUT for x in every),
            "peak_in_flight": self.peak_in_flight,
        }


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 4)
    return {"count": len(values), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
            "max": round(values[-1], 4), "mean": round(statistics.fmean(values), 4)}


def proxy_main(argv: list[str]) -> int:
    """A reverse proxy on 127.0.0.1:PORT to UPSTREAM that counts (aiohttp)."""
    import asyncio

    from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

    p = argparse.ArgumentParser(prog="fleet_scale.py proxy")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--log", help="one line per request: time, method, path, status, seconds")
    args = p.parse_args(argv)
    stats = ProxyStats()
    log = open(args.log, "a", buffering=1 << 16) if args.log else None  # noqa: SIM115

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/__stats":
            return web.json_response(stats.summary())
        if request.path == "/__reset":
            stats.reset()
            return web.json_response({})
        start = time.monotonic()
        key = endpoint(request.method, request.path)
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        stats.seconds[int(time.time())] += 1
        try:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            try:
                async with session.request(request.method, args.upstream + request.path_qs,
                                           data=body, headers=headers,
                                           allow_redirects=False) as answer:
                    data = await answer.read()
                    status = answer.status
                    back = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            except Exception as err:  # noqa: BLE001 - counted, answered as a 502
                stats.failures[f"upstream {type(err).__name__}"] += 1
                return web.Response(status=502, text=f"proxy: {type(err).__name__}")
            latency = time.monotonic() - start
            if log is not None:
                log.write(f"{time.time():.3f} {request.method} {request.path} {status} "
                          f"{latency:.4f}\n")
            stats.endpoints[key] += 1
            stats.latencies.setdefault(key, []).append(latency)
            stats.statuses[str(status)] += 1
            if status >= 500:
                stats.failures[f"{status} {key}"] += 1
            if latency >= CLIENT_TIMEOUT:
                stats.failures["over client timeout"] += 1
            if request.transport is None or request.transport.is_closing():
                stats.failures["client gone"] += 1
            return web.Response(body=data, status=status, headers=back)
        finally:
            stats.in_flight -= 1

    async def serve() -> None:
        nonlocal session
        session = ClientSession(connector=TCPConnector(limit=0),
                                timeout=ClientTimeout(total=600), auto_decompress=False)
        app = web.Application(client_max_size=1024 * MiB)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, args.port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()
        await session.close()
        if log is not None:
            log.close()

    session = None
    asyncio.run(serve())
    return 0


# --- services: Ray head, MLflow server, proxy ---------------------------------------------------

def _local_services():
    """infra/local/services.py, loaded by path as tests/services.py does."""
    import importlib.util

    path = ROOT / "infra" / "local" / "services.py"
    spec = importlib.util.spec_from_file_location("fleet_local_services", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Cluster:
    """A work folder under /tmp, the environment of every process of the simulation, and the
    services: a Ray head with fake GPUs (`ray start --head`), an MLflow server with 2 workers
    (sqlite, proxied artifacts) and the counting proxy. `close()` stops all of them."""

    def __init__(self, args, *, pythonpath: str | None = None, ray: bool = True,
                 mlflow: bool = True):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))
        self.store = self.work / "store"
        self.counts = self.work / "counts"
        self.events = self.work / "events"
        for folder in (self.store, self.counts, self.events, self.work / "rt"):
            folder.mkdir()
        # The code the driver and the workers run: the first entry of PYTHONPATH.
        self.code = Path((pythonpath or str(ROOT)).split(":")[0])
        self.env = {
            "PYTHONPATH": pythonpath or str(ROOT),
            simstore.DELAY_ENV: str(args.delay),
            simstore.LIST_DELAY_ENV: str(args.list_delay if args.list_delay is not None
                                         else args.delay),
            simstore.COUNTS_ENV: str(self.counts),
            simstore.ROOT_ENV: str(self.store),
            simstore.COMPRESS_ENV: "1",
            "RAY_AUTH_MODE": "disabled",
            "RAY_TMPDIR": str(self.work / "rt"),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_DEDUP_LOGS": "0",
            "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            BUCKET_SECONDS_ENV: str(args.bucket_seconds),
        }
        os.environ.update(self.env)
        os.environ.pop("RAY_ADDRESS", None)
        self.services = _local_services()
        self.head = None
        self.processes: list[subprocess.Popen] = []
        self.proxy_url = self.mlflow_url = None
        self.started: dict[str, float] = {}
        try:
            if ray:
                start = time.perf_counter()
                self.head = self.services.start_ray(self.work / "svc", port=0, dashboard_port=0,
                                                    num_cpus=args.cpus, num_gpus=args.gpus)
                self.started["ray_head_s"] = round(time.perf_counter() - start, 1)
            if mlflow:
                self._start_mlflow()
        except BaseException:
            self.close()
            raise

    def _start_mlflow(self) -> None:
        start = time.perf_counter()
        data = self.work / "mlflow"
        data.mkdir()
        port, proxy_port = self.services.free_port(), self.services.free_port()
        self.mlflow_url = f"http://{HOST}:{port}"
        self._spawn("mlflow", [str(Path(sys.executable).parent / "mlflow"), "server", "--host",
                               HOST, "--port", str(port), "--backend-store-uri",
                               f"sqlite:///{data / 'mlflow.db'}", "--artifacts-destination",
                               str(data / "artifacts"), "--serve-artifacts", "--workers", "2"],
                    cwd=data)
        _wait_url(f"{self.mlflow_url}/health", 180)
        self.started["mlflow_s"] = round(time.perf_counter() - start, 1)
        self.proxy_url = f"http://{HOST}:{proxy_port}"
        self._spawn("proxy", [sys.executable, "-m", "bench.fleet_scale", "proxy", "--port",
                              str(proxy_port), "--upstream", self.mlflow_url, "--log",
                              str(self.work / "requests.log")], cwd=ROOT)
        _wait_url(f"{self.proxy_url}/__stats", 60)

    def _spawn(self, name: str, command: list[str], cwd: Path) -> None:
        with open(self.work / f"{name}.log", "ab") as log:
            self.processes.append(subprocess.Popen(
                command, cwd=cwd, env=os.environ.copy(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True))

    @property
    def ray_address(self) -> str | None:
        return self.head.address if self.head else None

    def proxy_stats(self, reset: bool = False) -> dict:
        if self.proxy_url is None:
            return {}
        answer = json.loads(_fetch(f"{self.proxy_url}/__stats"))
        if reset:
            _fetch(f"{self.proxy_url}/__reset", method="POST")
        return answer

    def reset_proxy(self) -> None:
        if self.proxy_url is not None:
            _fetch(f"{self.proxy_url}/__reset", method="POST")

    def storage_counts(self) -> dict[int, dict]:
        """Every process's counts (but this harness's own), by pid."""
        found = simstore.read_counts(str(self.counts))
        found.pop(os.getpid(), None)
        return found

    def worker_warnings(self) -> dict[str, int]:
        """Lines of the Ray workers' logs about MLflow trouble."""
        counts: Counter = Counter()
        logs = self.work / "svc" / "ray" / "session_latest" / "logs"
        for path in logs.glob("worker-*.err") if logs.exists() else ():
            with open(path, errors="replace") as file:
                for line in file:
                    if "MLflow: cannot" in line:
                        counts["mlflow_cannot"] += 1
                        if "imed out" in line or "Timeout" in line:
                            counts["mlflow_timed_out"] += 1
                    elif "still lacks" in line:
                        counts["mlflow_still_lacks"] += 1
                    elif "late points" in line:
                        counts["mlflow_replayed"] += 1
                    elif "Traceback" in line:
                        counts["tracebacks"] += 1
        return dict(counts)

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes = []
        if self.head is not None:
            self.services.stop(["ray"], self.work / "svc")
            self.head = None
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"kept {self.work}", file=sys.stderr)


def _fetch(url: str, method: str = "GET") -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method=method, data=b"" if method == "POST"
                                            else None), timeout=30) as answer:
        return answer.read()


def _wait_url(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _fetch(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


# --- inputs: images, manifests, ledgers --------------------------------------------------------

def make_images(store: Path) -> None:
    """SOURCE_FILES small PNGs of SIZE x SIZE that every manifest's rows share."""
    from PIL import Image

    folder = store / "images"
    folder.mkdir(exist_ok=True)
    for index in range(SOURCE_FILES):
        Image.new("RGB", (SIZE, SIZE), (index % 256, index // 256 * 60, 90)).save(
            folder / f"src{index:04d}.png")


def make_manifest(store: Path, rows: int, sizes: bool = True) -> str:
    """An N-row manifest (ids img0000000 ...; uris cycling over the shared files, simstore://;
    height and width unless `sizes` is false), written straight to disk; its URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = simstore.url(str(store / "images"))
    columns = {"image_id": pa.array([f"img{i:07d}" for i in range(rows)]),
               "uri": pa.array([f"{images}/src{i % SOURCE_FILES:04d}.png" for i in range(rows)])}
    if sizes:
        columns["height"] = pa.array([SIZE] * rows, pa.int64())
        columns["width"] = pa.array([SIZE] * rows, pa.int64())
    path = store / f"manifest_{rows}{'' if sizes else '_nosize'}.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=65_536)
    return simstore.url(str(path))


def write_ledger(output: Path, rows: int) -> None:
    """A ledger of `rows` finished images, as the tasks write it (pipeline.ledger's names and
    contents), straight to disk."""
    from pipeline.ledger import Entry, Status, file_name

    folder = output / "_results"
    folder.mkdir(parents=True, exist_ok=True)
    job = "0" * 32
    for index in range(rows):
        image_id = f"img{index:07d}"
        entry = Entry(image_id, Status.DONE, None, 11, 60.0, None, None,
                      simstore.url(str(output / image_id)), config_hash="a" * 16, job_id=job,
                      finished_at="2026-12-05T00:00:00Z")
        (folder / file_name(image_id, "a" * 16, Status.DONE, job)).write_text(
            json.dumps(entry.to_dict(), sort_keys=True))


def ledger_done(output: Path) -> set[str]:
    """The image ids that the ledger's names say are done (read from disk, not counted)."""
    from pipeline.ledger import Status, parse_name

    done = set()
    with contextlib.suppress(FileNotFoundError), os.scandir(output / "_results") as entries:
        for entry in entries:
            parts = parse_name(entry.name)
            if parts is not None and parts[2] == Status.DONE:
                done.add(parts[0])
    return done


def finished_folders(output: Path) -> dict[str, tuple[int, int]]:
    """Image id -> (mtime_ns of its _SUCCESS, of its model/config.json) for every finished
    image folder (read from disk, not counted)."""
    found = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(output) as entries:
        for entry in entries:
            success = Path(entry.path) / "_SUCCESS"
            if entry.name.startswith("_") or not success.exists():
                continue
            config = Path(entry.path) / "model" / "config.json"
            found[entry.name] = (success.stat().st_mtime_ns,
                                 config.stat().st_mtime_ns if config.exists() else 0)
    return found


# --- running the driver ------------------------------------------------------------------------

def job_args(cluster: Cluster, manifest: str, output: str, args, experiment: str,
             extra: list[str] = ()) -> list[str]:
    tracking = (["--tracking-uri", cluster.proxy_url] if cluster.proxy_url
                else ["--no-tracking"])
    return ["--manifest", manifest, "--output", output, "--preset", "paper",
            "--sifid-samples", "0", "--experiment", experiment, *tracking, *extra]


def run_driver(cluster: Cluster, job: list[str], *, name: str, mode: str = "new",
               sim: dict | None = None, kill_after: int | None = None,
               timeout: float = 3 * 3600) -> dict:
    """Run the wrapped driver to its end (or its self-kill); what it and we saw of it."""
    report, submits = cluster.work / f"{name}.json", cluster.work / f"{name}.submits"
    log = cluster.work / f"{name}.log"
    command = [sys.executable, "-m", "bench.fleet_scale", "driver", "--report", str(report),
               "--submits", str(submits), "--mode", mode, "--sim", json.dumps(sim or {})]
    if kill_after is not None:
        command += ["--kill-after", str(kill_after)]
    env = os.environ.copy()
    if cluster.ray_address:
        env["RAY_ADDRESS"] = cluster.ray_address
    counts_before = cluster.storage_counts()
    peak = {"VmRSS": 0, "VmHWM": 0}
    timeline = []  # (seconds since start, RSS MiB), every second
    with open(log, "w") as out:
        started = time.time()
        # `python -m` puts its folder first on sys.path, and Ray workers get the driver's.
        process = subprocess.Popen(command + ["--", *job], cwd=cluster.code, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while process.poll() is None:
                vm = _vm(process.pid)
                for key, value in vm.items():
                    peak[key] = max(peak[key], value)
                if vm and (not timeline or time.time() - started - timeline[-1][0] >= 1.0):
                    timeline.append((round(time.time() - started, 1),
                                     round(vm["VmRSS"] / MiB, 1)))
                if time.time() - started > timeout:
                    raise TimeoutError(f"{name}: the driver ran past {timeout:.0f} s")
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    ended = time.time()
    # A local Ray that the job started itself (--ray local) outlives a killed driver.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    time.sleep(2.5)  # the workers write their counts once a second
    inside = json.loads(report.read_text()) if report.exists() else {}
    counts_after = cluster.storage_counts()
    text = log.read_text(errors="replace")
    return {"name": name, "returncode": process.returncode, "started": started, "ended": ended,
            "wall_s": round(ended - started, 2), "inside": inside, "outside_peak": peak,
            "rss_timeline": timeline,
            "driver_pid": process.pid, "storage": _delta(counts_before, counts_after),
            "submits": submits, "log": text}


def _delta(before: dict[int, dict], after: dict[int, dict]) -> dict:
    """Storage calls made between two readings, by kind and by pattern, all processes."""
    kinds: Counter = Counter()
    patterns: Counter = Counter()
    for pid, values in after.items():
        old = before.get(pid, {})
        kinds.update(Counter(values["kinds"]) - Counter(old.get("kinds", {})))
        patterns.update(Counter(values["patterns"]) - Counter(old.get("patterns", {})))
    return {"kinds": dict(kinds), "patterns": dict(patterns.most_common())}


def driver_figures(run: dict, rows: int) -> dict:
    """The driver-side figures of one run: times, memory, storage before its first submit."""
    inside = run["inside"]
    vm = inside.get("vm", {})
    peak = max(vm.get("VmHWM", 0), run["outside_peak"]["VmHWM"])
    def since(key: str) -> float | None:
        return None if inside.get(key) is None else round(inside[key] - run["started"], 2)
    before = inside.get("storage_before_first_submit") or {}
    lines = [line for line in run["log"].splitlines()
             if re.match(r"(Ray ready|first Ray task|images per Ray|ledger:|Ray: |no GPU|"
                         r"\d+ images (from|in)|\d+ Ray tasks)", line)]
    return {
        "rows": rows,
        "exit": inside.get("exit", run["returncode"]),
        "seconds_to_first_submit": since("first_submit"),
        "seconds_to_first_finished_image": since("first_finish"),
        "driver_peak_rss_mib": round(peak / MiB, 1),
        "driver_bytes_per_row": round(peak / rows),
        "storage_calls_before_first_submit": before.get("kinds"),
        "storage_calls_before_first_submit_by_file": before.get("patterns"),
        "peak_tasks_in_flight": inside.get("peak_tasks_in_flight"),
        "tasks_submitted": inside.get("tasks_submitted"),
        "images_finished": inside.get("images_finished"),
        "statuses": inside.get("statuses"),
        "wall_s": run["wall_s"],
        "job_lines": lines[:12],
        # (seconds, MiB), at most 40 points: where the memory goes, during the job or at its end
        "driver_rss_timeline": run["rss_timeline"][::max(1, math.ceil(len(run["rss_timeline"])
                                                                     / 40))],
    }


def peak_training(events: Path, since: float = 0.0) -> dict:
    """Images training at once (the simulated trainer's start/end events), and when the first
    training after `since` started."""
    changes = []
    for path in events.glob("*.events"):
        for line in path.read_text().splitlines():
            stamp, images = line.split()
            changes.append((float(stamp), int(images)))
    changes.sort()
    running = peak = 0
    first = None
    for stamp, images in changes:
        running += images
        peak = max(peak, running)
        if first is None and images > 0 and stamp >= since:
            first = stamp
    return {"peak_images_training": peak, "first_training_start": first}


def storage_per_image(storage: dict, images: int) -> dict:
    return {kind: round(count / images, 2) for kind, count in storage["kinds"].items()} \
        if images else {}


def mlflow_figures(stats: dict, images: int) -> dict:
    if not stats:
        return {}
    per_image = {key: round(count / images, 2) for key, count in stats["endpoints"].items()} \
        if images else {}
    return {"requests": stats["requests"],
            "requests_per_image": round(stats["requests"] / images, 2) if images else None,
            "requests_per_image_by_endpoint": per_image,
            "peak_requests_per_second": stats["peak_requests_per_second"],
            "mean_requests_per_second": round(stats["requests"] / max(1, stats["busy_seconds"]),
                                              1),
            "latency_s": stats["latency_s"],
            "latency_by_endpoint_s": stats["latency_by_endpoint_s"],
            "statuses": stats["statuses"], "failures": stats["failures"],
            "over_client_timeout": stats["over_client_timeout"],
            "peak_requests_in_flight": stats["peak_in_flight"]}


# --- scenarios ----------------------------------------------------------------------------------

def scenario_start(args) -> dict:
    """Memory and start figures for each N; the job stopped after --stop-after images."""
    before = args.before is not None
    if before and args.ray == "local":
        # The job's own Ray gives its workers its own root only: no bench/ there.
        raise SystemExit("fleet_scale.py: --before runs against a Ray head (--ray head)")
    pythonpath = f"{args.before}:{ROOT}" if before else None
    mode = "before" if before else ("driver-only" if args.driver_only else "new")
    cluster = Cluster(args, pythonpath=pythonpath, ray=args.ray == "head",
                      mlflow=not (args.no_mlflow or mode != "new"))
    runs = []
    try:
        make_images(cluster.store)
        for rows in args.rows:
            manifest = make_manifest(cluster.store, rows, sizes=not args.no_sizes)
            output = cluster.store / f"out_{rows}"
            cluster.reset_proxy()
            stop = args.stop_after if mode == "new" and args.stop_after < rows else None
            run = run_driver(cluster, job_args(cluster, manifest, simstore.url(str(output)), args,
                                               f"start-{rows}"),
                             name=f"start_{rows}", mode=mode, kill_after=stop,
                             sim=_sim(args, cluster))
            figures = driver_figures(run, rows)
            images = figures["images_finished"] or 0
            # Killed with trainings under way: calls per image come from `mlflow` (which ends
            # its job normally), not from here.
            figures.update({
                "stopped_after_images": stop,
                "storage_calls_all_processes": run["storage"]["kinds"],
                "mlflow": _mlflow_brief(mlflow_figures(cluster.proxy_stats(), images)),
                **peak_training(cluster.events, run["started"]),
            })
            figures.pop("first_training_start", None)
            runs.append(figures)
            shutil.rmtree(output, ignore_errors=True)
            print(json.dumps({k: figures[k] for k in ("rows", "seconds_to_first_submit",
                                                      "seconds_to_first_finished_image",
                                                      "driver_peak_rss_mib")}),
                  file=sys.stderr, flush=True)
    finally:
        cluster.close()
    slopes = [{"from_rows": a["rows"], "to_rows": b["rows"],
               "bytes_per_row": round((b["driver_peak_rss_mib"] - a["driver_peak_rss_mib"])
                                      * MiB / (b["rows"] - a["rows"]), 1)}
              for a, b in zip(runs, runs[1:])]
    return {"scenario": "start", "mode": mode,
            "settings": _settings(args, cluster), "runs": runs, "rss_slopes": slopes}


def scenario_restart(args) -> dict:
    """Kill the driver at --kill-at of the rows (or after --kill-after images), resubmit."""
    rows = args.rows[0]
    cluster = Cluster(args, mlflow=not args.no_mlflow)
    try:
        make_images(cluster.store)
        manifest = make_manifest(cluster.store, rows)
        output = cluster.store / "out"
        job = job_args(cluster, manifest, simstore.url(str(output)), args, "restart")
        kill = args.kill_after or max(1, int(args.kill_at * rows))
        first = run_driver(cluster, job, name="first", kill_after=kill, sim=_sim(args, cluster))
        killed_at = first["ended"]
        done_at_kill = ledger_done(output)
        folders_at_kill = finished_folders(output)
        time.sleep(args.settle)
        done = ledger_done(output)
        folders = finished_folders(output)
        cluster.reset_proxy()
        second = run_driver(cluster, job, name="second", sim=_sim(args, cluster),
                            kill_after=args.resubmit_stop_after)
        after = finished_folders(output)
        sent = []
        first_new = None
        for line in second["submits"].read_text().splitlines():
            stamp, *ids = line.split()
            sent += ids
            if first_new is None and any(i not in done for i in ids):
                first_new = float(stamp)
        training = peak_training(cluster.events, second["started"])
        rewritten = sorted(i for i, stamps in folders.items() if after.get(i) != stamps)
        final_done = ledger_done(output)
        stats = cluster.proxy_stats()
    finally:
        cluster.close()
    figures = driver_figures(second, rows)
    return {
        "scenario": "restart", "settings": _settings(args, cluster), "rows": rows,
        "killed_after_images": kill,
        "first_job": driver_figures(first, rows),
        "seconds_from_kill_to_resubmit": round(second["started"] - killed_at, 2),
        "ledger_done_at_kill": len(done_at_kill),
        "finished_folders_at_kill": len(folders_at_kill),
        "ledger_done_at_resubmit": len(done),
        "finished_folders_at_resubmit": len(folders),
        "resubmit": figures,
        "images_sent": len(sent),
        "tasks_sent_for_images_in_ledger": sum(i in done for i in sent),
        "images_sent_finished_not_in_ledger": sum(i in folders and i not in done for i in sent),
        "images_back_skipped": (figures["statuses"] or {}).get("skipped", 0),
        "seconds_to_first_new_submit": None if first_new is None
        else round(first_new - second["started"], 2),
        "seconds_to_first_new_training": None if training["first_training_start"] is None
        else round(training["first_training_start"] - second["started"], 2),
        "finished_images_rewritten": len(rewritten),
        "rewritten_examples": rewritten[:10],
        "ledger_done_at_end": len(final_done),
        "mlflow_resubmit": mlflow_figures(stats, figures["images_finished"] or 0),
    }


def scenario_mlflow(args) -> dict:
    """>= 256 images training at once against the 2-worker MLflow server."""
    rows = args.rows[0]
    cluster = Cluster(args)
    try:
        make_images(cluster.store)
        manifest = make_manifest(cluster.store, rows)
        output = cluster.store / "out"
        extra = ["--limit", str(args.images), "--images-per-task", str(args.images_per_task)]
        run = run_driver(cluster, job_args(cluster, manifest, simstore.url(str(output)), args,
                                           "mlflow", extra),
                         name="mlflow", sim=_sim(args, cluster))
        stats = cluster.proxy_stats()
        warnings = cluster.worker_warnings()
        table = _results_table(output)
        training = peak_training(cluster.events)
    finally:
        cluster.close()
    figures = driver_figures(run, rows)
    images = figures["images_finished"] or 0
    return {
        "scenario": "mlflow", "settings": _settings(args, cluster), "rows": rows,
        "images_trained": images,
        "note": f"a {rows}-row manifest with --limit {args.images}: the job trains the first "
                f"{args.images} rows and ends normally (results table, replay)",
        "peak_images_training_at_once": training["peak_images_training"],
        "mlflow": mlflow_figures(stats, images),
        "worker_log_lines": warnings,
        "images_left_for_replay": table.get("tracking_incomplete"),
        "results_table": table,
        "storage_calls_per_image": storage_per_image(run["storage"], images),
        "storage_calls_by_file": run["storage"]["patterns"],
        "driver": figures,
    }


def _mlflow_brief(figures: dict) -> dict:
    """The request rate and latency of a run killed midway (its per-image counts mean little)."""
    keep = ("requests", "peak_requests_per_second", "latency_s", "statuses", "failures",
            "over_client_timeout")
    return {key: figures[key] for key in keep if key in figures}


def _results_table(output: Path) -> dict:
    """Counts of {output}/_results.parquet, read through the store (it may be compressed)."""
    import io

    import pyarrow.parquet as pq

    try:
        data = simstore.SimStore().cat_file(str(output / "_results.parquet"))
    except FileNotFoundError:
        return {"missing": True}
    table = pq.read_table(io.BytesIO(data)).to_pydict()
    return {"rows": len(table["image_id"]),
            "statuses": dict(Counter(table["status"])),
            "tracking_incomplete": sum(not x for x in table["tracking_complete"])}


def scenario_evaluate(args) -> dict:
    """LIST calls of the readers of a ledger of N finished images."""
    rows = args.rows[0]
    cluster = Cluster(args, ray=args.job, mlflow=False)
    try:
        output = cluster.store / "out"
        start = time.perf_counter()
        write_ledger(output, rows)
        seeded = time.perf_counter() - start
        from jobs.sync_tracking import image_ids
        from pipeline.evaluate import trained_image_ids

        figures = {}
        for name, reader in (("trained_image_ids", trained_image_ids),
                             ("sync_tracking.image_ids", image_ids)):
            simstore.COUNTS.reset()
            start = time.perf_counter()
            count = sum(1 for _ in reader(simstore.url(str(output))))
            figures[name] = {"ids": count, "seconds": round(time.perf_counter() - start, 2),
                             "calls": simstore.snapshot()["kinds"]}
        if args.job:
            run = run_driver(cluster, ["--models", simstore.url(str(output)), "--out",
                                       simstore.url(str(cluster.store / "eval")),
                                       "--gpus-per-task", "1", "--no-tracking"],
                             name="evaluate", mode="evaluate")
            figures["evaluate_sifid_job"] = {
                "exit": run["inside"].get("exit", run["returncode"]),
                "models": run["inside"].get("images_finished"),
                "seconds": run["wall_s"],
                "driver_peak_rss_mib": round(max(run["inside"].get("vm", {}).get("VmHWM", 0),
                                                 run["outside_peak"]["VmHWM"]) / MiB, 1),
                "storage_calls_all_processes": run["storage"]["kinds"],
                "list_calls": run["storage"]["kinds"].get("LIST", 0),
                "storage_calls_by_file": run["storage"]["patterns"],
                "driver_rss_timeline": driver_figures(run, rows)["driver_rss_timeline"],
            }
    finally:
        cluster.close()
    return {"scenario": "evaluate", "settings": _settings(args, cluster), "rows": rows,
            "ledger_written_s": round(seeded, 1),
            "list_limit": rows // 1000 + 10, **figures}


def scenario_compare(args) -> dict:
    """One tiny real training and its simulation, side by side."""
    cluster = Cluster(args, ray=False)
    try:
        from PIL import Image

        from bench.fleet_sim import SimulatedTrainer
        from pipeline.manifest import manifest_row
        from pipeline.tracking import experiment_id_for, sender
        from pipeline.train_image import JobSettings, Trainer, train_bucket
        from singan.api import config
        from singan.data.examples import pebbles
        from singan.data.image import to_pil

        path = cluster.store / "tiny.png"
        to_pil(pebbles(24, 32, seed=3)).save(path)
        with Image.open(path) as image:
            width, height = image.size
        tiny = config("paper", min_size=12, max_size=28, nfc=8, max_nfc=16, nfc_double_every=2,
                      niter=20, lr_milestone=16, log_every=5)
        # Made before either side, and given to the runs as the job's driver gives it.
        experiment = experiment_id_for(cluster.proxy_url, "singan-fleet")
        sides = {}
        for name, trainer in (("real", Trainer()), ("simulated", SimulatedTrainer(0.0))):
            cluster.reset_proxy()
            simstore.COUNTS.reset()
            row = manifest_row(f"tiny{name}", simstore.url(str(path)), tiny, 7, height=height,
                               width=width)
            job = JobSettings(output=simstore.url(str(cluster.store / "out")),
                              tracking_uri=cluster.proxy_url, experiment_id=experiment,
                              sifid_samples=0, trainer=trainer, job_id="compare")
            entry = train_bucket([row], job)[0]
            sender().drain(60)
            time.sleep(0.5)
            stats = cluster.proxy_stats()
            files = sorted(str(p.relative_to(cluster.store / "out" / row.image_id))
                           for p in (cluster.store / "out" / row.image_id).rglob("*")
                           if p.is_file())
            calls = {k.replace(row.image_id, "{image}"): v
                     for k, v in simstore.snapshot()["patterns"].items()}
            folder = simstore.SimStore()
            points = {file: folder.cat_file(str(cluster.store / "out" / row.image_id / file))
                      .count(b"\n") for file in files if file.startswith("metrics/")}
            sides[name] = {"status": str(entry.status), "num_scales": entry.num_scales,
                           "tracking_complete": entry.tracking_complete,
                           "files": files, "points_per_file": points, "storage": calls,
                           "mlflow": stats.get("endpoints", {})}
    finally:
        cluster.close()
    real, sim = sides["real"], sides["simulated"]
    def differences(key: str) -> dict:
        keys = sorted(set(real[key]) | set(sim[key]))
        return {k: [real[key].get(k), sim[key].get(k)] for k in keys
                if real[key].get(k) != sim[key].get(k)}
    return {"scenario": "compare", "config": "tests/conftest.py tiny_config (3 scales)",
            "same_files": real["files"] == sim["files"],
            "files_only_real": sorted(set(real["files"]) - set(sim["files"])),
            "files_only_simulated": sorted(set(sim["files"]) - set(real["files"])),
            "storage_differences_real_vs_simulated": differences("storage"),
            "points_differences_real_vs_simulated": differences("points_per_file"),
            "mlflow_differences_real_vs_simulated": differences("mlflow"),
            "real": real, "simulated": sim}


def _sim(args, cluster: Cluster) -> dict:
    return {"seconds_per_scale": args.seconds_per_scale, "picture_bytes": args.picture_bytes,
            "level_bytes": args.level_bytes, "events": str(cluster.events)}


def _settings(args, cluster: Cluster) -> dict:
    return {"delay_s": args.delay, "list_delay_s": args.list_delay or args.delay,
            "ray": "the job's own local Ray" if args.ray == "local"
            else {"cpus": args.cpus, "fake_gpus": args.gpus},
            "seconds_per_scale": args.seconds_per_scale, "picture_bytes": args.picture_bytes,
            "level_bytes": args.level_bytes, "image_size": SIZE,
            "source_files": SOURCE_FILES, "services_start_s": cluster.started,
            "machine": f"{os.cpu_count()} cores",
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


def _code_version(before: str | None) -> str:
    """The commit of the code measured, and whether its product folders had changes."""
    where = before or str(ROOT)
    def git(*command: str) -> str:
        return subprocess.run(["git", "-C", where, *command], capture_output=True,
                              text=True).stdout.strip()
    changed = git("status", "--porcelain", "--", "jobs", "pipeline", "singan")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes to jobs/, "
                                                  "pipeline/ or singan/" if changed else "")


# --- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["driver"]:
        return driver_main(argv[1:])
    if argv[:1] == ["proxy"]:
        return proxy_main(argv[1:])
    p = argparse.ArgumentParser(prog="fleet_scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=("start", "restart", "mlflow", "evaluate", "compare"))
    p.add_argument("--rows", default=None, help="N (start: a comma-separated list)")
    p.add_argument("--stop-after", type=int, default=512, help="start: finished images")
    p.add_argument("--kill-at", type=float, default=0.9, help="restart: share of rows done")
    p.add_argument("--kill-after", type=int, help="restart: finished images (instead)")
    p.add_argument("--resubmit-stop-after", type=int,
                   help="restart: stop the resubmitted job after this many images")
    p.add_argument("--settle", type=float, default=2.0,
                   help="restart: seconds between the kill and the resubmit")
    p.add_argument("--images", type=int, default=5000, help="mlflow: rows trained (--limit)")
    p.add_argument("--images-per-task", type=int, default=16, help="mlflow: images per task")
    p.add_argument("--job", action="store_true", help="evaluate: also run the evaluation job")
    p.add_argument("--seconds-per-scale", type=float)
    p.add_argument("--picture-bytes", type=int, default=4096)
    p.add_argument("--level-bytes", type=int, default=16384)
    p.add_argument("--delay", type=float, default=0.02, help="seconds per storage call")
    p.add_argument("--list-delay", type=float, help="seconds per LIST page (default: --delay)")
    p.add_argument("--cpus", type=int,
                   help="the Ray head's CPUs (default: start 2, restart and evaluate 4, "
                        "mlflow 16)")
    p.add_argument("--gpus", type=int, help="the Ray head's fake GPUs (default: as --cpus)")
    p.add_argument("--ray", choices=("head", "local"), default="head",
                   help="start: a Ray head of --cpus CPUs and --gpus fake GPUs that the job "
                        "joins (RAY_ADDRESS), or the local Ray the job starts itself (the "
                        "machine's CPUs, no GPU: tasks train on CPU)")
    p.add_argument("--no-mlflow", action="store_true", help="start, restart: --no-tracking")
    p.add_argument("--no-sizes", action="store_true", help="start: no height/width columns")
    p.add_argument("--before", metavar="PATH", help="start: the driver of this worktree")
    p.add_argument("--driver-only", action="store_true",
                   help="start: today's driver with train_bucket replaced by a sleep")
    p.add_argument("--bucket-seconds", type=float, default=0.2,
                   help="--before / --driver-only: seconds each task sleeps")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--out", metavar="NAME", help="also write bench/results/NAME.json")
    args = p.parse_args(argv)
    # Rows, seconds per scale, and the Ray head's slots. Each slot trains 16 images at once, and
    # on 2 cores the trainings' own client work (storage, MLflow) is what the CPUs do: a start
    # measured with 256 trainings at once measures that, not the driver.
    defaults = {"start": ("10000", 0.5, 2), "restart": ("1000", 0.5, 4),
                "mlflow": ("100000", 10.0, 16), "evaluate": ("100000", 0.0, 4),
                "compare": ("1", 0.0, 0)}[args.scenario]
    args.rows = [int(n) for n in (args.rows or defaults[0]).split(",")]
    if args.seconds_per_scale is None:
        args.seconds_per_scale = defaults[1]
    if args.cpus is None:
        args.cpus = defaults[2]
    if args.gpus is None:
        args.gpus = args.cpus

    # SIGTERM as Ctrl-C: the services are stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    start = time.time()
    result = {"start": scenario_start, "restart": scenario_restart, "mlflow": scenario_mlflow,
              "evaluate": scenario_evaluate, "compare": scenario_compare}[args.scenario](args)
    result = {**result, "command": "python bench/fleet_scale.py " + " ".join(argv),
              "code": _code_version(args.before),
              "seconds": round(time.time() - start, 1),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
