"""Train a bucket of manifest rows: the function the training job's Ray tasks run.

For each row it reads the image through storage, trains (resuming at the last finished scale),
writes the image's output layout as it goes (singan.data.outputs, the files the `singan` command
writes too, plus each scale's points, tracking.json and _SUCCESS; pipeline.recording), makes
the row's task outputs (pipeline.tasks), tracks to MLflow, and at the end of the bucket sends
MLflow what it missed and writes each image's ledger file (pipeline.ledger). Runs in any
process: the tests call it directly, the job calls it as a Ray task.

What can go wrong, and what happens:
- a bad image or bad settings (InputError), or a bug: the row fails with a one-line reason in its
  result, and is not retried (retrying would fail the same way);
- storage that keeps failing (TransientError): raised, so that Ray retries the task, and the
  retry resumes at the last finished scale;
- the worker dies (killed, out of memory, node lost): Ray retries it the same way;
- MLflow down: nothing; the points stay in the image's folder and are replayed later.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import resource
import statistics
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline.ledger import Entry, Ledger, Status, now_iso
from pipeline.manifest import ManifestRow, config_hash
from pipeline.recording import ImageRecorder, TrackedFolder
from pipeline.retrain import Attempt, Record, commit, expected_seed
from pipeline.storage import ImageStore, TransientError, read_url, redact
from pipeline.tracking import (
    DEFAULT_EXPERIMENT,
    MLFLOW_EVERY,
    ImageRun,
    forget_down,
    mark_down,
    point,
    sender,
    server_down,
    sync_image,
)
from singan.api import plan, sample, train_many
from singan.base import Callback, Diverged, Pyramid, package_version
from singan.data import outputs
from singan.data.image import load_image
from singan.errors import InputError, one_line
from singan.metrics.patches import nn_patch_distance, patch_swd
from singan.metrics.sifid import InceptionStem, load_stem, sifid
from singan.metrics.verdict import SUSPECT, Verdict, judge, summarize
from singan.settings import Config

logger = logging.getLogger(__name__)

# Under --force, an image folder this job has started holds this file (the job's id): a Ray
# retry of the job's own task resumes there instead of clearing it again.
FORCE_MARKER = ".forced-by"
# Seconds the end of a bucket waits for its MLflow requests before replaying what is missing.
DRAIN_SECONDS = 120.0


class Trainer:
    """The computing half of a training task: reading an image, training a bucket of them, and
    the pictures and values of a trained scale or model. This one is SinGAN's (singan), the
    job's. The storing and tracking half (this module, pipeline.recording) is the same whatever
    the trainer, so that bench/fleet_scale.py measures the job's requests at scale with a trainer
    that sleeps instead (given to the job in code, never reachable from its options)."""

    def read_image(self, data: bytes, name: str, height: int | None,
                   width: int | None) -> Tensor:
        """The image in `data` (named `name` in errors; the manifest's size, when it has one)."""
        source = io.BytesIO(data)
        source.name = name
        return load_image(source)

    def resume_point(self, store: ImageStore, row: ManifestRow, config: Config,
                     device: torch.device) -> Pyramid | None:
        """The partial model stored for this image, when it was trained with these settings
        (and the row's seed, or the seed of an attempt --retrain-suspect kept: pipeline.retrain)."""
        try:
            model = store.load_model(device)
        except InputError as err:
            logger.warning("%s: stored model unreadable (%s); retraining", row.image_id, err)
            return None
        if model is None or model.config != config or not len(model.scales):
            return None
        return model if model.seed == expected_seed(store, row.seed) else None

    def train(self, images: Sequence[Tensor], config: Config, *, seeds: Sequence[int],
              device: torch.device, callbacks: Sequence[Sequence[Callback]],
              resume: Sequence[Pyramid] | None) -> list[Pyramid]:
        """One model per image, trained together (singan.train_many)."""
        return train_many(images, config, seeds=seeds, device=device, callbacks=callbacks,
                          resume=resume)

    def load_stem(self, inception: dict | None, device: torch.device) -> InceptionStem | None:
        return load_stem(inception, device=device) if inception else None

    def level_files(self, model: Pyramid, scale: int) -> dict[str, bytes]:
        """A finished scale's files, in the order they are written (singan.data.outputs)."""
        files: dict[str, bytes] = {}
        outputs.write_level(model, scale, _Files(files))
        return files

    def final_files(self, model: Pyramid, row: ManifestRow, num_samples: int) -> dict[str, bytes]:
        """The finished model's pictures and the row's task outputs (singan.data.outputs)."""
        files: dict[str, bytes] = {}
        outputs.write_final(model, _Files(files), num_samples)
        names = row.task.write_outputs(model, _Files(files), row.params)
        if names:
            logger.info("%s: %s made", row.image_id, ", ".join(names))
        return files

    def summary(self, model: Pyramid) -> dict[str, float]:
        """The finished model's summary (singan.metrics.verdict.Summary.metrics), for its
        verdict."""
        return summarize(model, seed=model.seed).metrics()

    def scale_metrics(self, model: Pyramid, job: JobSettings,
                      stem: InceptionStem | None) -> dict[str, float]:
        """SIFID (with Inception weights) and the patch metrics of samples at the finest
        finished scale against its real image, each the mean over the samples."""
        num = max(job.sifid_samples if stem else 0, job.quality_samples)
        if num == 0:
            return {}
        scale = len(model.scales) - 1
        rng = torch.Generator(device=model.device).manual_seed(model.seed + 7919 * (scale + 1))
        fakes, real = sample(model, num, generator=rng), model.reals[-1]
        values = {}
        if stem is not None and job.sifid_samples:
            values["sifid"] = sifid(real, fakes[:job.sifid_samples], stem=stem)
        if job.quality_samples:
            chosen = fakes[:job.quality_samples].split(1)
            values["patch_swd"] = statistics.fmean(patch_swd(real, f) for f in chosen)
            values["nn_patch_distance"] = statistics.fmean(nn_patch_distance(real, f)
                                                           for f in chosen)
        return values


class _Files:
    """A singan.data.outputs folder that keeps the files in a dict, in the order they come."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def put(self, name: str, data: bytes) -> None:
        self.files[name] = data


@dataclass(frozen=True)
class JobSettings:
    """What every image of a job shares."""

    output: str  # output root URL
    tracking_uri: str | None = None  # None: no tracking
    experiment: str = DEFAULT_EXPERIMENT
    experiment_id: str | None = None  # None: looked up (or created) by name
    parent_run_id: str | None = None
    num_samples: int = 8  # final random samples written per image
    sifid_samples: int = 4  # samples per scale for its SIFID (when Inception weights are given)
    quality_samples: int = 2  # samples per scale for the weight-free patch metrics; 0 = none
    device: str | None = None  # when the caller does not say (the job does: its Ray GPU): CPU
    # Names the job in each _SUCCESS it writes: an image finished by an earlier attempt of this
    # job's task (a retried bucket) is reported done, not "already done".
    job_id: str | None = None
    force: bool = False  # retrain images already done (their folders cleared first)
    mlflow_every: int = MLFLOW_EVERY  # iterations between the loss points sent to MLflow
    log_models: bool = True  # each finished pyramid as its run's MLflow model
    register_model: str | None = None  # ... and a version of this registered model
    retrain_suspect: int = 0  # retrain a suspect image with the next seeds, up to this many times
    # Tags of every image run besides its own: who ran it, from what code, in which Ray job
    # (tracking.context_tags, fleet.ray_tags); sent with its params, no request more.
    run_tags: Mapping[str, str] = field(default_factory=dict)
    trainer: Trainer = field(default_factory=Trainer)
    # Runs in the worker once a scale is stored, with the image's store and the scale: the
    # fault tests kill the worker there.
    on_scale_stored: Callable[[ImageStore, int], None] | None = None


def train_image(row: ManifestRow, job: JobSettings, inception: dict | None = None) -> Entry:
    """Train (or resume, or skip) one image; see train_bucket."""
    return train_bucket([row], job, inception)[0]


def train_bucket(rows: Sequence[ManifestRow], job: JobSettings, inception: dict | None = None,
                 *, device: str | None = None, node: str | None = None) -> list[Entry]:
    """Train (or resume, or skip) a bucket of rows; one result per row, in order.

    Rows whose training plans are equal (the driver buckets them so) and that stopped at the
    same scale train together (the trainer's `train`: singan.train_many); everything else stays
    per image: its folder, scale files as each scale finishes, its MLflow run, _SUCCESS. Rows
    already done are skipped, a bad image or a training whose losses diverge fails its own row,
    and storage that keeps failing raises TransientError for the whole bucket (Ray retries it;
    every image resumes at its last stored scale). At the end, what MLflow missed is replayed
    and every image's ledger file written.

    `inception`: the Inception stem's weights (pipeline.inception.stem_weights); with them, the
    SIFID of every scale is logged. `device`: where to train (default: the job's, else CPU);
    `node`: the Ray node, recorded with each result.
    """
    bucket = _Bucket(job, torch.device(device or job.device or "cpu"), node)
    ready: list[_Prepared] = []
    for index, row in enumerate(rows):
        outcome = bucket.guarded(row, lambda r=row: bucket.prepare(r, inception))
        if isinstance(outcome, Entry):
            bucket.ended[index] = outcome
        else:
            outcome.index = index
            ready.append(outcome)

    # Images of equal settings, plan and progress train together.
    groups: dict[tuple, list[_Prepared]] = {}
    for item in ready:
        key = (item.config, plan(*item.image.shape[-2:], item.config),
               len(item.resume.scales) if item.resume is not None else 0)
        groups.setdefault(key, []).append(item)
    for group in groups.values():
        models = bucket.train(group)
        for item, model in zip(group, models, strict=True):
            bucket.ended[item.index] = model if isinstance(model, Entry) else bucket.guarded(
                item.row, lambda i=item, m=model: bucket.finish(i, m))
    return bucket.settle(len(rows))


@dataclass
class _Prepared:
    """A row ready to train: its image, training config, resume point, run and recorder."""

    row: ManifestRow
    store: ImageStore
    image: Tensor
    config: Config
    resume: Pyramid | None
    run: ImageRun
    recorder: ImageRecorder
    index: int = 0


class _Bucket:
    """One call of train_bucket: its settings, device and node, the results so far, and the
    MLflow runs to settle at its end."""

    def __init__(self, job: JobSettings, device: torch.device, node: str | None):
        self.job, self.device, self.node = job, device, node
        self.start = time.perf_counter()
        self.ended: dict[int, Entry] = {}
        self.runs: dict[str, ImageRun] = {}  # by image id
        # Images found done whose ledger file was missing (so the driver sent them): the task
        # that finished them died before the end of its bucket, maybe before its requests
        # reached MLflow. Their folders are replayed at the end of this bucket.
        self.found_done: dict[str, ImageStore] = {}

    def entry(self, row: ManifestRow, status: Status, **values) -> Entry:
        store = ImageStore(self.job.output, row.image_id)
        defaults = dict(error=None, num_scales=None, seconds=time.perf_counter() - self.start,
                        sifid=None, mlflow_run_id=None, job_id=self.job.job_id)
        return Entry(row.image_id, status, output_url=store.url, task=row.task.name,
                     config_hash=config_hash(row), node=self.node, device=self.device.type,
                     finished_at=now_iso(), **{**defaults, **values})

    def failed(self, row: ManifestRow, reason: str) -> Entry:
        run = self.runs.get(row.image_id)
        run_id = run.run_id if run is not None else None
        if run_id is None:
            run_id = (ImageStore(self.job.output, row.image_id).get_json("tracking.json")
                      or {}).get("run_id")
        return self.entry(row, Status.FAILED, error=reason, mlflow_run_id=run_id)

    def guarded(self, row: ManifestRow, step: Callable[[], object]):
        """step(), with a bad input or a bug turned into the row's failed result."""
        try:
            return step()
        except TransientError:
            raise  # Ray retries the task; the retry resumes at the last finished scale
        except InputError as err:
            logger.warning("%s: %s", row.image_id, err)
            return self.failed(row, one_line(err))
        except Exception as err:  # noqa: BLE001 - a bug or a device error fails this row only
            logger.error("%s failed:\n%s", row.image_id, traceback.format_exc())
            return self.failed(row, one_line(err))

    def prepare(self, row: ManifestRow, inception: dict | None) -> _Prepared | Entry:
        job, trainer = self.job, self.job.trainer
        store = ImageStore(job.output, row.image_id)
        digest = config_hash(row)
        done = store.success()
        if job.force and _not_started_by(store, job, done):
            logger.info("%s: --force: clearing the image's folder", row.image_id)
            store.remove_all()
            store.put(FORCE_MARKER, (job.job_id or "").encode())
            done = None
        if done is not None and done.get("config_hash") == digest:
            ours = job.job_id is not None and done.get("job_id") == job.job_id
            if job.tracking_uri is not None:
                self.found_done[row.image_id] = store
            return self.entry(row, Status.DONE if ours else Status.SKIPPED,
                              num_scales=done.get("num_scales"), sifid=done.get("sifid"),
                              seconds=done.get("seconds", 0.0) if ours else 0.0,
                              mlflow_run_id=done.get("run_id"), job_id=done.get("job_id"),
                              quality=done.get("quality"),
                              quality_reason=done.get("quality_reason"),
                              retrained=done.get("retrained"))

        # 1. The image, through storage, and the config it trains with (super-resolution
        #    derives it from the image's size). A bad image fails the row in step 3, once its
        #    MLflow run exists, so that it shows there too.
        image = train_config = bad_input = None
        try:
            image = read_image(row, trainer)
            train_config = row.task.training_config(row.config, row.params, *image.shape[-2:])
            plan(*image.shape[-2:], train_config)
        except InputError as err:
            bad_input = err

        # 2. Resume what a previous attempt stored with the same settings; otherwise start
        #    clean, so that no file of another training is mixed into this one. (With a bad
        #    image only a finished training of other settings is cleared: a partial one may
        #    resume later.)
        resume = None
        if bad_input is None and done is None:
            resume = trainer.resume_point(store, row, train_config, self.device)
        if done is not None or (resume is None and bad_input is None
                                and store.exists("model/config.json")):
            logger.info("%s: settings changed; retraining from scratch", row.image_id)
            store.remove_all()

        # 3. The MLflow run (reused when a previous attempt created one); a failure ends it as
        #    FAILED with the reason, so that bad images show in MLflow too.
        run = self.runs[row.image_id] = ImageRun(store, job.tracking_uri, job.experiment_id,
                                                 job.parent_run_id, job.experiment,
                                                 log_model=job.log_models,
                                                 register_model=job.register_model)
        try:
            if bad_input is not None:
                raise bad_input
            stem = trainer.load_stem(inception if job.sifid_samples else None, self.device)
            height, width = image.shape[-2:]
            # The pyramid's URL now, with the params: one request fewer at the end (the run's
            # status says whether the pyramid there is finished).
            run.log_params({"image_id": row.image_id, "uri": row.uri, "height": height,
                            "width": width, "seed": row.seed, "config_hash": digest,
                            **row.task.identity(row.params),
                            **{f"config.{k}": v for k, v in train_config.to_dict().items()}},
                           tags={**job.run_tags, "pyramid_url": store.url_of("model")})
            if resume is not None:
                logger.info("%s: resuming at scale %d", row.image_id, len(resume.scales))
        except BaseException as err:
            run.finish("FAILED", tags={"error": one_line(err)})
            raise
        recorder = ImageRecorder(
            store, run, level_files=trainer.level_files,
            scale_metrics=functools.partial(trainer.scale_metrics, job=job, stem=stem),
            mlflow_every=job.mlflow_every, on_stored=job.on_scale_stored)
        return _Prepared(row, store, image, train_config, resume, run, recorder)

    def train(self, group: list[_Prepared]) -> list[Pyramid | Entry]:
        """4. The group's models, trained together, each image storing its scales as they
        finish; a bug fails every row of the group, each with its run ended as FAILED."""
        resume = [item.resume for item in group] if group[0].resume is not None else None
        try:
            return self.job.trainer.train(
                [item.image for item in group], group[0].config,
                seeds=[item.resume.seed if item.resume else item.row.seed for item in group],
                device=self.device,
                callbacks=[[item.recorder] for item in group], resume=resume)
        except TransientError:
            raise
        except Exception as err:  # noqa: BLE001
            logger.error("a bucket of %d failed:\n%s", len(group), traceback.format_exc())
            for item in group:
                item.run.finish("FAILED", tags={"error": one_line(err)})
            return [self.failed(item.row, one_line(err)) for item in group]

    def finish(self, item: _Prepared, model: Pyramid) -> Entry:
        """5. The final pictures and the task's outputs, then _SUCCESS (only now is it done)."""
        row, store, run = item.row, item.store, item.run
        try:
            if model.failure is not None:
                raise Diverged(model.failure)
            files = self.job.trainer.final_files(model, row, self.job.num_samples)
            TrackedFolder(store, run).put_all(files)
        except BaseException as err:
            run.finish("FAILED", tags={"error": one_line(err)})
            raise
        seconds = time.perf_counter() - self.start
        sifid_value = item.recorder.sifid
        summary, verdict = self.judged(row, model, seconds, sifid_value)
        retrained = None
        if self.job.retrain_suspect and verdict is not None and (
                not verdict.ok or model.seed != row.seed):
            model, summary, verdict, retrained = self.retrained(item, model, summary, verdict)
            # The kept attempt's values, and the time of every attempt.
            sifid_value = summary.get(SUMMARY_PREFIX + "sifid")
            seconds = time.perf_counter() - self.start
        tags = {**verdict_tags(verdict), **({"retrained": retrained} if retrained else {})}
        run.finish("FINISHED", tags=tags, metrics=summary)
        store.mark_success({"run_id": run.run_id, "config_hash": config_hash(row),
                            "num_scales": model.num_scales, "seconds": round(seconds, 3),
                            "uri": row.uri, "sifid": sifid_value, "finished_at": now_iso(),
                            "job_id": self.job.job_id, "package_version": package_version(),
                            "summary": summary, **tags, **row.task.identity(row.params)})
        return self.entry(row, Status.DONE, num_scales=model.num_scales, seconds=seconds,
                          sifid=sifid_value, mlflow_run_id=run.run_id, retrained=retrained,
                          **verdict_fields(verdict))

    def retrained(self, item: _Prepared, model: Pyramid, summary: dict[str, float],
                  verdict: Verdict) -> tuple[Pyramid, dict[str, float], Verdict | None, str | None]:
        """5b. --retrain-suspect N (pipeline.retrain): train a suspect image again with seeds
        row.seed + 1 ... + N, one at a time, until one is ok; the folder keeps the best. Returns
        the kept model, its summary and verdict, and what happened (None when nothing did)."""
        job, row, store, run = self.job, item.row, item.store, item.run
        record = Record.read(store) or Record(
            [Attempt.judged(model.seed, summary, verdict, SUMMARY_PREFIX)], kept=model.seed)
        best = record.best
        for seed in range(row.seed + 1, row.seed + job.retrain_suspect + 1):
            if best.ok:
                break
            if record.tried(seed):  # by a worker that died before the end of its task
                continue
            logger.info("%s: %s; retraining with seed %d", row.image_id, best.verdict.reason,
                        seed)
            # The attempt's files are staged in memory, and its points are kept out of MLflow
            # (an untracked run: tracking_uri None), until it proves better than the kept one.
            staged: dict[str, bytes] = {}
            recorder = ImageRecorder(_Files(staged), ImageRun(store, None, None, None),
                                     level_files=job.trainer.level_files,
                                     scale_metrics=item.recorder.scale_metrics,
                                     mlflow_every=job.mlflow_every)
            try:
                retry = job.trainer.train([item.image], item.config, seeds=[seed],
                                          device=self.device, callbacks=[[recorder]],
                                          resume=None)[0]
                if retry.failure is not None:
                    raise Diverged(retry.failure)
                staged.update(job.trainer.final_files(retry, row, job.num_samples))
            except TransientError:
                raise
            except Exception as err:  # noqa: BLE001 - the image keeps the model it has
                logger.warning("%s: the retraining with seed %d failed (%s)", row.image_id, seed,
                               one_line(err))
                record.attempts.append(Attempt(seed, Verdict(SUSPECT, one_line(err)), math.inf))
                record.write(store)
                continue
            values, judged = self.judged(row, retry, time.perf_counter() - self.start,
                                         recorder.sifid)
            attempt = Attempt.judged(seed, values, judged, SUMMARY_PREFIX)
            step = len(record.attempts)
            record.attempts.append(attempt)
            # Each attempt's samples beside the first training's, on the final picture's slider.
            run.log_picture("final", step, staged["samples/final.png"])
            if math.isfinite(attempt.swd_ratio):
                run.log_points([point("retrain/swd_ratio", attempt.swd_ratio, step, 0)])
            if attempt.better_than(best):
                commit(store, staged, record, seed)
                model, summary, verdict, best = retry, values, judged, attempt
            else:
                record.write(store)
        if len(record.attempts) == 1:
            return model, summary, verdict, None
        logger.info("%s: retrained: %s", row.image_id, record.describe())
        return model, summary, verdict, record.describe()

    def judged(self, row: ManifestRow, model: Pyramid, seconds: float,
               sifid_value: float | None) -> tuple[dict[str, float], Verdict | None]:
        """The image's summary metrics (SUMMARY_PREFIX + name: the trainer's summary, the final
        SIFID, seconds, scales, the task's peak memory) and its verdict (singan.metrics.verdict)."""
        try:
            values = self.job.trainer.summary(model)
        except Exception as err:  # noqa: BLE001 - a finished training stays finished
            logger.warning("%s: no summary (%s)", row.image_id, one_line(err))
            values, verdict = {}, None
        else:
            verdict = judge(values)
        if sifid_value is not None:
            values["sifid"] = sifid_value
        values.update(seconds=seconds, num_scales=model.num_scales,
                      peak_memory_mib=peak_memory_mib(self.device))
        return {SUMMARY_PREFIX + k: float(v) for k, v in values.items()}, verdict

    def settle(self, count: int) -> list[Entry]:
        """6. The end of the bucket: MLflow gets what it has not yet (queued requests now, then
        a replay from the image's folder for a run that missed some), and each image's ledger
        file is written. The results in row order."""
        entries = [self.ended[index] for index in range(count)]
        if self.job.tracking_uri is not None and (self.runs or self.found_done):
            sender().drain(DRAIN_SECONDS)
            # The server may be back: the first replay tries, and a failure there spares the
            # others the wait (tracking.server_down).
            forget_down(self.job.tracking_uri)
            entries = [self.replayed(entry) for entry in entries]
        ledger = Ledger(self.job.output)
        for entry in entries:
            ledger.record(entry)
        return entries

    def replayed(self, entry: Entry) -> Entry:
        """The entry, once MLflow has what its image's folder holds, when it may lack some."""
        run = self.runs.get(entry.image_id)
        store = self.found_done.get(entry.image_id) or (run.store if run else None)
        if store is None or (run is not None and run.complete):
            return entry
        if server_down(self.job.tracking_uri):
            logger.warning("MLflow: %s still lacks some of its points or pictures (the server "
                           "was down a moment ago)", entry.image_id)
            return _replace(entry, tracking_complete=False)
        try:
            report = sync_image(store)
        except Exception as err:  # noqa: BLE001 - left for jobs/sync_tracking.py
            mark_down(self.job.tracking_uri)
            logger.warning("MLflow: %s still lacks some of its points or pictures (%s)",
                           entry.image_id, one_line(err))
            return _replace(entry, tracking_complete=False)
        if report is None:  # never tracked: nothing to replay
            return entry
        if report.points_sent or report.artifacts_sent:
            # A warning: the server missed requests (it was down, or a worker died), which a
            # user of `ray job logs` should see.
            logger.warning("MLflow: sent %d late points and %d pictures of %s",
                           report.points_sent, report.artifacts_sent, entry.image_id)
        return _replace(entry, mlflow_run_id=entry.mlflow_run_id or report.run_id)


# The summary metrics of an image's run (MLflow groups them by this prefix).
SUMMARY_PREFIX = "final/"


def verdict_tags(verdict: Verdict | None) -> dict[str, str]:
    """An image run's tags for its verdict: quality (ok / suspect), and quality_reason."""
    if verdict is None:
        return {}
    return {"quality": verdict.quality, **({"quality_reason": verdict.reason}
                                           if verdict.reason else {})}


def verdict_fields(verdict: Verdict | None) -> dict[str, str | None]:
    return {"quality": verdict.quality if verdict else None,
            "quality_reason": verdict.reason if verdict else None}


def peak_memory_mib(device: torch.device) -> float:
    """The task's peak memory so far (the images of a bucket share it): CUDA's allocations on a
    GPU, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_image(row: ManifestRow, trainer: Trainer | None = None) -> Tensor:
    """The row's image, through storage, decoded by the trainer (SinGAN's by default), named in
    errors by its URL (without any user:password@ in it: the reason goes to the logs, the
    results and MLflow)."""
    try:
        data = read_url(row.uri)
    except FileNotFoundError as err:
        raise InputError(f"{redact(row.uri)}: no such file") from err
    except IsADirectoryError as err:
        raise InputError(f"{redact(row.uri)}: a folder, not an image file") from err
    return (trainer or Trainer()).read_image(data, redact(row.uri), row.height, row.width)


def _replace(entry: Entry, **values) -> Entry:
    return Entry(**{**entry.__dict__, **values})


def _not_started_by(store: ImageStore, job: JobSettings, done: Mapping | None) -> bool:
    """Whether --force must clear the image's folder: it was not finished, nor started, by this
    job (a Ray retry of the job's own task goes on where its last attempt stopped)."""
    if done is not None:
        return done.get("job_id") != job.job_id
    marker = store.get(FORCE_MARKER)
    return marker is None or marker.decode() != (job.job_id or "")
