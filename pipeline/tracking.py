"""MLflow tracking for the batch job, written so that tracking can never fail a training, and
so that a cluster's workers reach the shared tracking server at a steady, bounded rate.

Layout (README.md, "MLflow"): one experiment; a parent run per job; a child run per image tagged
`mlflow.parentRunId`, with the image's params, per-scale losses (key `sNN/<loss>`, step = the
iteration), per-scale values (`noise_amp`, `scale_seconds`, `sifid`, `patch_swd`; step = the
scale), each scale's sample picture and the final pictures and the task's outputs (sr/, animate/)
in MLflow's image views (log_image's files: a step slider per key, a comparison across runs), the
task's outputs (sr/, animate/) as artifacts, and the pyramid URL as a tag.

What reaches MLflow is bounded: the loss curves go there decimated (every MLFLOW_EVERY-th
iteration and the last), while the image's folder keeps them whole, one file per scale
(pipeline.recording); 3 x scales + 17 requests per image (50 at the paper preset's 11 scales:
the run, its artifact store, its params and tags, its input (the image), a batch of points and a
picture per scale, the final picture, the model (9: pipeline.mlflow_model), its summary metrics
and verdict, its end; a picture is two uploads, since MLflow's image views need a small WebP
beside the PNG; bench/fleet_scale.py counts them). The requests go
through one `Sender` per worker process: a background thread that sends them one at a time, each
scale's after a random delay of up to SEND_JITTER seconds, so that the images of a bucket, which
finish their scales together, and the buckets of a cluster do not reach the server in step, and
so that the training never waits for MLflow.

Whatever MLflow does not accept stays in the image's folder; `sync_image` (run by the worker at
the end of its bucket for the runs that missed something, and by `jobs/sync_tracking.py`) sends
what the server lacks, comparing (key, step, timestamp), so replaying twice never duplicates a
point.
"""

from __future__ import annotations

import fnmatch
import getpass
import hashlib
import heapq
import io
import itertools
import json
import logging
import os
import random
import re
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.ledger import Status
from pipeline.storage import ImageStore, redact
from singan.base import package_version
from singan.errors import one_line

logger = logging.getLogger(__name__)

BATCH = 1000  # MLflow's limit of metrics per log_batch call
TRACKING = "tracking.json"
# The files of an image's folder that its run holds as artifacts (same names), for the replay.
ARTIFACTS = ("sr/*.png", "animate/*/*.gif")
MLFLOW_EVERY = 100  # iterations between the loss points sent to MLflow (and the last one)
SEND_JITTER = 10.0  # seconds: the most a scale's requests wait before they are sent


def is_artifact(name: str) -> bool:
    """Whether the image's file `name` is also an artifact of its MLflow run (ARTIFACTS)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ARTIFACTS)


# --- pictures in MLflow's image views -------------------------------------------------------
#
# What MlflowClient.log_image(key=, step=) writes, done here instead of by it: it also sets the
# run's `mlflow.loggedImages` tag at every call (a third request per picture; ours goes with the
# params, once) and names its files by a random uuid, so a replay could not tell a picture
# already sent. Ours are named by their content: sending one again finds it there.

IMAGES = "images"  # the artifact folder MLflow's image views list
LOGGED_IMAGES_TAG = "mlflow.loggedImages"  # tells the UI to look there
COMPRESSED_SIDE = 256  # MLflow's: the views load a WebP at most this wide or high
_IMAGE_FILE = re.compile(r"(?P<key>[^+/]+)\+step\+(?P<step>\d+)\+timestamp\+(?P<timestamp>\d+)"
                         r"\+(?P<uid>[^+]+)(?P<compressed>\+compressed)?\.(?:png|webp)")
_SCALE_PICTURE = re.compile(r"samples/scale_(\d+)\.png")


def picture_of(name: str) -> tuple[str, int] | None:
    """The (image key, step) under which MLflow shows the image's file `name`, if it does: each
    scale's grid as key `samples` with the scale as the step, the final grid as `final`."""
    match = _SCALE_PICTURE.fullmatch(name)
    if match:
        return "samples", int(match.group(1))
    return ("final", 0) if name == "samples/final.png" else None


def image_files(key: str, step: int, png: bytes, timestamp: int | None = None,
                uid: str | None = None) -> dict[str, bytes]:
    """The two files of one picture in the run's images/ folder: the PNG, and the WebP the
    views load (COMPRESSED_SIDE). `uid` names them; by default it follows from the content."""
    from PIL import Image

    uid = uid or str(uuid.UUID(bytes=hashlib.sha256(png).digest()[:16]))
    stem = (f"{IMAGES}/{key.replace('/', '~')}+step+{step}"
            f"+timestamp+{now_ms() if timestamp is None else timestamp}+{uid}")
    with Image.open(io.BytesIO(png)) as image:
        small = image.convert("RGB")
        small.thumbnail((COMPRESSED_SIDE, COMPRESSED_SIDE))
        webp = io.BytesIO()
        small.save(webp, format="WEBP")
    return {f"{stem}.png": png, f"{stem}+compressed.webp": webp.getvalue()}


def logged_images(paths: Iterable[str]) -> dict[tuple[str, int], dict[str, str]]:
    """The pictures among a run's artifact `paths`: {(key, step): {"png"/"webp": path}}."""
    found: dict[tuple[str, int], dict[str, str]] = {}
    for path in paths:
        match = _IMAGE_FILE.fullmatch(path.rpartition("/")[2])
        if match and path.startswith(IMAGES + "/"):
            files = found.setdefault((match["key"].replace("~", "/"), int(match["step"])), {})
            files["webp" if match["compressed"] else "png"] = path
    return found


# MLflow's HTTP client retries up to 7 times with exponential back-off by default: minutes per
# call while a server is down. A training must not wait for its tracking, and what is not sent
# now is replayed later, so workers use a short leash unless the user chose otherwise.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 # Ending a run prints "View run ... at <tracking URI>": two lines per image in
                 # the workers' logs, with the URI's user:password@ when it has one.
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


# MLflow's own variables, as every MLflow client honours them: where the runs go when a job is
# not told, and into which experiment.
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
EXPERIMENT_VARIABLE = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "singan-fleet"


def default_tracking_uri() -> str | None:
    """$MLFLOW_TRACKING_URI, when set."""
    return os.environ.get(TRACKING_URI_VARIABLE) or None


def default_experiment() -> str:
    """$MLFLOW_EXPERIMENT_NAME, else singan-fleet."""
    return os.environ.get(EXPERIMENT_VARIABLE) or DEFAULT_EXPERIMENT


def now_ms() -> int:
    return int(time.time() * 1000)


def point(key: str, value: float, step: int, scale: int, *, mlflow: bool = True) -> dict:
    """One metric point as the image's folder keeps it: MLflow's fields, the scale it belongs
    to, and whether MLflow gets it too (a loss point between two sent ones does not)."""
    return {"key": key, "value": float(value), "step": int(step), "timestamp": now_ms(),
            "scale": int(scale), "mlflow": mlflow}


def client_for(tracking_uri: str):
    """An MlflowClient with the worker's HTTP defaults (imported late: mlflow is slow to import)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


# MLflow's UI opens an experiment in its GenAI view (traces, evaluation runs, prompts) unless
# told it holds model training: its "Machine learning" view lists the runs and their charts.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "singan-fleet: one parent run per job (kind = job: the manifest, the output, the "
        "settings, images done / failed / running as it goes, failed ids), one child run per "
        "image under it (params; per-scale losses sNN/d_loss, sNN/g_loss, ... every 100th "
        "iteration, with the iteration as step; noise_amp, scale_seconds, sifid, patch_swd with "
        "the scale as step; each scale's picture as image key samples, a step per scale, and the "
        "final one as final, in the chart view's image grids; the pyramid's URL in the tag "
        "pyramid_url; when it ends, summary metrics final/... to sort by, the tag quality, "
        "ok or suspect, with quality_reason, and the pyramid as the run's model, "
        "runs:/<run id>/model)."),
}


def experiment_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The page of an experiment (or of one run's charts) on an MLflow server, in the UI's
    model-training view: the UI opens in its GenAI view unless the link or the user asks."""
    page = f"/runs/{run_id}/model-metrics" if run_id else ""
    return (f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}{page}"
            "?workflowType=machine_learning")


def experiment_id_for(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created when missing (tagged EXPERIMENT_TAGS). Raises when
    the server is unreachable."""
    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifact_location,
                                                     tags=EXPERIMENT_TAGS)
            return experiment_id
        except Exception:  # created meanwhile by another driver
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    # An experiment made before these tags: add what it lacks (a user's own values are kept).
    for key, value in EXPERIMENT_TAGS.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id




class Sender:
    """Sends tracking requests from a background thread, one at a time, each when its delay is
    over (one Sender per process: `sender()`). A request that fails is the caller's business
    (ImageRun keeps what it did not send)."""

    def __init__(self):
        self._queue: list[tuple[float, int, Callable[[], None]]] = []  # (due, order, send)
        self._order = itertools.count()
        self._busy = False
        self._hurry = False
        self._wake = threading.Condition()
        self._random = random.Random()
        self._thread: threading.Thread | None = None

    def schedule(self, send: Callable[[], None], jitter: float = 0.0) -> None:
        """Run `send()` in the background after a random delay of up to `jitter` seconds."""
        with self._wake:
            due = time.monotonic() + self._random.uniform(0, jitter)
            heapq.heappush(self._queue, (due, next(self._order), send))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlflow-sender",
                                                daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Send everything queued now, without waiting for its delay; whether the queue emptied
        within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            self._hurry = True
            self._wake.notify_all()
            try:
                while self._queue or self._busy:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._wake.wait(left)
                return True
            finally:
                self._hurry = False

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue or (not self._hurry
                                          and self._queue[0][0] > time.monotonic()):
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._wake.wait(wait)
                _, _, send = heapq.heappop(self._queue)
                self._busy = True
            try:
                send()
            except Exception:  # noqa: BLE001 - a sender that dies would stall every run
                logger.exception("MLflow: a request failed unexpectedly")
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()


# After a failed request, a process sends nothing to that server for DOWN_SECONDS: when it is
# down, each request could wait out MLflow's HTTP timeout and retries (a minute), and the end of a
# bucket would wait for all of them. What is not sent is replayed from the image's folder.
DOWN_SECONDS = 30.0
_DOWN_UNTIL: dict[str, float] = {}


def server_down(tracking_uri: str) -> bool:
    """Whether a request to this server failed in this process within DOWN_SECONDS."""
    return time.monotonic() < _DOWN_UNTIL.get(tracking_uri, 0.0)


def mark_down(tracking_uri: str) -> None:
    """A request to this server just failed."""
    _DOWN_UNTIL[tracking_uri] = time.monotonic() + DOWN_SECONDS


def forget_down(tracking_uri: str) -> None:
    """Try this server again, whatever failed before."""
    _DOWN_UNTIL.pop(tracking_uri, None)


_SENDER: Sender | None = None
_SENDER_LOCK = threading.Lock()


def sender() -> Sender:
    """This process's Sender."""
    global _SENDER
    with _SENDER_LOCK:
        if _SENDER is None:
            _SENDER = Sender()
        return _SENDER


class ImageRun:
    """An image's child run, as a worker sees it. Opening it (at most two requests: find or
    create the run) happens at once; everything else is queued on the process's Sender. No
    method raises: a failure is logged once, what was not sent stays in the image's folder, and
    `complete` says whether everything reached the server."""

    def __init__(self, store: ImageStore, tracking_uri: str | None, experiment_id: str | None,
                 parent_run_id: str | None, experiment: str = DEFAULT_EXPERIMENT,
                 jitter: float = SEND_JITTER, log_model: bool = False,
                 register_model: str | None = None):
        self.store = store
        self.tracking_uri = tracking_uri
        self.experiment = experiment  # its name: used when the driver could not get the id
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.jitter = jitter
        # A finished image's pyramid becomes the run's MLflow model (pipeline.mlflow_model),
        # registered as a version of `register_model` when that is given.
        self.log_model, self.register_model = log_model, register_model
        self.client = None
        self.run_id: str | None = None
        self._pending: list[dict] = []  # points waiting for the next flush
        self._queued = 0  # requests of this run waiting in the Sender
        self._lock = threading.Lock()
        self.needs_sync = False  # something may be missing on the server: replay the folder
        self.failed = False
        if tracking_uri is None:
            return
        link = store.get_json(TRACKING) or {}
        same_server = link.get("tracking_uri") == tracking_uri
        self.run_id = link.get("run_id") if same_server else None
        self.claim = link.get("claim") if same_server else None  # see open_image_run
        self._call("open the run", self._open)

    @property
    def enabled(self) -> bool:
        return self.tracking_uri is not None

    @property
    def complete(self) -> bool:
        """Whether the server has everything logged so far (queued requests count as not)."""
        with self._lock:
            return not self.enabled or (self.run_id is not None and not self._pending
                                        and not self._queued and not self.needs_sync)

    def _call(self, what: str, fn, *args) -> bool:
        if server_down(self.tracking_uri):
            self.needs_sync = True  # no request while the server was just seen down
            return False
        try:
            if self.client is None:
                self.client = client_for(self.tracking_uri)
            fn(*args)
            return True
        except Exception as err:  # noqa: BLE001 - tracking must never fail a training
            if not self.failed:
                logger.warning("MLflow: cannot %s for %s (%s); it stays in %s and is sent later",
                               what, self.store.image_id, one_line(err), self.store.url)
            self.failed = True
            self.needs_sync = True
            mark_down(self.tracking_uri)
            return False

    def _open(self) -> None:
        created = False
        if self.run_id is None:
            if self.experiment_id is None:
                self.experiment_id = experiment_id_for(self.tracking_uri, self.experiment)
            link, created = open_image_run(self.client, self.store, self.link())
            self.run_id, self.claim = link["run_id"], link["claim"]
        if not created:
            # A retry reuses its run. The killed attempt may have stored points it never sent:
            # the worker's replay compares the folder with the server at the end of its bucket.
            self.client.update_run(self.run_id, status="RUNNING")
            self.needs_sync = True
            self._join_job()

    def _join_job(self) -> None:
        """A run reused by another job (an image resumed by the next job after a kill) moves
        under that job's run and lists every job it ran under (tag job_runs)."""
        if not self.parent_run_id:
            return
        tags = self.client.get_run(self.run_id).data.tags
        if tags.get("mlflow.parentRunId") == self.parent_run_id:
            return
        jobs = [j for j in tags.get("job_runs", tags.get("mlflow.parentRunId", "")).split(",") if j]
        _set_tags(self.client, self.run_id, {"mlflow.parentRunId": self.parent_run_id,
                                             "job_runs": ",".join([*jobs, self.parent_run_id])})

    def link(self, params: dict | None = None) -> dict:
        """What tracking.json holds: where the run lives, and the params to replay."""
        if params is None:  # keep those of tracking.json (a read only then)
            params = (self.store.get_json(TRACKING) or {}).get("params", {})
        return {"tracking_uri": self.tracking_uri, "experiment": self.experiment,
                "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "run_id": self.run_id, "claim": self.claim,
                "log_model": self.log_model, "register_model": self.register_model,
                "params": params}

    def _queue(self, what: str, fn, *args, jitter: float = 0.0) -> None:
        """Send `fn(client, run_id, *args)` through the Sender; a failure leaves needs_sync."""
        with self._lock:
            self._queued += 1

        def send() -> None:
            try:
                if self.run_id is None:
                    self._call("open the run", self._open)
                if self.run_id is not None:
                    self._call(what, lambda: fn(self.client, self.run_id, *args))
                else:
                    self.needs_sync = True
            finally:
                with self._lock:
                    self._queued -= 1
        sender().schedule(send, jitter)

    def log_params(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        """Record the params in tracking.json (for a replay), and send them, with `tags`, in
        one request, then the image as the run's input (image_dataset: one request)."""
        if not self.enabled:
            return
        self.store.put_json(TRACKING, self.link(params))
        self._queue("log params", _log_params, params, {LOGGED_IMAGES_TAG: "True", **(tags or {})})
        self._queue("log the input", _log_input, image_dataset(params))

    def log_points(self, points: Iterable[dict]) -> None:
        """Keep the points meant for MLflow; the next `flush` sends them."""
        if self.enabled:
            with self._lock:
                self._pending.extend(p for p in points if p.get("mlflow", True))

    def flush(self, jitter: float | None = None) -> None:
        """Send the kept points (in batches of BATCH) after a random delay of up to `jitter`
        seconds (the run's, SEND_JITTER, by default)."""
        with self._lock:
            points, self._pending = self._pending, []
        if self.enabled and points:
            self._queue("log metrics", _log_points_batched, points,
                        jitter=self.jitter if jitter is None else jitter)

    def log_artifact(self, name: str, data: bytes, jitter: float | None = None) -> None:
        """Upload `data` as artifact `name` (e.g. samples/scale_03.png) of the run."""
        if self.enabled:
            self._queue("upload " + name, _log_bytes, name, data,
                        jitter=self.jitter if jitter is None else jitter)

    def log_picture(self, key: str, step: int, png: bytes, jitter: float | None = None) -> None:
        """Show the PNG `png` in the run's image views under `key` at `step` (two uploads)."""
        if self.enabled:
            self._queue(f"upload picture {key} {step}", _log_picture, key, step, png,
                        jitter=self.jitter if jitter is None else jitter)

    def finish(self, status: str, tags: dict[str, str] | None = None,
               metrics: dict[str, float] | None = None) -> None:
        """Send what is kept; when FINISHED, log the pyramid as the run's model (if asked);
        then tag the run, log its summary `metrics` (one request for both, linked to the model)
        and end it (FINISHED or FAILED)."""
        if not self.enabled:
            return
        self.flush(jitter=0.0)
        self._queue("end the run", self._end, tags or {}, status, metrics or {},
                    self.log_model and status == "FINISHED")

    def _end(self, client, run_id: str, tags: dict[str, str], status: str,
             metrics: dict[str, float], model: bool) -> None:
        model_id = None
        if model:
            experiment_id = self.experiment_id or client.get_run(run_id).info.experiment_id
            model_id = _log_model(client, run_id, experiment_id, self.store,
                                  self.register_model)
        _end_run(client, run_id, tags, status, metrics, model_id)


def open_image_run(client, store: ImageStore, link: dict) -> tuple[dict, bool]:
    """The image's run on link's server and experiment: (tracking.json as now written, whether
    the run was created).

    A worker killed between creating its run and recording the id would leave a run its retry
    cannot see, and the image would get a second one. So tracking.json first records a fresh
    claim, the run carries it as a tag, and a retry that finds a claim but no run id looks the
    run up by it.
    """
    claim = link.get("claim")
    if claim:
        found = client.search_runs([link["experiment_id"]], f"tags.claim = '{claim}'",
                                   max_results=1)
        if found:
            link = {**link, "run_id": found[0].info.run_id}
            store.put_json(TRACKING, link)
            return link, False
    link = {**link, "run_id": None, "claim": uuid.uuid4().hex}
    store.put_json(TRACKING, link)
    run_id = create_image_run(client, link["experiment_id"], store.image_id,
                              link.get("parent_run_id"), link["claim"])
    link = {**link, "run_id": run_id}
    store.put_json(TRACKING, link)
    return link, True


def create_image_run(client, experiment_id: str, image_id: str, parent_run_id: str | None,
                     claim: str) -> str:
    """An image's child run (named and tagged by its id, under the job's run); its id."""
    tags = {"image_id": image_id, "claim": claim}
    if parent_run_id:
        tags["mlflow.parentRunId"] = tags["job_runs"] = parent_run_id
    return client.create_run(experiment_id, tags=tags, run_name=image_id).info.run_id


def _log_params(client, run_id: str, params: dict[str, Any],
                tags: dict[str, str] | None = None) -> None:
    from mlflow.entities import Param, RunTag

    # redact: an image's uri or the manifest's URL may hold user:password@ (HTTP basic auth).
    items = [Param(k, redact(str(v))) for k, v in params.items()]
    labels = [RunTag(k, redact(str(v))) for k, v in (tags or {}).items()]
    for first in range(0, max(len(items), 1), 100):  # MLflow's limit of params per batch
        client.log_batch(run_id, params=items[first:first + 100],
                         tags=labels if first == 0 else [], synchronous=True)


def dataset(name: str, url: str, profile: dict[str, Any], schema: dict | None = None):
    """An MLflow dataset for what a run read at `url` (its Dataset column in the UI): named
    `name`, its source type the URL's scheme (s3, gs, http, ...; local for files), its digest
    a hash of the URL and the profile."""
    from mlflow.entities import Dataset

    url = redact(url)
    scheme = url.split("://", 1)[0] if "://" in url else "local"
    digest = hashlib.sha256(json.dumps([url, profile], sort_keys=True, default=str).encode())
    return Dataset(name=name, digest=digest.hexdigest()[:16],
                   source_type="local" if scheme == "file" else scheme,
                   source=json.dumps({"uri": url}), profile=json.dumps(profile, default=str),
                   schema=json.dumps(schema) if schema else None)


def image_dataset(params: dict[str, Any]):
    """The training image of an image run, from its params (image_id, uri, height, width)."""
    return dataset(str(params.get("image_id", "image")), str(params.get("uri", "")),
                   {k: params[k] for k in ("height", "width") if k in params})


def _log_input(client, run_id: str, data, context: str = "training") -> None:
    from mlflow.entities import DatasetInput, InputTag

    client.log_inputs(run_id, [DatasetInput(data, [InputTag("mlflow.data.context", context)])])


def _log_points(client, run_id: str, points: list[dict]) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(p["key"], p["value"], p["timestamp"], p["step"]) for p in points]
    client.log_batch(run_id, metrics=metrics, synchronous=True)


def _log_points_batched(client, run_id: str, points: list[dict]) -> None:
    for first in range(0, len(points), BATCH):
        _log_points(client, run_id, points[first:first + BATCH])


def _set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()],
                     synchronous=True)


def _end_run(client, run_id: str, tags: dict[str, str], status: str,
             metrics: dict[str, float] | None = None, model_id: str | None = None) -> None:
    if tags or metrics:
        _log_summary(client, run_id, tags, metrics or {}, model_id)
    client.set_terminated(run_id, status)


def _log_summary(client, run_id: str, tags: dict[str, str], metrics: dict[str, float],
                 model_id: str | None = None) -> None:
    """Tags and summary metrics (step 0; the model's metrics when `model_id` is given) in one
    request."""
    from mlflow.entities import Metric, RunTag

    stamp = now_ms()
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0, model_id=model_id)
                                      for k, v in metrics.items()],
                     tags=[RunTag(k, redact(str(v))) for k, v in tags.items()], synchronous=True)


def _log_model(client, run_id: str, experiment_id: str, store: ImageStore,
               register_as: str | None) -> str:
    """The image's pyramid as the run's model (9 requests; 1-3 more to register it)."""
    from pipeline import mlflow_model

    model_id = mlflow_model.log(client, run_id, experiment_id, store.url_of("model"))
    if register_as:
        mlflow_model.register(client, register_as, model_id, run_id, store.image_id)
    return model_id


def _log_bytes(client, run_id: str, name: str, data: bytes) -> None:
    folder, _, filename = name.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        client.log_artifact(run_id, str(path), folder or None)


def _log_picture(client, run_id: str, key: str, step: int, png: bytes) -> None:
    for name, data in image_files(key, step, png).items():
        _log_bytes(client, run_id, name, data)


# --- the points an image's folder keeps -----------------------------------------------------

METRICS = "metrics"  # the folder of the points: one file per scale, written once
LEGACY_METRICS = "metrics.jsonl"  # one file rewritten at every scale, before version 0.2


def points_file(scale: int) -> str:
    """The name of the file that holds scale `scale`'s points in the image's folder."""
    return f"{METRICS}/scale_{scale:02d}.jsonl"


def points_bytes(points: Iterable[dict]) -> bytes:
    return "".join(json.dumps(p, sort_keys=True) + "\n" for p in points).encode()


def stored_points(store: ImageStore) -> list[dict]:
    """Every point the image's folder keeps, the scales in order (one LIST, one GET a scale)."""
    names = sorted(name for page in store.iter_names(f"{METRICS}/") for name in page)
    if not names:
        names = [LEGACY_METRICS]
    points = []
    for name in names:
        data = store.get(name) or b""
        points += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return points


# --- replay ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncReport:
    image_id: str
    run_id: str | None
    points_sent: int
    artifacts_sent: int
    created_run: bool


def sync_image(store: ImageStore, tracking_uri: str | None = None) -> SyncReport | None:
    """Send to MLflow whatever of this image's stored points, params and pictures it lacks.

    Uses the server recorded in tracking.json unless `tracking_uri` is given. Creates the run if
    the training never reached the server. Returns None for an image that was never tracked.
    Raises when the server cannot be reached (the caller reports it and may try again later).
    """
    link = store.get_json(TRACKING)
    if link is None:
        return None
    uri = tracking_uri or link["tracking_uri"]
    client = client_for(uri)
    run_id, created = link.get("run_id"), False
    if run_id is None or uri != link["tracking_uri"]:
        experiment_id = link.get("experiment_id") if uri == link["tracking_uri"] else None
        experiment_id = experiment_id or experiment_id_for(uri, link.get("experiment", DEFAULT_EXPERIMENT))
        claim = link.get("claim") if uri == link["tracking_uri"] else None
        link, created = open_image_run(client, store, {**link, "tracking_uri": uri,
                                                       "experiment_id": experiment_id,
                                                       "claim": claim})
        run_id = link["run_id"]

    run = client.get_run(run_id)
    missing_params = {k: v for k, v in link.get("params", {}).items() if k not in run.data.params}
    if missing_params:
        _log_params(client, run_id, missing_params)
    if link.get("params") and not run.inputs.dataset_inputs:
        _log_input(client, run_id, image_dataset(link["params"]))

    points = [p for p in stored_points(store) if p.get("mlflow", True)]
    sent = set()
    # Only the keys the run has are asked for their history (a request each); the others are
    # sent whole.
    for key in {p["key"] for p in points} & set(run.data.metrics):
        sent |= {(key, m.step, m.timestamp) for m in client.get_metric_history(run_id, key)}
    missing = [p for p in points if (p["key"], p["step"], p["timestamp"]) not in sent]
    _log_points_batched(client, run_id, missing)

    uploaded: dict[str, set[str]] = {}  # by folder
    artifacts = 0
    names = sorted(name for page in store.iter_names() for name in page)
    for name in (name for name in names if is_artifact(name)):
        folder = name.rpartition("/")[0]
        if folder not in uploaded:
            uploaded[folder] = {f.path for f in client.list_artifacts(run_id, folder)}
        if name not in uploaded[folder]:
            _log_bytes(client, run_id, name, store.get(name))
            artifacts += 1
    artifacts += _replay_pictures(client, run_id, store, names,
                                  tagged=LOGGED_IMAGES_TAG in run.data.tags)

    done = store.success()
    if done is not None:
        if run.data.tags.get("pyramid_url") is None:
            _set_tags(client, run_id, {"pyramid_url": store.url_of("model")})
        models = [output.model_id for output in (run.outputs.model_outputs if run.outputs else [])]
        if link.get("log_model") and not models:
            models = [_log_model(client, run_id, run.info.experiment_id, store,
                                 link.get("register_model"))]
        summary = {k: v for k, v in (done.get("summary") or {}).items()
                   if k not in run.data.metrics}
        verdict = {k: str(done[k]) for k in ("quality", "quality_reason", "retrained")
                   if done.get(k) is not None and k not in run.data.tags}
        if summary or verdict:
            _log_summary(client, run_id, verdict, summary, models[0] if models else None)
        if run.info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")
    return SyncReport(store.image_id, run_id, len(missing), artifacts, created)


def _replay_pictures(client, run_id: str, store: ImageStore, names: list[str],
                     tagged: bool) -> int:
    """Send the pictures the run's image views lack (a half-sent one gets its other file, under
    the same name); the number of files sent."""
    pictures = {name: picture for name in names if (picture := picture_of(name))}
    if not pictures:
        return 0
    if not tagged:
        _set_tags(client, run_id, {LOGGED_IMAGES_TAG: "True"})
    logged = logged_images(f.path for f in client.list_artifacts(run_id, IMAGES))
    sent = 0
    for name, (key, step) in pictures.items():
        have = logged.get((key, step), {})
        if len(have) == 2:
            continue
        naming = {}
        if have:  # keep the name (timestamp and uid) of the half that is there
            match = _IMAGE_FILE.fullmatch(next(iter(have.values())).rpartition("/")[2])
            naming = {"timestamp": int(match["timestamp"]), "uid": match["uid"]}
        for path, data in image_files(key, step, store.get(name), **naming).items():
            if path not in have.values():
                _log_bytes(client, run_id, path, data)
                sent += 1
    return sent


# --- the job's parent run -------------------------------------------------------------------

# A job's driver logs this metric every HEARTBEAT_SECONDS; a RUNNING job run without one for
# STALE_SECONDS, or whose driver process on this machine is gone, was killed.
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0


def context_tags(source: str) -> dict[str, str]:
    """MLflow's own tags for who ran what, which runs made through the client lack: the user,
    the entry point (`source`), the git commit of the code when it runs from a checkout (not
    under `ray job submit --working-dir`, which uploads no .git), and the package version."""
    tags = {"mlflow.user": _user(), "mlflow.source.name": source, "mlflow.source.type": "JOB",
            "singan_fleet.version": package_version()}
    commit = _git_commit(Path(__file__).resolve().parents[1])
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in a container without /etc/passwd entry
        return "unknown"


def _git_commit(root: Path) -> str | None:
    """The commit checked out at `root`, when it is a git checkout and git is there."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def tag_run(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Add `tags` to a run; tracking trouble is only logged."""
    try:
        _set_tags(client_for(tracking_uri), run_id, tags)
    except Exception as err:  # noqa: BLE001
        logger.warning("MLflow: cannot tag the run %s (%s)", run_id, one_line(err))


def start_job_run(tracking_uri: str, experiment: str, artifact_location: str | None,
                  params: dict[str, Any], tags: dict[str, str] | None = None,
                  manifest=None) -> tuple[str, str]:
    """Create the job's parent run (with `tags`: context_tags; `manifest`: the dataset it
    reads, its input); returns (experiment id, run id). Raises when unreachable.

    Earlier jobs' runs on the same output that are still RUNNING but whose driver is gone
    (killed: it never ended them) are ended as KILLED, tagged with the run that superseded them.
    """
    experiment_id = experiment_id_for(tracking_uri, experiment, artifact_location)
    client = client_for(tracking_uri)
    run = client.create_run(experiment_id, tags={**(tags or {}), "kind": "job",
                                                 "driver_host": socket.gethostname(),
                                                 "driver_pid": str(os.getpid())},
                            run_name=f"job {time.strftime('%Y-%m-%d %H:%M:%S')}")
    _log_params(client, run.info.run_id, params)
    if manifest is not None:
        _log_input(client, run.info.run_id, manifest)
    heartbeat(client, run.info.run_id, 0.0)
    end_abandoned_job_runs(client, experiment_id, params.get("output"), run.info.run_id)
    return experiment_id, run.info.run_id


def heartbeat(client, run_id: str, seconds: float, counts: dict[str, int] | None = None) -> None:
    """The driver is alive: the `heartbeat` metric (seconds since the job started), and the
    job's progress so far (`images_done`, `images_failed`, `images_running`, ...: `counts`), all
    with the job's whole seconds as step, so that their charts move during the job."""
    from mlflow.entities import Metric

    stamp, step = now_ms(), int(seconds)
    metrics = [Metric("heartbeat", seconds, stamp, step)]
    metrics += [Metric(f"images_{name}", value, stamp, step)
                for name, value in (counts or {}).items()]
    client.log_batch(run_id, metrics=metrics, synchronous=True)


def end_abandoned_job_runs(client, experiment_id: str, output: str | None,
                           superseded_by: str) -> list[str]:
    """End as KILLED the RUNNING job runs of `output` whose driver is gone; their ids."""
    if output is None:
        return []
    running = client.search_runs([experiment_id], "tags.kind = 'job' and "
                                 "attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in running:
        if run.info.run_id == superseded_by or run.data.params.get("output") != redact(output):
            continue
        if _driver_alive(client, run):
            continue
        _set_tags(client, run.info.run_id, {"superseded_by": superseded_by})
        client.set_terminated(run.info.run_id, "KILLED")
        logger.info("MLflow: job run %s had no live driver: ended as KILLED", run.info.run_id)
        ended.append(run.info.run_id)
    return ended


def _driver_alive(client, run) -> bool:
    """Whether a job run's driver still runs: its process, when it ran on this machine; else
    a heartbeat within STALE_SECONDS (or a start that recent, for runs of older versions)."""
    tags = run.data.tags
    if tags.get("driver_host") == socket.gethostname() and tags.get("driver_pid"):
        try:
            command = Path(f"/proc/{int(tags['driver_pid'])}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        return b"train_manifest" in command
    beats = client.get_metric_history(run.info.run_id, "heartbeat")
    last = max((beat.timestamp for beat in beats), default=run.info.start_time or 0)
    return (now_ms() - last) / 1000 < STALE_SECONDS


def end_job_run(tracking_uri: str, run_id: str, counts: dict[str, int], failed: list[str],
                seconds: float, params: dict[str, Any] | None = None) -> None:
    """Totals (`counts`: images done, skipped, failed, ...) and the ids of failed images (the
    first ones: a tag holds 8000 characters) on the parent run, and `params` known only at the
    end, then end it; tracking trouble is only logged."""
    from mlflow.entities import Metric

    try:
        client = client_for(tracking_uri)
        stamp, step = now_ms(), int(seconds)
        client.log_batch(run_id, metrics=[
            *(Metric(f"images_{k}", v, stamp, step) for k, v in counts.items()),
            Metric("job_seconds", seconds, stamp, 0)], synchronous=True)
        if params:
            _log_params(client, run_id, params)
        if failed:  # MLflow tags hold at most 8000 characters
            _set_tags(client, run_id, {"failed_ids": ",".join(failed)[:8000]})
        client.set_terminated(run_id, "FAILED" if counts.get(Status.FAILED) else "FINISHED")
    except Exception as err:  # noqa: BLE001
        logger.warning("MLflow: cannot close the job run %s (%s)", run_id, one_line(err))
