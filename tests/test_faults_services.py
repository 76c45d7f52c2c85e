"""Service faults during a real training job (jobs/train_manifest.py in a subprocess, with its own
local Ray): the MLflow server stopped and restarted mid-job, and the S3 endpoint failing for a
while. Each test starts its own servers (not the session fixtures, which other tests share).

What must hold: trainings never fail because tracking is down, and every metric point (and
param) reaches MLflow exactly once when it is back; storage trouble is retried, and no image is
ever marked done without every scale file of its model.

The MLflow server is really stopped and started again on its port, with its database. The S3
outage goes through a loopback proxy between the job and moto, switched off and on by the test:
moto keeps its buckets in memory only, so stopping moto itself would lose them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.catalog import write_manifest
from pipeline.storage import ImageStore
from pipeline.tracking import logged_images, stored_points
from tests.services import local_services, make_bucket
from tests.test_job import TINY, png

# One worker under pytest-xdist runs this module's tests, one after the other: they share
# its own servers, which they stop and cut.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("own-services")]

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "train_manifest.py"
JOB_TIMEOUT = 300.0  # seconds; far above a tiny job's, only so that a hung job fails the test
# A tiny job on CPU, two trainings at a time; -v brings the workers' warnings (retries, MLflow
# down) to the job's output.
TINY_JOB = [*TINY, "--gpus-per-task", "0", "-v"]
BUCKET = "singan-faults"
RETRY_LINE = re.compile(r"failed \(.*\); attempt \d+, retrying in")


# --- the job in a subprocess ----------------------------------------------------------------

def job_env(**extra: str) -> dict:
    """The environment of a job: loopback only, one torch thread, a throwaway local Ray."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI") and not k.startswith("AWS_")}
    env.update(OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", AWS_EC2_METADATA_DISABLED="true",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


class Job:
    """jobs/train_manifest.py running in its own process group, its output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict):
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, str(JOB), *args], cwd=log.parent,
                                            stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = JOB_TIMEOUT) -> tuple[int, str]:
        """(exit status, output); fails the test when the job hangs."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the job did not end within {timeout:.0f} s:\n{self.output()[-4000:]}")
        return code, self.output()

    def kill(self) -> None:
        """SIGTERM to the job's process group (the driver and its local Ray), then SIGKILL."""
        if not self.running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()  # a failed assertion must not leave a job (and its Ray) behind


def wait_until(condition, what: str, job: Job, timeout: float = JOB_TIMEOUT) -> float:
    """Poll `condition` until it holds; fail when the job ends first or time runs out. Returns
    the time it held (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if not job.running():
            pytest.fail(f"the job ended before {what}:\n{job.output()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s:\n{job.output()[-4000:]}")
        time.sleep(0.05)


def results_table(output: str):
    """The job's {output}/_results.parquet, read through storage."""
    import pyarrow.parquet as pq

    from pipeline.storage import Storage

    return pq.read_table(io.BytesIO(Storage(output).get("_results.parquet")))


def tiny_manifest(folder: Path, count: int) -> Path:
    """A local manifest of `count` small procedural images; the ids are img0, img1, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        path = folder / f"img{i}.png"
        path.write_bytes(png(i))
        rows.append({"image_id": f"img{i}", "uri": path.as_uri()})
    manifest = folder / "manifest.parquet"
    write_manifest(rows, str(manifest))
    return manifest


# --- a loopback proxy that fails on demand ---------------------------------------------------

class FlakyProxy:
    """A TCP proxy on 127.0.0.1 to `port`, which `cut()` makes fail until `restore()`: open
    connections are reset, and new ones are either reset at once ("reset": the client cannot
    connect), read and closed without an answer ("drop": the server hangs up, as an
    overloaded endpoint or a load balancer does), or accepted and never answered ("hang": a
    stalled endpoint, which only a client's own time limit ends)."""

    def __init__(self, port: int):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode: str | None = None  # None: passing through
        self.failed_connections = 0
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.hung: list[socket.socket] = []  # held open, unanswered, until restore()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, mode: str) -> None:
        self.mode = mode
        with self.lock:
            connections, self.open = list(self.open), set()
        for sock in connections:
            _reset(sock)

    def restore(self) -> None:
        self.mode = None
        with self.lock:
            hung, self.hung = self.hung, []
        for sock in hung:
            _reset(sock)

    def close(self) -> None:
        self.cut("reset")
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            mode = self.mode
            if mode is not None:
                self.failed_connections += 1
                if mode == "reset":
                    _reset(client)
                elif mode == "hang":
                    with self.lock:
                        self.hung.append(client)
                else:
                    threading.Thread(target=_hang_up, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self.lock:
                self.open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= {source, sink}
            source.close()
            sink.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (linger 0), as a crashed server's kernel does. The shutdown wakes a
    pump thread blocked reading it: a close alone would leave the connection open meanwhile."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _hang_up(sock: socket.socket) -> None:
    """Read the request, then close without an answer."""
    sock.settimeout(0.2)
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
    sock.close()


# --- MLflow ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_mlflow(tmp_path_factory):
    """An MLflow server for this module only, which its tests stop and restart: (state folder,
    port). Stopped at the end whatever state a test left it in."""
    state = tmp_path_factory.mktemp("own-mlflow")
    server = local_services.start_mlflow(state, port=0)
    try:
        yield state, int(server.url.rsplit(":", 1)[1])
    finally:
        local_services.stop(["mlflow"], state)


def sync_tracking(output: Path) -> tuple[int, str]:
    """jobs/sync_tracking.py --output OUTPUT, as a user runs it after the job (its main, here:
    a second interpreter would spend seconds importing mlflow); (exit status, output)."""
    from jobs import sync_tracking as script

    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        code = script.main(["--output", str(output)])
    return code, text.getvalue()


def assert_points_once(client, output: Path, ids: list[str]) -> dict[str, int]:
    """Every point of each image's folder meant for MLflow is in its run exactly once, and the
    run holds nothing else; the run is finished with its params and pictures (each scale's and
    the final one). Returns the points per image."""
    counts = {}
    for image_id in ids:
        folder = output / image_id
        points = [p for p in stored_points(ImageStore(str(output), image_id)) if p["mlflow"]]
        link = json.loads((folder / "tracking.json").read_text())  # the run, the params
        run_id = link["run_id"]
        keys = sorted({p["key"] for p in points})
        on_server = sorted((key, m.step, m.timestamp, m.value)
                           for key in keys for m in client.get_metric_history(run_id, key))
        assert on_server == sorted((p["key"], p["step"], p["timestamp"], p["value"])
                                   for p in points), image_id
        run = client.get_run(run_id)
        success = json.loads((folder / "_SUCCESS").read_text())
        # The points, and the summary the image ended with (singan.metrics.verdict), nothing else.
        assert set(run.data.metrics) == set(keys) | set(success["summary"]), image_id
        assert {k: run.data.metrics[k] for k in success["summary"]} == success["summary"]
        assert run.data.tags["quality"] == success["quality"]
        assert run.info.status == "FINISHED" and run.info.run_name == image_id
        scales = success["num_scales"]
        assert {k: str(v) for k, v in link["params"].items()}.items() <= run.data.params.items()
        pictures = {f"samples/scale_{k:02d}.png" for k in range(scales)} | {"samples/final.png"}
        assert pictures <= {f"samples/{p.name}" for p in (folder / "samples").glob("*.png")}
        shown = logged_images(f.path for f in client.list_artifacts(run_id, "images"))
        assert set(shown) == {("samples", k) for k in range(scales)} | {("final", 0)}, image_id
        assert all(len(files) == 2 for files in shown.values()), image_id  # PNG and WebP
        counts[image_id] = len(on_server)
    return counts


def test_mlflow_stopped_mid_job_and_back_during_it(tmp_path, own_mlflow):
    """The server goes down as the first scale is stored and comes back while the job runs:
    every image is done, the workers' replays at the end of their buckets bring every point to
    MLflow once (or, for a bucket that ended before the server was back, a later
    sync_tracking.py, as the job says), and a sync then finds nothing to send."""
    from mlflow import MlflowClient

    state, port = own_mlflow
    uri = f"http://127.0.0.1:{port}"
    local_services.start_mlflow(state, port=port)  # up, whatever an earlier test left
    # Six images on two slots: each tracking call waits out MLflow's HTTP retries (seconds) while
    # the server is down, so that the job outlasts the server's restart.
    ids = [f"img{i}" for i in range(6)]
    manifest = tiny_manifest(tmp_path / "images", len(ids))
    output = tmp_path / "out"
    args = ["--manifest", str(manifest), "--output", str(output), "--tracking-uri", uri,
            "--experiment", "down-during", *TINY_JOB]
    with Job(args, tmp_path / "job.log", job_env()) as job:
        down = wait_until(lambda: any(output.glob("*/model/scale_00.pt")), "first scale file", job)
        local_services.stop(["mlflow"], state)
        local_services.start_mlflow(state, port=port)
        up = time.monotonic()
        back_during_job = job.running()
        code, logs = job.wait()
    print(f"MLflow down for {up - down:.1f} s; job still running when it was back: "
          f"{back_during_job}")
    assert code == 0, logs
    assert "6 images" in logs and "6 trained" in logs
    assert "MLflow: cannot" in logs  # the workers did see the server down
    # (Ray deduplicates the workers' lines across the cluster: the driver's count is the one.)
    untracked = re.search(r"MLflow: (\d+) images still lack some points or pictures there; "
                          rf"later: python jobs/sync_tracking.py --output {output}", logs)
    if untracked:  # buckets that ended before the server was back: the job says what to run
        code, synced = sync_tracking(output)
        assert code == 0, synced

    client = MlflowClient(uri)
    counts = assert_points_once(client, output, ids)
    replayed = {image_id: int(n) for n, image_id
                in re.findall(r"MLflow: sent (\d+) late points and \d+ pictures of (img\d)", logs)}
    print(f"points per run: {counts}; images that saw MLflow down: "
          f"{logs.count('MLflow: cannot')}; late points sent by the workers' replays: "
          f"{replayed}; left for the sync: {untracked.group(1) if untracked else 0}")
    experiment = client.get_experiment_by_name("down-during")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'job'")
    assert len(parents) == 1
    # The job process can outlive the server's restart after its driver tried to close its run
    # (seen: the server took 19.9 s to come back on a loaded machine): then the run stays
    # RUNNING, said in one line, until the next job on this output ends it as KILLED.
    closed_while_down = "MLflow: cannot close the job run" in logs
    if back_during_job and not closed_while_down:  # the job closed its own run
        assert parents[0].info.status == "FINISHED"
        assert parents[0].data.metrics["images_done"] == 6
    elif closed_while_down:
        assert parents[0].info.status == "RUNNING"
    # A user's sync afterwards sends nothing again: every point is there, once.
    code, synced = sync_tracking(output)
    assert code == 0 and "6 of 6 images in sync" in synced, synced
    assert synced.count(" 0 points and 0 pictures sent") == 6, synced
    assert assert_points_once(client, output, ids) == counts


def test_mlflow_down_until_after_the_job_then_sync(tmp_path, own_mlflow):
    """The server goes down as the first scale is stored and stays down past the job's end: the
    trainings finish, the job names sync_tracking.py, which sends every point once when the
    server is back, and a second sync sends nothing."""
    from mlflow import MlflowClient

    state, port = own_mlflow
    uri = f"http://127.0.0.1:{port}"
    local_services.start_mlflow(state, port=port)
    ids = ["img0", "img1"]
    manifest = tiny_manifest(tmp_path / "images", len(ids))
    output = tmp_path / "out"
    args = ["--manifest", str(manifest), "--output", str(output), "--tracking-uri", uri,
            "--experiment", "down-after", *TINY_JOB]
    # No HTTP retries inside MLflow's client: a down server costs the trainings nothing.
    with Job(args, tmp_path / "job.log", job_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")) as job:
        down = wait_until(lambda: any(output.glob("*/model/scale_00.pt")), "first scale file", job)
        # On a loaded machine this process may see the first scale file late, after an image
        # finished (its run closed, then _SUCCESS): such an image has nothing left to send.
        finished_before = {p.parent.name for p in output.glob("*/_SUCCESS")}
        local_services.stop(["mlflow"], state)
        code, logs = job.wait()
    assert code == 0, logs
    assert "2 trained" in logs and "MLflow: cannot" in logs
    assert f"later: python jobs/sync_tracking.py --output {output}" in logs
    # Those training when the server went down, and any whose requests were still queued (the
    # workers send them with a random delay): the driver's count (Ray deduplicates the
    # workers' own lines).
    late = int(re.search(r"MLflow: (\d+) images still lack some points or pictures", logs)[1])
    assert len(set(ids) - finished_before) <= late <= len(ids)
    assert late, "both images finished before the server was stopped: the machine is too slow"

    local_services.start_mlflow(state, port=port)
    print(f"MLflow down for {time.monotonic() - down:.1f} s, past the job's end")
    code, synced = sync_tracking(output)
    assert code == 0 and "2 of 2 images in sync" in synced, synced
    sent = [(int(points), int(pictures)) for points, pictures
            in re.findall(r"(\d+) points and (\d+) pictures sent", synced)]
    assert len(sent) == 2 and sum(points + pictures > 0 for points, pictures in sent) == late, \
        synced
    client = MlflowClient(uri)
    counts = assert_points_once(client, output, ids)
    print(f"points per run: {counts}; sent by the sync: {sent}")
    code, synced = sync_tracking(output)
    assert code == 0 and synced.count(" 0 points and 0 pictures sent") == 2, synced
    assert assert_points_once(client, output, ids) == counts


def test_params_not_sent_while_mlflow_was_down_are_replayed(tmp_path, own_mlflow, monkeypatch):
    """A run that the server could not open when its params were logged, and that a later flush
    opened once the server was back: it holds the points but not the params, so it is not
    complete (the worker then replays it), and the replay sends the params."""
    from mlflow import MlflowClient

    from pipeline import tracking
    from pipeline.tracking import ImageRun, point, sync_image

    # A worker sends nothing for DOWN_SECONDS after a failure; here the flush comes at once.
    monkeypatch.setattr(tracking, "DOWN_SECONDS", 0.0)
    state, port = own_mlflow
    local_services.start_mlflow(state, port=port)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once while cut
    proxy = FlakyProxy(port)
    try:
        store = ImageStore(str(tmp_path), "img")
        proxy.cut("reset")
        run = ImageRun(store, proxy.url, None, None, experiment="params-late")
        run.log_params({"image_id": "img", "seed": 3})
        assert tracking.sender().drain(60)
        proxy.restore()
        run.log_points([point("noise_amp", 1.0, 0, 0)])
        run.finish("FINISHED")
        assert tracking.sender().drain(60)
        client = MlflowClient(proxy.url)
        assert run.run_id is not None and client.get_run(run.run_id).data.params == {}
        assert not run.complete
        report = sync_image(store)
        assert report.run_id == run.run_id and not report.created_run
        assert client.get_run(run.run_id).data.params == {"image_id": "img", "seed": "3"}
    finally:
        proxy.close()


# --- S3 -------------------------------------------------------------------------------------

class DoneWatch(threading.Thread):
    """Lists the bucket on moto directly (not through the proxy) every 0.1 s while the job runs,
    and records every listing in which an image has _SUCCESS but lacks a scale file of its
    model. `first_scale` is set when the first scale of any image is stored (its file, and
    model/config.json counting it)."""

    def __init__(self, endpoint_url: str, prefix: str):
        import boto3

        super().__init__(daemon=True)
        env = local_services.s3_env(endpoint_url)
        self.client = boto3.client("s3", endpoint_url=endpoint_url,
                                   region_name=env["AWS_DEFAULT_REGION"],
                                   aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        self.prefix = prefix
        self.first_scale = threading.Event()
        self.halt = threading.Event()
        self.scales: dict[str, int] = {}  # image id -> num_scales of its _SUCCESS
        self.violations: list[str] = []
        self.listings = 0

    def run(self) -> None:
        while not self.halt.is_set():
            self.check()
            self.halt.wait(0.1)

    def check(self) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=self.prefix)
        keys = {item["Key"] for page in pages for item in page.get("Contents", [])}
        self.listings += 1
        if any(key.endswith("/model/config.json") for key in keys):
            self.first_scale.set()
        for key in keys:
            if not key.endswith("/_SUCCESS"):
                continue
            folder = key[:-len("_SUCCESS")]
            image_id = folder[len(self.prefix):].strip("/")
            if image_id not in self.scales:
                body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                self.scales[image_id] = json.loads(body)["num_scales"]
            missing = [i for i in range(self.scales[image_id])
                       if f"{folder}model/scale_{i:02d}.pt" not in keys]
            if missing:
                self.violations.append(f"{image_id} done without scales {missing}")

    def __enter__(self) -> DoneWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.join(10)
        self.check()  # the final state too


@pytest.fixture(scope="module")
def flaky_s3(tmp_path_factory):
    """moto's S3 server for this module, with a bucket, behind a FlakyProxy: (moto, proxy)."""
    state = tmp_path_factory.mktemp("own-s3")
    server = local_services.start_s3(state, port=0)
    proxy = None
    try:
        make_bucket(server.endpoint_url, BUCKET)
        proxy = FlakyProxy(int(server.endpoint_url.rsplit(":", 1)[1]))
        yield server, proxy
    finally:
        if proxy is not None:
            proxy.close()
        local_services.stop(["s3"], state)


@pytest.fixture
def moto_env(flaky_s3, monkeypatch):
    """This process reads moto directly (s3fs through ImageStore), never through the proxy."""
    import s3fs

    server, _ = flaky_s3
    for name, value in {**server.env, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


# Seconds between storage attempts where S3 fails for good: a test waits out the whole schedule
# (3 s instead of the default 15.5 s) before the row fails.
SHORT_RETRIES = (0.2, 0.4, 0.8, 1.6)


def s3_job_env(proxy: FlakyProxy, retries: tuple[float, ...] | None = None) -> dict:
    """The job's environment to S3 through `proxy`, with another retry schedule if given."""
    from pipeline.storage import RETRY_DELAYS_ENV

    # Nothing here about botocore's or s3fs's retries: pipeline.storage turns them off, so the
    # job's own retries (with_retries) are what an outage meets, and what the logs show.
    env = job_env(**local_services.s3_env(proxy.url))
    if retries is not None:
        env[RETRY_DELAYS_ENV] = ",".join(map(str, retries))
    return env


def assert_done_images_load(output: str, ids: list[str]) -> None:
    """Every image with a _SUCCESS record has all its scale files, and they load."""
    from pipeline.storage import ImageStore

    for image_id in ids:
        store = ImageStore(output, image_id)
        record = store.success()
        if record is None:
            continue
        model = store.load_model("cpu")
        assert model is not None and model.is_complete, image_id
        assert model.num_scales == record["num_scales"] == len(model.scales), image_id


def down_for(proxy, mode: str, seconds: float) -> None:
    """Cut S3 (`mode`: "drop" or "hang") for `seconds`, then restore it."""
    proxy.cut(mode)
    try:
        time.sleep(seconds)
    finally:
        proxy.restore()


def down_until_failed(proxy, mode: str, job) -> float:
    """Cut S3 (`mode`: "reset" or "hang") until the job reports img0 failed, then restore it;
    the seconds it was down."""
    proxy.cut(mode)
    try:
        down = time.monotonic()
        wait_until(lambda: "failed img0" in job.output(), "failed row", job, timeout=120)
        return time.monotonic() - down
    finally:
        proxy.restore()


def test_s3_outage_outlasting_the_retries_fails_the_row_then_resumes(tmp_path, flaky_s3,
                                                                   moto_env):
    """The endpoint refuses connections for longer than the job's retries last: the row fails
    with a one-line reason and is not marked done; with the endpoint back, running the job again
    resumes at the last stored scale and finishes it."""
    import s3fs

    server, proxy = flaky_s3
    manifest = tiny_manifest(tmp_path / "images", 1)
    output = f"s3://{BUCKET}/outlasted"
    args = ["--manifest", str(manifest), "--output", output, "--no-tracking",
            "--max-retries", "0", *TINY_JOB]
    fs = s3fs.S3FileSystem()
    with DoneWatch(server.endpoint_url, "outlasted/") as watch, \
            Job(args, tmp_path / "job.log", s3_job_env(proxy, SHORT_RETRIES)) as job:
        wait_until(watch.first_scale.is_set, "first scale file", job)
        # Down until the driver reports the row: then it writes the results table.
        outage = down_until_failed(proxy, "reset", job)
        code, logs = job.wait()
    retries = RETRY_LINE.findall(logs)
    print(f"1 image, S3 down {outage:.1f} s, {len(retries)} retried storage operations logged "
          f"({sum(SHORT_RETRIES):g} s of back-off each)")
    assert code == 1, logs
    # The last pause of the schedule, jittered: 0.5 to 1.5 times its 1.6 s.
    assert re.search(rf"attempt {len(SHORT_RETRIES)}, retrying in [\d.]+s", logs), logs
    reason = re.search(r"failed img0: (.*)", logs).group(1)
    assert reason.startswith("TransientError: ") and "s3://" in reason, reason
    assert not watch.scales and not watch.violations  # never marked done
    assert not fs.exists(f"{BUCKET}/outlasted/img0/_SUCCESS")
    rows = results_table(output).to_pylist()
    assert [(r["image_id"], r["status"]) for r in rows] == [("img0", "failed")]
    assert "\n" not in rows[0]["error"]
    # The scales the failed attempt finished before the outage are kept: the rerun resumes there.
    model = f"{BUCKET}/outlasted/img0/model"
    finished = json.loads(fs.cat_file(f"{model}/config.json"))["finished_scales"]
    assert finished >= 1
    kept = {path: fs.info(path)["LastModified"]
            for path in (f"{model}/scale_{i:02d}.pt" for i in range(finished))}

    with DoneWatch(server.endpoint_url, "outlasted/") as watch, \
            Job(args, tmp_path / "again.log", s3_job_env(proxy)) as job:
        code, logs = job.wait()
    assert code == 0 and "1 trained" in logs, logs
    assert not watch.violations and watch.scales == {"img0": 4}
    fs.invalidate_cache()
    assert {path: fs.info(path)["LastModified"] for path in kept} == kept
    assert_done_images_load(output, ["img0"])


STORAGE_TIMEOUT = 3.0  # seconds per storage call in these tests (SINGAN_FLEET_STORAGE_TIMEOUT)


def test_s3_that_hangs_up_then_stalls_mid_job_is_retried(tmp_path, flaky_s3, moto_env):
    """One job meets two outages: first the endpoint hangs up on every request for a few
    seconds as the first scale is stored, then, once the job has stored more, it accepts
    connections and never answers for a while (reads and writes hang until the storage time
    limit cuts them). Every call is retried, the job finishes soon after the endpoint is back,
    every image is done, and at no moment is an image marked done without every scale file
    (checked by listing moto throughout)."""
    from pipeline.storage import TIMEOUT_ENV

    server, proxy = flaky_s3
    outage = 6.0  # seconds of hanging up: well inside with_retries' 15.5 s of back-off
    stall = 8.0  # seconds: each hung call times out after STORAGE_TIMEOUT and is retried
    ids = [f"img{i}" for i in range(4)]  # two rounds of two: the job outlasts both outages
    manifest = tiny_manifest(tmp_path / "images", len(ids))
    output = f"s3://{BUCKET}/retried"
    args = ["--manifest", str(manifest), "--output", output, "--no-tracking", *TINY_JOB]
    env = {**s3_job_env(proxy), TIMEOUT_ENV: str(STORAGE_TIMEOUT)}
    with DoneWatch(server.endpoint_url, "retried/") as watch, \
            Job(args, tmp_path / "job.log", env) as job:
        wait_until(watch.first_scale.is_set, "first scale file", job)
        down_for(proxy, "drop", outage)
        hung_up = RETRY_LINE.findall(job.output())
        listed = watch.listings
        wait_until(lambda: watch.listings > listed + 3, "listings after the first outage", job)
        down_for(proxy, "hang", stall)
        back = time.monotonic()
        code, logs = job.wait()
        after = time.monotonic() - back
    retries = RETRY_LINE.findall(logs)
    print(f"{len(ids)} images, S3 hung up for {outage:.0f} s ({len(hung_up)} retried storage "
          f"operations logged), then stalled {stall:.0f} s ({len(retries) - len(hung_up)} more); "
          f"{proxy.failed_connections} connections failed, {watch.listings} listings checked; "
          f"the job ended {after:.1f} s after the endpoint was back")
    assert code == 0, logs
    assert f"{len(ids)} trained" in logs
    assert hung_up, logs  # the first outage met the job's writes, which were retried
    assert "TimeoutError" in logs  # calls were cut by the time limit, then retried
    assert not watch.violations, watch.violations
    assert sorted(watch.scales) == ids
    assert_done_images_load(output, ids)
    table = results_table(output)
    assert set(table.column("status").to_pylist()) == {"done"}
    # The bound: a hung call ends within STORAGE_TIMEOUT, its retries back off at most 15.5 s,
    # and what is left of the tiny trainings takes a few seconds more.
    assert after < 60, after


def test_s3_that_never_answers_past_the_retries_fails_the_row_in_bounded_time(
        tmp_path, flaky_s3, moto_env):
    """Stalled for good: each attempt of a write is cut after the time limit, the operation's
    deadline passes, the row fails with a one-line reason (a TransientError naming the URL and
    the variable of the limit) and is not marked done, within the deadline (4 x STORAGE_TIMEOUT
    + 1.5 x 3 s of back-off) after the stall began."""
    import s3fs

    from pipeline.storage import DEADLINE_ATTEMPTS, JITTER, TIMEOUT_ENV

    server, proxy = flaky_s3
    manifest = tiny_manifest(tmp_path / "images", 1)
    output = f"s3://{BUCKET}/stalled-for-good"
    args = ["--manifest", str(manifest), "--output", output, "--no-tracking",
            "--max-retries", "0", *TINY_JOB]
    env = {**s3_job_env(proxy, SHORT_RETRIES), TIMEOUT_ENV: str(STORAGE_TIMEOUT)}
    bound = DEADLINE_ATTEMPTS * STORAGE_TIMEOUT + JITTER[1] * sum(SHORT_RETRIES)  # 16.5 s
    with DoneWatch(server.endpoint_url, "stalled-for-good/") as watch, \
            Job(args, tmp_path / "job.log", env) as job:
        wait_until(watch.first_scale.is_set, "first scale file", job)
        failed_after = down_until_failed(proxy, "hang", job)
        code, logs = job.wait()
    print(f"stalled S3: the row failed {failed_after:.1f} s after the stall began "
          f"(bound {bound:.1f} s plus the scale in progress)")
    assert code == 1, logs
    reason = re.search(r"failed img0: (.*)", logs).group(1)
    assert reason.startswith("TransientError: ") and "s3://" in reason, reason
    assert "no answer within" in reason and TIMEOUT_ENV in reason, reason
    assert not watch.scales and not watch.violations
    assert not s3fs.S3FileSystem().exists(f"{BUCKET}/stalled-for-good/img0/_SUCCESS")
    assert failed_after < bound + 20, failed_after
