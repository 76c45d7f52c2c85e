"""Train one manifest row: the function the training job fans out, one Ray task per image.

It reads the image through fsspec, trains (resuming at the last finished scale), writes the
image's output layout (singan.outputs, the files the `singan` command writes too, plus
metrics.jsonl, tracking.json and _SUCCESS) as it goes, makes the row's task outputs
(pipeline.tasks), tracks to MLflow, and returns an `ImageResult`. Runs in any process:
the tests call it directly, the job calls it as a Ray task.

What can go wrong, and what happens:
- a bad image or bad settings (InputError), or a bug: the row fails with a one-line reason in its
  result, and is not retried (retrying would fail the same way);
- storage that keeps failing (TransientError): raised, so that Ray retries the task, and the
  retry resumes at the last finished scale;
- the worker dies (killed, out of memory, node lost): Ray retries it the same way;
- MLflow down: nothing; the points stay in metrics.jsonl and are replayed later.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import statistics
import time
import traceback
from dataclasses import asdict, dataclass

import torch

from pipeline import tasks
from pipeline.manifest import ImageTask
from pipeline.results import Status
from pipeline.storage import ImageStore, TransientError, read_url, redact
from pipeline.tracking import TRACKING, ImageRun, MetricsLog, is_artifact, point
from singan import outputs
from singan.api import plan, sample, train_many
from singan.base import Callback, Diverged, IterationLog, Pyramid, package_version
from singan.config import Config
from singan.errors import InputError, one_line
from singan.image import load_image
from singan.quality import nn_patch_distance, patch_swd
from singan.sifid import InceptionStem, load_stem, sifid

logger = logging.getLogger(__name__)

# Test-only fault switch: SIGKILL the worker right after scale K is stored, once per image (a
# marker file in the image folder says it already fired), to prove that the retry resumes there.
FAULT_ENV = "SINGAN_FLEET_KILL_AFTER_SCALE"
FAULT_MARKER = ".fault-fired"

LOSSES = ("d_real", "d_fake", "gradient_penalty", "g_adv", "reconstruction")


@dataclass(frozen=True)
class JobSettings:
    """What every image of a job shares."""

    output: str  # output root URL
    tracking_uri: str | None = None  # None: no tracking
    experiment: str = "singan-fleet"
    experiment_id: str | None = None  # None: looked up (or created) by name
    parent_run_id: str | None = None
    num_samples: int = 8  # final random samples written per image
    sifid_samples: int = 4  # samples per scale for its SIFID (when Inception weights are given)
    quality_samples: int = 2  # samples per scale for the weight-free patch metrics; 0 = none
    device: str | None = None  # default: CUDA when the task got a GPU, else CPU
    # Names the job in each _SUCCESS it writes: an image finished by an earlier attempt of this
    # job's task (a retried bucket) is reported done, not "already done".
    job_id: str | None = None


@dataclass(frozen=True)
class ImageResult:
    """One row of the job's results table."""

    image_id: str
    status: Status  # done, skipped (already done with the same settings) or failed
    error: str | None
    num_scales: int | None
    seconds: float
    sifid: float | None  # final SIFID, when the SIFID metric is available
    mlflow_run_id: str | None
    output_url: str
    tracking_complete: bool = True  # False: some points or pictures still wait for a sync
    task: str = tasks.DEFAULT  # the row's task (pipeline.tasks)

    def to_dict(self) -> dict:
        return asdict(self)


# The Config fields of the first stored trainings. A field added since is left out of the
# identity while it keeps its default, so that a package that gains fields does not retrain the
# images it already finished (their hash is unchanged); away from its default it counts.
FIRST_CONFIG_FIELDS = frozenset((
    "min_size", "max_size", "scale_factor", "num_scales", "nfc", "max_nfc", "nfc_double_every",
    "num_layer", "kernel_size", "leaky_slope", "init_std", "niter", "lr_g", "lr_d", "beta1",
    "beta2", "gamma", "lr_milestone", "d_steps", "g_steps", "lambda_grad", "alpha", "noise_amp",
    "log_every"))


def config_hash(task: ImageTask) -> str:
    """Identifies a training: the settings, the seed, the source image's URL, and for a task
    other than `train` the task and its parameters (a plain training keeps the hash it had
    before tasks existed)."""
    defaults = Config().to_dict()
    settings = {name: value for name, value in task.config.to_dict().items()
                if name in FIRST_CONFIG_FIELDS or value != defaults[name]}
    identity = {"config": settings, "seed": task.seed, "uri": task.uri}
    added = tasks.task_named(task.task).identity(task.params)
    if added:
        identity.update(task=added["task"], params=task.params)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def train_image(task: ImageTask, job: JobSettings, inception: dict | None = None) -> ImageResult:
    """Train (or resume, or skip) one image; see the module docstring for failure handling.

    `inception`: the Inception stem's weights (pipeline.inception.stem_weights); with them, the
    SIFID of every scale is logged. None skips SIFID.
    """
    return train_bucket([task], job, inception)[0]


def train_bucket(bucket: list[ImageTask], job: JobSettings,
                 inception: dict | None = None) -> list[ImageResult]:
    """Train (or resume, or skip) a bucket of rows; one result per row, in order.

    Rows whose training plans are equal (the driver buckets them so) and that stopped at the
    same scale train together (singan.train_many); everything else stays per image: its folder,
    scale files as each scale finishes, its MLflow run, _SUCCESS. Rows already done are skipped,
    a bad image or a training whose losses diverge fails its own row, and storage that keeps
    failing raises TransientError for the whole bucket (Ray retries it; every image resumes at
    its last stored scale).
    """
    start = time.perf_counter()
    device = torch.device(job.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict[int, ImageResult] = {}
    ready: list[Prepared] = []
    for index, task in enumerate(bucket):
        outcome = _guarded(task, job, start, lambda t=task: _prepare(t, job, device, inception))
        if isinstance(outcome, ImageResult):
            results[index] = outcome
        else:
            ready.append(outcome)
            outcome.index = index

    # Images of equal settings, plan and progress train together.
    groups: dict[tuple, list[Prepared]] = {}
    for item in ready:
        key = (item.config, plan(*item.image.shape[-2:], item.config),
               len(item.resume.scales) if item.resume is not None else 0)
        groups.setdefault(key, []).append(item)
    for group in groups.values():
        models = _guarded_group(group, job, start, device)
        for item, model in zip(group, models, strict=True):
            results[item.index] = model if isinstance(model, ImageResult) else _guarded(
                item.task, job, start, lambda i=item, m=model: _finish(i, m, job, start))
    return [results[index] for index in range(len(bucket))]


@dataclass
class Prepared:
    """A row ready to train: its image, training config, resume point, run and recorder."""

    task: ImageTask
    store: ImageStore
    image: torch.Tensor
    config: Config
    resume: Pyramid | None
    run: ImageRun
    recorder: StoreScales
    index: int = 0


def _failed(task: ImageTask, job: JobSettings, start: float, reason: str) -> ImageResult:
    store = ImageStore(job.output, task.image_id)
    link = store.get_json(TRACKING) or {}
    return ImageResult(task.image_id, Status.FAILED, reason, None, time.perf_counter() - start,
                       None, link.get("run_id"), store.url, task=task.task)


def _guarded(task: ImageTask, job: JobSettings, start: float, step):
    """step(), with a bad input or a bug turned into the row's failed result."""
    try:
        return step()
    except TransientError:
        raise  # Ray retries the task; the retry resumes at the last finished scale
    except InputError as err:
        logger.warning("%s: %s", task.image_id, err)
        return _failed(task, job, start, one_line(err))
    except Exception as err:  # noqa: BLE001 - a bug or a device error fails this row only
        logger.error("%s failed:\n%s", task.image_id, traceback.format_exc())
        return _failed(task, job, start, one_line(err))


def _guarded_group(group: list[Prepared], job: JobSettings, start: float,
                   device: torch.device) -> list[Pyramid | ImageResult]:
    """The group's models, trained together; a bug fails every row of the group, each with
    its run ended as FAILED."""
    try:
        return _train_group(group, job, device)
    except TransientError:
        raise
    except Exception as err:  # noqa: BLE001
        logger.error("a bucket of %d failed:\n%s", len(group), traceback.format_exc())
        for item in group:
            item.run.finish("FAILED", tags={"error": one_line(err)})
        return [_failed(item.task, job, start, one_line(err)) for item in group]


def _prepare(task: ImageTask, job: JobSettings, device: torch.device,
             inception: dict | None) -> Prepared | ImageResult:
    store = ImageStore(job.output, task.image_id)
    digest = config_hash(task)
    done = store.success()
    if done is not None and done.get("config_hash") == digest:
        ours = job.job_id is not None and done.get("job_id") == job.job_id
        return ImageResult(task.image_id, Status.DONE if ours else Status.SKIPPED, None,
                           done.get("num_scales"), done.get("seconds", 0.0) if ours else 0.0,
                           done.get("sifid"), done.get("run_id"), store.url, task=task.task)

    # 1. The image, through fsspec, and the config it trains with (super-resolution derives it
    #    from the image's size). A bad image fails the row in step 3, once its MLflow run
    #    exists, so that it shows there too.
    image = train_config = bad_input = None
    try:
        image = _read_image(task)
        train_config = tasks.task_named(task.task).training_config(task.config, task.params,
                                                                   *image.shape[-2:])
    except InputError as err:
        bad_input = err

    # 2. Resume what a previous attempt stored with the same settings; otherwise start clean,
    #    so that no file of another training is mixed into this one. (With a bad image only a
    #    finished training of other settings is cleared: a partial one may resume later.)
    resume = None if bad_input else _resumable(store, task, train_config, device)
    if done is not None or (resume is None and bad_input is None
                            and store.exists("model/config.json")):
        logger.info("%s: settings changed; retraining from scratch", task.image_id)
        store.remove_all()
    finished = len(resume.scales) if resume is not None else 0
    metrics = MetricsLog.load(store, keep_scales=finished)

    # 3. The MLflow run (reused when a previous attempt created one); a failure ends it as
    #    FAILED with the reason, so that bad images show in MLflow too.
    run = ImageRun(store, job.tracking_uri, job.experiment_id, job.parent_run_id, job.experiment)
    try:
        if bad_input is not None:
            raise bad_input
        stem = load_stem(inception, device=device) if inception and job.sifid_samples else None
        height, width = image.shape[-2:]
        run.log_params({"image_id": task.image_id, "uri": task.uri, "height": height,
                        "width": width, "seed": task.seed, "config_hash": digest,
                        **_task_fields(task),
                        **{f"config.{k}": v for k, v in train_config.to_dict().items()}})
        if resume is not None:
            logger.info("%s: resuming at scale %d", task.image_id, len(resume.scales))
    except BaseException as err:
        run.finish("FAILED", tags={"error": one_line(err)})
        raise
    return Prepared(task, store, image, train_config, resume, run,
                    StoreScales(store, run, metrics, job, stem))


def _train_group(group: list[Prepared], job: JobSettings,
                 device: torch.device) -> list[Pyramid | ImageResult]:
    """4. Train the group together, each image storing its scales as they finish."""
    resume = [item.resume for item in group] if group[0].resume is not None else None
    return train_many([item.image for item in group], group[0].config,
                      seeds=[item.task.seed for item in group], device=device,
                      callbacks=[[item.recorder] for item in group], resume=resume)


def _finish(item: Prepared, model: Pyramid, job: JobSettings, start: float) -> ImageResult:
    """5. The final pictures and the task's outputs, then _SUCCESS (only now is it done)."""
    task, store, run, recorder = item.task, item.store, item.run, item.recorder
    try:
        if model.failure is not None:
            raise Diverged(model.failure)
        folder = TrackedFolder(store, run)
        outputs.write_final(model, folder, job.num_samples)
        names = tasks.task_named(task.task).write_outputs(model, folder, task.params)
        if names:
            logger.info("%s: %s written", task.image_id, ", ".join(names))
    except BaseException as err:
        run.finish("FAILED", tags={"error": one_line(err)})
        raise
    run.finish("FINISHED", tags={"pyramid_url": store.url_of("model")})
    seconds = time.perf_counter() - start
    store.mark_success({"run_id": run.run_id, "config_hash": config_hash(task),
                        "num_scales": model.num_scales, "seconds": round(seconds, 3),
                        "uri": task.uri, "sifid": recorder.sifid,
                        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "job_id": job.job_id, "package_version": package_version(),
                        **_task_fields(task)})
    return ImageResult(task.image_id, Status.DONE, None, model.num_scales, seconds, recorder.sifid,
                       run.run_id, store.url, run.complete, task=task.task)


def _task_fields(task: ImageTask) -> dict:
    """The task and its parameters, for _SUCCESS and the run's params (pipeline.tasks)."""
    return tasks.task_named(task.task).identity(task.params)


def _read_image(task: ImageTask) -> torch.Tensor:
    """The row's image, through fsspec. The name makes load_image's errors name the URL (without
    any user:password@ in it: the reason goes to the logs, the results and MLflow)."""
    try:
        source = io.BytesIO(read_url(task.uri))
    except FileNotFoundError as err:
        raise InputError(f"{redact(task.uri)}: no such file") from err
    source.name = redact(task.uri)
    return load_image(source)


class TrackedFolder:
    """The image's folder for singan.outputs: every file goes to the store, and the pictures
    MLflow shows (tracking.ARTIFACTS) to the image's run as well."""

    def __init__(self, store: ImageStore, run: ImageRun):
        self.store, self.run = store, run

    def put(self, name: str, data: bytes) -> None:
        self.store.put(name, data)
        if is_artifact(name):
            self.run.log_artifact(name, data)


def _resumable(store: ImageStore, task: ImageTask, train_config: Config,
               device: torch.device) -> Pyramid | None:
    """The partial model stored for this image, when it was trained with these settings."""
    if store.success() is not None:
        return None  # a finished training with other settings: retrain
    try:
        model = store.load_model(device)
    except InputError as err:
        logger.warning("%s: stored model unreadable (%s); retraining", task.image_id, err)
        return None
    if model is None or model.config != train_config or model.seed != task.seed:
        return None
    return model if len(model.scales) else None


class StoreScales(Callback):
    """Stores every finished scale (model file, real, sample grid, metrics) and tracks it."""

    def __init__(self, store: ImageStore, run: ImageRun, metrics: MetricsLog, job: JobSettings,
                 stem: InceptionStem | None = None):
        self.store, self.run, self.metrics, self.job, self.stem = store, run, metrics, job, stem
        self.scale_start = 0.0
        self.noise_amp = 0.0
        # The SIFID of the latest scale; after training, the finest scale's (the final SIFID).
        self.sifid: float | None = None

    def on_scale_start(self, model: Pyramid, scale: int, noise_amp: float) -> None:
        self.scale_start = time.perf_counter()
        self.noise_amp = noise_amp

    def scale_metrics(self, model: Pyramid) -> dict[str, float]:
        """SIFID (with Inception weights) and the patch metrics of samples at the finest finished
        scale against its real image, each the mean over the samples."""
        num = max(self.job.sifid_samples if self.stem else 0, self.job.quality_samples)
        if num == 0:
            return {}
        scale = len(model.scales) - 1
        rng = torch.Generator(device=model.device).manual_seed(model.seed + 7919 * (scale + 1))
        fakes, real = sample(model, num, generator=rng), model.reals[-1]
        values = {}
        if self.stem is not None and self.job.sifid_samples:
            self.sifid = sifid(real, fakes[:self.job.sifid_samples], stem=self.stem)
            values["sifid"] = self.sifid
        if self.job.quality_samples:
            chosen = fakes[:self.job.quality_samples].split(1)
            values["patch_swd"] = statistics.fmean(patch_swd(real, f) for f in chosen)
            values["nn_patch_distance"] = statistics.fmean(nn_patch_distance(real, f) for f in chosen)
        return values

    def on_iteration(self, log: IterationLog) -> None:
        values = {name: getattr(log, name) for name in LOSSES}
        values["d_loss"] = log.d_loss
        values["g_loss"] = log.g_adv + log.reconstruction
        # Without a critic (a patch loss in its place) the D terms are None: nothing to log.
        points = [point(f"s{log.scale:02d}/{name}", value, log.iteration, log.scale)
                  for name, value in values.items() if value is not None]
        self.metrics.add(points)
        self.run.log_points(points)

    def on_scale_end(self, model: Pyramid, scale: int) -> None:
        # Metrics, then the scale's files, its model file last (the resume point): a worker
        # dying in between leaves points of an unfinished scale, which the retry drops and logs
        # again.
        points = [point("noise_amp", self.noise_amp, scale, scale),
                  point("scale_seconds", time.perf_counter() - self.scale_start, scale, scale)]
        points += [point(key, value, scale, scale)
                   for key, value in self.scale_metrics(model).items()]
        self.metrics.add(points)
        self.metrics.save(self.store)
        outputs.write_level(model, scale, TrackedFolder(self.store, self.run))
        self.run.log_points(points)
        self.run.flush()
        _maybe_inject_fault(self.store, scale)


def _maybe_inject_fault(store: ImageStore, scale: int) -> None:
    target = os.environ.get(FAULT_ENV)
    if target is None or int(target) != scale or store.exists(FAULT_MARKER):
        return
    store.put(FAULT_MARKER, b"")
    logger.warning("%s=%s: killing this worker after scale %d", FAULT_ENV, target, scale)
    os.kill(os.getpid(), signal.SIGKILL)
