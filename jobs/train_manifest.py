"""Train one SinGAN per image of a Parquet manifest, fanned out over a Ray cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_manifest.py --manifest s3://bucket/manifest.parquet \\
        --output s3://bucket/outputs --tracking-uri http://127.0.0.1:5000 --preset quick

Run directly (`python jobs/train_manifest.py --manifest m.parquet`) it starts a local Ray, tracks
to a local MLflow database (./mlflow.db) and writes to ./outputs.

The manifest is checked as a whole before anything trains, then streamed: its rows are read a
record batch at a time, images done before with the same settings (the output's ledger,
pipeline.ledger) are counted and left out, and the rest go out in buckets of one size and
settings, one Ray task per bucket (pipeline.buckets), as many in flight as the cluster runs
(jobs/fleet.py); tasks get the images' URLs, never their pixels. Each task resumes an
interrupted image at its last finished scale and writes each image's ledger file as it ends;
the driver keeps counters, not rows, so its memory stays flat whatever the manifest's size. At
the end the ledger is compacted into {output}/_results.parquet, a summary is printed, and the
exit status is 1 if any image failed (2 for a bad manifest or bad arguments).

A manifest's optional `task` column makes rows super-resolve (`sr`, by the row's `sr_factor`) or
animate (`animate`, optional `frames`, `fps`) their image after training; the results go to sr/
and animate/ in the image's folder and to its MLflow run (pipeline.tasks). To super-resolve a
folder: `python jobs/make_manifest.py photos/ --out m.parquet --task sr --sr-factor 4`, then this
job with `--manifest m.parquet`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shlex
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

# `python jobs/train_manifest.py` puts jobs/ first on sys.path; the project root must be there
# too, and first, so that the submitted working dir wins over an older installed copy. Installed
# (the singan-fleet-train command), it is the package jobs.train_manifest and needs neither.
ROOT = Path(__file__).resolve().parents[1]
if not __package__:
    sys.path.insert(0, str(ROOT))

from jobs import fleet
from pipeline import tasks as task_registry
from pipeline import tracking
from pipeline.buckets import IMAGES_PER_TASK, buckets
from pipeline.inception import stem_weights
from pipeline.ledger import Entry, KeySet, Ledger, Spool, Status, done_key, now_iso
from pipeline.manifest import Manifest, ManifestRow, config_hash
from pipeline.storage import (
    ImageStore,
    TransientError,
    absolute_url,
    check_credentials,
    redact,
)
from pipeline.train_image import JobSettings, Trainer, train_bucket
from singan.api import config
from singan.errors import InputError, one_line
from singan.metrics.verdict import OK, SUSPECT
from singan.recipes import RECIPES
from singan.settings import PRESETS, parse_overrides

logger = logging.getLogger("train_manifest")

LISTED_FAILURES = 20  # failed images named in the summary (all are in the results table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_manifest.py", description=__doc__.split("\n\n")[0],
        epilog="Without --tracking-uri the runs go to $MLFLOW_TRACKING_URI, else to "
               "sqlite:///$PWD/mlflow.db; open them with the `mlflow ui` command printed at the "
               "end. Under `ray job submit` the working directory is temporary: give --output "
               "(and --tracking-uri) explicitly there.")
    p.add_argument("--manifest", required=True, metavar="URL",
                   help="Parquet manifest (image_id, uri, optional per-row overrides)")
    p.add_argument("--output", default="outputs", metavar="URL",
                   help="output root, any fsspec URL (default: ./outputs)")
    fleet.add_tracking_options(p, "MLflow experiment")
    p.add_argument("--no-models", action="store_true",
                   help="do not log each finished pyramid as its run's MLflow model (9 requests "
                        "per image; runs:/<run id>/model)")
    p.add_argument("--register-model", metavar="NAME",
                   help="register each image's model as a version of NAME in MLflow's model "
                        "registry (tagged with the image id)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="training settings; manifest columns override them per image "
                        "(default: %(default)s)")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="singan (the default) or consingan, with its own defaults; a manifest "
                        "`recipe` column still wins per row")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a config field for every image (repeatable), e.g. --set "
                        "max_size=200 --set niter=1000 --set padding=reflect --set "
                        "noise_padding=true; manifest columns still win per row")
    p.add_argument("--images-per-task", type=int, metavar="K",
                   help="images of one size and settings trained together in one Ray task, in "
                        f"one set of kernels (default: {IMAGES_PER_TASK['gpu']} on GPUs, "
                        f"{IMAGES_PER_TASK['cpu']} on CPUs, fewer when the images would not "
                        "fill the cluster)")
    p.add_argument("--gpus-per-task", type=float, default=1.0, metavar="G",
                   help="GPUs per Ray task (one training of up to --images-per-task images), "
                        "asked of Ray even before a GPU node has joined (an autoscaler adds "
                        "them); fractions pack several tasks on one GPU; 0 = CPU. Only a local "
                        "Ray that the job starts on a machine without GPUs trains on CPU "
                        "otherwise (default: 1)")
    p.add_argument("--gpus-per-image", dest="gpus_per_task", type=float, action=fleet.Renamed,
                   help=argparse.SUPPRESS)
    p.add_argument("--cpus-per-task", type=float, default=1.0, metavar="C",
                   help="CPUs reserved per Ray task (default: 1)")
    p.add_argument("--cpus-per-image", dest="cpus_per_task", type=float, action=fleet.Renamed,
                   help=argparse.SUPPRESS)
    p.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="retries of an image whose worker died or whose storage kept failing; "
                        "each retry resumes at the last finished scale (default: %(default)s)")
    p.add_argument("--max-in-flight", type=int, metavar="N",
                   help="Ray tasks submitted at once (default: twice what the cluster runs at "
                        f"once, re-read as nodes join, and at least {fleet.DEMAND}, so that an "
                        "autoscaler sees the demand)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N manifest rows")
    p.add_argument("--force", action="store_true",
                   help="retrain images that are already done (their folders are cleared)")
    p.add_argument("--retrain-suspect", type=int, default=0, metavar="N",
                   help="train an image whose verdict is suspect again with the next seed, up "
                        "to N times, and keep the best model (default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=8, metavar="N",
                   help="final random samples per image (default: %(default)s)")
    p.add_argument("--sifid-samples", type=int, default=4, metavar="K",
                   help="after each scale, SIFID of K samples against the real image at that "
                        "scale; 0 = no SIFID (default: %(default)s)")
    p.add_argument("--quality-samples", type=int, default=2, metavar="K",
                   help="after each scale, patch SWD and nearest-patch distance of K samples "
                        "(no weights needed); 0 = none (default: %(default)s)")
    p.add_argument("--inception-weights", metavar="URL",
                   help="torchvision's inception_v3_google-0cc3c7bd.pth at any fsspec URL (for "
                        "clusters without internet). Default: $SINGAN_INCEPTION_WEIGHTS, the "
                        "torch hub cache, or a download; if none works SIFID is skipped")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def main(argv: list[str] | None = None, *, trainer: Trainer | None = None,
         on_scale_stored: Callable | None = None) -> int:
    """The job. `trainer` and `on_scale_stored` are for code that runs the job in a harness
    (bench/fleet_scale.py's simulated trainer, the fault tests' worker kill), never options."""
    fleet.limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    output = args.output if "://" in args.output else str(Path(args.output).resolve())

    # 1. The settings and the whole manifest are checked before anything trains.
    try:
        for name in ("limit", "images_per_task", "max_in_flight"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if args.retrain_suspect < 0:
            raise InputError("--retrain-suspect must be 0 (no retraining) or more")
        overrides = parse_overrides(args.set)
        # No credentials for an S3 URL: one line now, not a traceback after the trainings.
        for url in (args.manifest, output, args.inception_weights):
            if url is not None:
                check_credentials(url)
        if args.recipe is not None:
            overrides["recipe"] = args.recipe
        manifest = Manifest(args.manifest, preset=args.preset, overrides=overrides,
                            limit=args.limit)
        with _closing_on_error(manifest):
            manifest.check()
            # SIFID weights: an error only when the user named them; otherwise one warning.
            inception = None
            if args.sifid_samples > 0:
                inception = stem_weights(args.inception_weights,
                                         required=args.inception_weights is not None)
    except InputError as err:
        print(f"train_manifest: error: {err}", file=sys.stderr)
        return 2
    with manifest:
        try:
            return run(args, manifest, output, overrides, inception, started,
                       trainer or Trainer(), on_scale_stored)
        except TransientError as err:  # storage kept failing for the driver itself
            print(f"train_manifest: error: {err}", file=sys.stderr)
            return 1


def run(args, manifest: Manifest, output: str, overrides: dict, inception: dict | None,
        started: float, trainer: Trainer, on_scale_stored: Callable | None) -> int:
    """Steps 2 to 5 of the job, with a checked manifest."""
    print(f"{manifest.num_rows} images from {redact(args.manifest)} -> {redact(output)}")

    # 2. Tracking: a parent run for the job. Tracking trouble is reported, never fatal.
    tracking_uri = fleet.tracking_target(args)
    experiment_id = parent_run_id = None
    context = tracking.context_tags("jobs/train_manifest.py")
    if tracking_uri is not None:
        try:
            experiment_id, parent_run_id = tracking.start_job_run(
                tracking_uri, args.experiment, local_artifacts(tracking_uri), tags=context,
                manifest=tracking.dataset(
                    args.manifest.rstrip("/").rsplit("/", 1)[-1], absolute_url(args.manifest),
                    {"num_rows": manifest.num_rows}, {"columns": list(manifest.columns)}),
                params={"manifest": args.manifest, "output": output, "preset": args.preset,
                        "images": manifest.num_rows, "gpus_per_task": args.gpus_per_task,
                        "force": args.force,
                        **{f"config.{k}": v
                           for k, v in config(args.preset, **overrides).to_dict().items()}})
        except Exception as err:  # noqa: BLE001 - trainings go on; workers retry on their own
            logger.warning("MLflow at %s unreachable (%s); training without a parent run",
                           redact(tracking_uri), one_line(err))
    ui_hint = tracking_hint(tracking_uri, experiment_id)

    # 3. What is done already: the ledger's listing (one LIST per 1,000 finished images).
    ledger = Ledger(output)
    done = KeySet() if args.force else ledger.done()
    if len(done):
        print(f"ledger: {len(done)} images done before (left out unless their settings changed)")

    # 4. Fan out and collect, a bucket per Ray task, the results streamed to a local spool.
    job_id = uuid.uuid4().hex
    settings = JobSettings(output=output, tracking_uri=tracking_uri, experiment=args.experiment,
                           experiment_id=experiment_id, parent_run_id=parent_run_id,
                           num_samples=args.num_samples, sifid_samples=args.sifid_samples,
                           quality_samples=args.quality_samples, job_id=job_id,
                           force=args.force, trainer=trainer, on_scale_stored=on_scale_stored,
                           run_tags=context, log_models=not args.no_models,
                           register_model=args.register_model,
                           retrain_suspect=args.retrain_suspect)
    tally = Tally(settings)
    try:
        _fan_out(args, manifest, done, settings, inception, tally, started)
        # 5. The results table, then the summary. Failure reasons are in the ledger already.
        try:
            table_url = ledger.compact(tally.spool.batches())
        except TransientError as err:
            table_url = None
            print(f"train_manifest: the results table could not be written ({err}); later: "
                  f"python jobs/compact_results.py --output {output}", file=sys.stderr)
    finally:
        tally.spool.close()
    seconds = time.perf_counter() - started
    if parent_run_id is not None:
        tracking.end_job_run(tracking_uri, parent_run_id, tally.counts(), tally.failed_ids,
                             seconds, {"gpus_per_task_used": f"{tally.gpus_used:g}",
                                       "images_per_task": tally.per_task,
                                       "ray_tasks": tally.tasks_sent})
    tally.print_summary(seconds, table_url, ui_hint, output)
    return 1 if table_url is None or tally.failed else 0


def _fan_out(args, manifest: Manifest, done: KeySet, settings: JobSettings,
             inception: dict | None, tally: Tally, started: float) -> None:
    """One Ray task per bucket of images of one plan (pipeline.buckets), as many in flight as
    the cluster runs (jobs/fleet.py); every result goes to `tally`."""
    import ray

    local = fleet.connect(args.verbose)
    # The runs name the Ray job they ran in (known only now that Ray is up).
    ray_tags = fleet.ray_tags()
    if settings.parent_run_id is not None:
        tracking.tag_run(settings.tracking_uri, settings.parent_run_id, ray_tags)
    settings = dataclasses.replace(settings, run_tags={**settings.run_tags, **ray_tags})
    placement = fleet.Placement(args.gpus_per_task, args.cpus_per_task, local=local,
                                max_in_flight=args.max_in_flight)
    # Unless told, as many as train best together, but no fewer tasks than the cluster's
    # slots: a few images on many slots train side by side rather than in one task.
    todo = max(1, manifest.num_rows - len(done))
    tally.per_task = args.images_per_task or min(
        IMAGES_PER_TASK["gpu" if placement.gpus_per_task else "cpu"],
        max(1, math.ceil(todo / max(1, placement.slots))))
    tally.gpus_used = placement.gpus_per_task
    print(f"images per Ray task: up to {tally.per_task} of one size and settings")
    remote = ray.remote(fleet.run_on_worker)
    options = dict(max_retries=args.max_retries, retry_exceptions=[TransientError],
                   **placement.options())
    inception_ref = ray.put(inception)  # once, not once per task
    progress = fleet.Progress(manifest.num_rows, placement, describe, started=started)
    tally.progress = progress

    def submit(bucket: list[ManifestRow]):
        name = f"train {bucket[0].image_id}" + (f" +{len(bucket) - 1}" if len(bucket) > 1 else "")
        return remote.options(name=name, **options).remote(train_bucket, bucket, settings,
                                                          inception_ref)

    def to_train(rows: Iterator[ManifestRow]) -> Iterator[ManifestRow]:
        for row in rows:
            if done and done_key(row.image_id, config_hash(row)) in done:
                progress.skip(1)
            else:
                yield row

    beat = Heartbeat(settings.tracking_uri, settings.parent_run_id, started, tally)
    for entry in fleet.stream(submit, buckets(to_train(manifest.rows()), tally.per_task),
                              placement=placement, on_crash=tally.crashed, progress=progress,
                              tick=beat):
        tally.add(entry, placement)
    if progress.first_submit is None:
        print("nothing to submit: every image was done")
    print(f"{progress.tasks} Ray tasks of up to {tally.per_task} images of one size and settings")
    tally.tasks_sent = progress.tasks


class Tally:
    """What the driver keeps of the results: counters, the first failures, and the results
    themselves in a local spool (pipeline.ledger.Spool), not in memory."""

    def __init__(self, settings: JobSettings):
        self.settings = settings
        self.spool = Spool()
        self.progress: fleet.Progress | None = None
        self.failed = 0
        self.failed_ids: list[str] = []  # the first LISTED_FAILURES
        self.failures: list[str] = []  # their lines
        self.tasks: Counter[str] = Counter()  # images by manifest task
        self.untracked = 0  # images whose run still lacks something after the worker's replay
        self.suspect = 0  # done images whose verdict is suspect (singan.metrics.verdict)
        self.suspects: list[str] = []  # the first LISTED_FAILURES, as lines
        self.retrained = Counter()  # images retrained (--retrain-suspect), by their final verdict
        self.cpu_notice = False
        self.gpus_used = 0.0
        self.per_task = 0
        self.tasks_sent = 0

    def add(self, entry: Entry, placement: fleet.Placement) -> None:
        self.spool.add(entry)
        self.tasks[entry.task] += 1
        if not entry.tracking_complete:
            self.untracked += 1
        if entry.retrained and entry.status == Status.DONE:
            self.retrained[entry.quality] += 1
        if entry.quality == SUSPECT and entry.status != Status.FAILED:
            self.suspect += 1
            if len(self.suspects) < LISTED_FAILURES:
                self.suspects.append(f"  suspect {entry.image_id}: {entry.quality_reason}")
        if entry.status == Status.FAILED:
            self.failed += 1
            if len(self.failures) < LISTED_FAILURES:
                self.failed_ids.append(entry.image_id)
                self.failures.append(f"  failed {entry.image_id}"
                                     f"{task_registry.note(entry.task)}: {entry.error}")
        if placement.gpus_per_task and entry.device == "cpu" and not self.cpu_notice:
            self.cpu_notice = True
            print(f"tasks get GPUs from Ray, but torch sees no CUDA device on node {entry.node}: "
                  "they train on CPU there", flush=True)

    def crashed(self, bucket: list[ManifestRow], err: Exception) -> list[Entry]:
        """The rows of a task that raised through Ray (its retries spent, its worker lost): each
        fails, and its ledger file keeps the reason."""
        reason = fleet.crash_reason(err)
        entries = [Entry(row.image_id, Status.FAILED, reason, None, 0.0, None, None,
                         ImageStore(self.settings.output, row.image_id).url, task=row.task.name,
                         config_hash=config_hash(row), job_id=self.settings.job_id,
                         finished_at=now_iso()) for row in bucket]
        ledger = Ledger(self.settings.output)
        for entry in entries:
            try:
                ledger.record(entry)
            except TransientError as storage_down:
                logger.warning("ledger: %s", storage_down)
        return entries

    def counts(self) -> dict[str, int]:
        counts = dict(self.progress.counts) if self.progress else {}
        return {**counts, "suspect": self.suspect, "untracked": self.untracked,
                "retrained": self.retrained.total()}

    def print_summary(self, seconds: float, table_url: str | None, ui_hint: str | None,
                      output: str) -> None:
        counts = self.progress.counts if self.progress else {s: 0 for s in map(str, Status)}
        total = sum(counts.values())
        print(f"{total} images in {seconds:.1f} s: {counts['done']} trained, "
              f"{counts['skipped']} already done, {counts['failed']} failed")
        if task_registry.any_besides_training(self.tasks):
            print(f"tasks: {task_registry.counts(self.tasks.elements())}")
        for line in self.failures:
            print(line)
        if self.failed > len(self.failures):
            print(f"  ... and {self.failed - len(self.failures)} more (see the results table)")
        if self.suspect:
            print(f"{self.suspect} trained images look suspect (the quality column of the "
                  "results, the quality tag in MLflow):")
            print("\n".join(self.suspects))
            if self.suspect > len(self.suspects):
                print(f"  ... and {self.suspect - len(self.suspects)} more")
        if self.retrained:
            print(f"--retrain-suspect: {self.retrained.total()} suspect images retrained, "
                  f"{self.retrained[OK]} of them now ok (the retrained column of the results, "
                  "the retrained tag in MLflow)")
        if table_url is not None:
            print(f"results: {table_url}")
        if self.untracked:
            print(f"MLflow: {self.untracked} images still lack some points or pictures there; "
                  f"later: python jobs/sync_tracking.py --output {output}")
        if ui_hint:
            print(ui_hint)


def describe(entry: Entry) -> tuple[str, str]:
    """(status, one line) of a finished image, for the progress display."""
    name = f"{entry.image_id}{task_registry.note(entry.task)}"
    if entry.error:
        return entry.status, f"{entry.status} {name}: {entry.error}"
    sifid = f", SIFID {entry.sifid:.4f}" if entry.sifid is not None else ""
    suspect = f"; suspect: {entry.quality_reason}" if entry.quality == SUSPECT else ""
    if entry.retrained:
        suspect += f"; retrained: {entry.retrained}"
    return entry.status, (f"{entry.status} {name} ({entry.num_scales} scales, "
                          f"{entry.seconds:.1f} s{sifid}){suspect}")


class _closing_on_error:
    """Close the manifest if the checks after opening it fail."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    def __enter__(self):
        return self.manifest

    def __exit__(self, kind, *rest):
        if kind is not None:
            self.manifest.close()


def tracking_hint(uri: str | None, experiment_id: str | None) -> str | None:
    """How to see the job's runs: the experiment's page in the UI's model-training view, and
    for a local database the command that serves it."""
    if uri is None:
        return None
    if uri.startswith("sqlite:"):
        local = "http://127.0.0.1:5000"
        page = tracking.experiment_url(local, experiment_id) if experiment_id else local
        # The interpreter running this job has MLflow: the command works without an active venv.
        return (f"MLflow UI: {shlex.quote(sys.executable)} -m mlflow ui --backend-store-uri "
                f"{uri} --port 5000  (then open {page})")
    return "MLflow: " + redact(tracking.experiment_url(uri, experiment_id) if experiment_id
                               else uri)


def local_artifacts(tracking_uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database; a server decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts")
    return None


class Heartbeat:
    """Tells MLflow that this driver lives, with the job's counters (tracking.heartbeat), at most
    every HEARTBEAT_SECONDS, so that the parent run's charts move during the job and a later job
    can tell a killed job's run from a running one."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, started: float,
                 tally: Tally):
        self.tracking_uri, self.run_id, self.started, self.tally = (tracking_uri, run_id,
                                                                    started, tally)
        self.last = time.perf_counter()

    def __call__(self) -> None:
        now = time.perf_counter()
        if self.run_id is None or now - self.last < tracking.HEARTBEAT_SECONDS:
            return
        self.last = now
        progress = self.tally.progress
        counts = {**progress.counts, "running": progress.in_flight} if progress else {}
        try:
            tracking.heartbeat(tracking.client_for(self.tracking_uri), self.run_id,
                               now - self.started, counts)
        except Exception as err:  # noqa: BLE001 - tracking never stops a job
            logger.info("MLflow heartbeat failed (%s)", one_line(err))


if __name__ == "__main__":
    sys.exit(main())
