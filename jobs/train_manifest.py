"""Train one SinGAN per image of a Parquet manifest, fanned out over a Ray cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_manifest.py --manifest s3://bucket/manifest.parquet \\
        --output s3://bucket/outputs --tracking-uri http://127.0.0.1:5000 --preset quick

Run directly (`python jobs/train_manifest.py --manifest m.parquet`) it starts a local Ray, tracks
to a local MLflow database (./mlflow.db) and writes to ./outputs.

The manifest is validated as a whole before anything trains. Then one Ray task per image: tasks
get the image's URL, never its pixels; results stream back as they finish. Images already done
with the same settings are skipped; interrupted ones resume at their last finished scale. At the
end the results table goes to {output}/_results.parquet, a summary is printed, and the exit
status is 1 if any image failed (2 for a bad manifest or bad arguments).

A manifest's optional `task` column makes rows super-resolve (`sr`, by the row's `sr_factor`) or
animate (`animate`, optional `frames`, `fps`) their image after training; the results go to sr/
and animate/ in the image's folder and to its MLflow run (pipeline/apps.py). To super-resolve a
folder: `python jobs/make_manifest.py photos/ --out m.parquet --task sr --sr-factor 4`, then this
job with `--manifest m.parquet`.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# `python jobs/train_manifest.py` puts jobs/ first on sys.path; the project root must be there
# too, and first, so that the submitted working dir wins over an older installed copy.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs import fleet
from pipeline import results as results_table
from pipeline import tasks as task_registry
from pipeline import tracking
from pipeline.buckets import IMAGES_PER_TASK, make_buckets
from pipeline.inception import stem_weights
from pipeline.manifest import CONFIG_FIELD_KINDS, NULLABLE_FIELDS, parse_bool, read_manifest
from pipeline.results import Status
from pipeline.storage import ImageStore, Storage, TransientError, check_credentials, redact
from pipeline.train_image import ImageResult, JobSettings, train_bucket
from singan.config import PRESETS, config
from singan.errors import InputError, one_line
from singan.recipe import RECIPES

logger = logging.getLogger("train_manifest")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_manifest.py", description=__doc__.split("\n\n")[0],
        epilog="Without --tracking-uri the runs go to sqlite:///$PWD/mlflow.db; open them with "
               "the `mlflow ui` command printed at the end. Under `ray job submit` the working "
               "directory is temporary: give --output (and --tracking-uri) explicitly there.")
    p.add_argument("--manifest", required=True, metavar="URL",
                   help="Parquet manifest (image_id, uri, optional per-row overrides)")
    p.add_argument("--output", default="outputs", metavar="URL",
                   help="output root, any fsspec URL (default: ./outputs)")
    p.add_argument("--tracking-uri", metavar="URL",
                   help="MLflow tracking server (default: a local sqlite database)")
    p.add_argument("--no-tracking", action="store_true", help="do not track to MLflow at all")
    p.add_argument("--experiment", default="singan-fleet", metavar="NAME",
                   help="MLflow experiment (default: %(default)s)")
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
    p.add_argument("--gpus-per-image", type=float, default=1.0, metavar="G",
                   help="GPUs per Ray task (one training of up to --images-per-task images); "
                        "fractions pack several tasks on one GPU; 0 = CPU. On a cluster "
                        "without GPUs trainings run on CPU (default: 1)")
    p.add_argument("--cpus-per-image", type=float, default=1.0, metavar="C",
                   help="CPUs reserved per Ray task (default: 1)")
    p.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="retries of an image whose worker died or whose storage kept failing; "
                        "each retry resumes at the last finished scale (default: %(default)s)")
    p.add_argument("--max-in-flight", type=int, metavar="N",
                   help="tasks submitted at once (default: twice the trainings that fit)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N manifest rows")
    p.add_argument("--force", action="store_true",
                   help="retrain images that are already done (their folders are cleared)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    output = args.output if "://" in args.output else str(Path(args.output).resolve())

    # 1. The whole manifest is checked before anything trains.
    try:
        if args.limit is not None and args.limit < 1:
            raise InputError("--limit must be at least 1")
        if args.images_per_task is not None and args.images_per_task < 1:
            raise InputError("--images-per-task must be at least 1")
        overrides = parse_sets(args.set)
        # No credentials for an S3 URL: one line now, not a traceback after the trainings.
        for url in (args.manifest, output, args.inception_weights):
            if url is not None:
                check_credentials(url)
        if args.recipe is not None:
            overrides["recipe"] = args.recipe
        tasks = read_manifest(args.manifest, preset=args.preset, overrides=overrides,
                              limit=args.limit)
        # SIFID weights: an error only when the user named them; otherwise one warning.
        inception = None
        if args.sifid_samples > 0:
            inception = stem_weights(args.inception_weights,
                                     required=args.inception_weights is not None)
    except InputError as err:
        print(f"train_manifest: error: {err}", file=sys.stderr)
        return 2
    names = [t.task for t in tasks]
    print(f"{len(tasks)} images from {redact(args.manifest)} -> {redact(output)}"
          + (f" ({task_registry.counts(names)})"
             if task_registry.any_besides_training(names) else ""))

    # 2. Tracking: a parent run for the job. Tracking trouble is reported, never fatal.
    tracking_uri = tracking_target(args)
    experiment_id = parent_run_id = None
    if tracking_uri is not None:
        try:
            experiment_id, parent_run_id = tracking.start_job_run(
                tracking_uri, args.experiment, local_artifacts(tracking_uri),
                params={"manifest": args.manifest, "output": output, "preset": args.preset,
                        "images": len(tasks), "tasks": task_registry.counts(names),
                        "gpus_per_image": args.gpus_per_image,
                        "force": args.force,
                        **{f"config.{k}": v
                           for k, v in config(args.preset, **overrides).to_dict().items()}})
        except Exception as err:  # noqa: BLE001 - trainings go on; workers retry on their own
            logger.warning("MLflow at %s unreachable (%s); training without a parent run",
                           redact(tracking_uri), one_line(err))
    ui_hint = tracking_hint(tracking_uri, experiment_id)

    if args.force:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda t: ImageStore(output, t.image_id).remove_all(), tasks))

    # 3. Fan out and collect.
    settings = JobSettings(output=output, tracking_uri=tracking_uri, experiment=args.experiment,
                           experiment_id=experiment_id, parent_run_id=parent_run_id,
                           num_samples=args.num_samples, sifid_samples=args.sifid_samples,
                           quality_samples=args.quality_samples, job_id=uuid.uuid4().hex)
    beat = Heartbeat(tracking_uri, parent_run_id, started)
    results, placement = fan_out(tasks, settings, inception, args, beat)
    order = {task.image_id: index for index, task in enumerate(tasks)}
    results.sort(key=lambda result: order[result.image_id])  # the table in manifest order

    # 4. Replay tracking that did not make it during training, then the table and the summary.
    if tracking_uri is not None:
        replay(results, output)
    try:
        table_url = results_table.write(results, Storage(output))
    except TransientError as err:
        # Storage down at the very end: the trainings are stored (each image's _SUCCESS holds
        # its result), so the summary still comes, and the job fails for the missing table.
        table_url = None
        print(f"train_manifest: the results table could not be written ({err}); "
              "run the job again to write it (finished images are skipped)", file=sys.stderr)
    seconds = time.perf_counter() - started
    if parent_run_id is not None:
        tracking.end_job_run(tracking_uri, parent_run_id, results, seconds, placement)
    print_summary(results, seconds, table_url, ui_hint)
    return 1 if table_url is None or any(r.status == Status.FAILED for r in results) else 0


def parse_sets(items: list[str]) -> dict:
    """--set FIELD=VALUE options -> config overrides, typed like the Config field: numbers,
    text (padding=circular), true/false (noise_padding=true), `none` where the field takes it.
    Whether the value is allowed (a padding of that name) is the config's check."""
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        kind = CONFIG_FIELD_KINDS.get(name)
        if not sep or kind is None:
            raise InputError(f"--set {item}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(CONFIG_FIELD_KINDS)}")
        if text == "none" and name in NULLABLE_FIELDS:
            overrides[name] = None
        elif kind == "str":
            overrides[name] = text
        elif kind == "bool":
            overrides[name] = parse_bool(text)
            if overrides[name] is None:
                raise InputError(f"--set {item}: {text!r} is not true or false")
        else:
            try:
                overrides[name] = float(text) if kind == "float" else int(text)
            except ValueError as err:
                raise InputError(f"--set {item}: {text!r} is not "
                                 f"{'a number' if kind == 'float' else 'an integer'}") from err
    return overrides


def tracking_target(args) -> str | None:
    """The tracking URI to use: --tracking-uri, else a local sqlite database; None without."""
    if args.no_tracking:
        return None
    return args.tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"


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
    """Tells MLflow that this driver lives (tracking.heartbeat), at most once a minute, so that a
    later job can tell a killed job's run from a running one."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, started: float):
        self.tracking_uri, self.run_id, self.started = tracking_uri, run_id, started
        self.last = time.perf_counter()

    def __call__(self) -> None:
        now = time.perf_counter()
        if self.run_id is None or now - self.last < tracking.HEARTBEAT_SECONDS:
            return
        self.last = now
        try:
            tracking.heartbeat(tracking.client_for(self.tracking_uri), self.run_id,
                               now - self.started)
        except Exception as err:  # noqa: BLE001 - tracking never stops a job
            logger.info("MLflow heartbeat failed (%s)", one_line(err))


def fan_out(tasks, settings: JobSettings, inception: dict | None, args,
            tick=None) -> tuple[list[ImageResult], dict]:
    """One Ray task per bucket of images of one plan (pipeline.buckets); results stream back
    with ray.wait, one per image, and a progress display shows them. Returns the results and
    what the job really used (GPUs per task: 0 without GPUs, images per task, tasks)."""
    import ray

    resources = fleet.connect(args.verbose)
    gpus, slots = fleet.placement(resources, args.gpus_per_image, args.cpus_per_image)
    # Unless told, as many as train best together, but no fewer tasks than the cluster's
    # slots: a few images on many slots train side by side rather than in one task.
    per_task = args.images_per_task or min(IMAGES_PER_TASK["gpu" if gpus else "cpu"],
                                           max(1, math.ceil(len(tasks) / slots)))
    buckets = make_buckets(tasks, per_task)
    print(f"{len(buckets)} Ray tasks of up to {per_task} images of one size and settings")
    remote = ray.remote(train_bucket).options(
        num_gpus=gpus, num_cpus=args.cpus_per_image, max_retries=args.max_retries,
        retry_exceptions=[TransientError], name="train_bucket")
    inception_ref = ray.put(inception)  # once, not once per task

    def crashed(bucket, err: Exception) -> list[ImageResult]:
        return [ImageResult(task.image_id, Status.FAILED, fleet.crash_reason(err), None, 0.0,
                            None, None, ImageStore(settings.output, task.image_id).url, True,
                            task=task.task) for task in bucket]

    results = fleet.stream(lambda bucket: remote.remote(bucket, settings, inception_ref), buckets,
                           max_in_flight=args.max_in_flight or 2 * slots, on_crash=crashed,
                           progress=fleet.Progress(len(tasks), slots, describe), tick=tick)
    return results, {"gpus_per_task_used": gpus, "images_per_task": per_task,
                     "ray_tasks": len(buckets)}


def describe(result: ImageResult) -> tuple[str, str]:
    """(status, one line) of a finished image, for the progress display."""
    name = f"{result.image_id}{task_registry.note(result.task)}"
    if result.error:
        return result.status, f"{result.status} {name}: {result.error}"
    sifid = f", SIFID {result.sifid:.4f}" if result.sifid is not None else ""
    return result.status, (f"{result.status} {name} ({result.num_scales} scales, "
                           f"{result.seconds:.1f} s{sifid})")


def replay(results: list[ImageResult], output: str) -> None:
    """Send to MLflow what workers could not (the server was down for a while)."""
    late = [r for r in results if not r.tracking_complete]
    for result in late:
        try:
            report = tracking.sync_image(ImageStore(output, result.image_id))
            print(f"MLflow: sent {report.points_sent} late points of {result.image_id}")
        except Exception as err:  # noqa: BLE001
            print(f"MLflow still unreachable for {result.image_id} ({one_line(err)}); "
                  f"later: python jobs/sync_tracking.py --output {output}")


def print_summary(results: list[ImageResult], seconds: float, table_url: str | None,
                  ui_hint: str | None) -> None:
    counts = {s: sum(r.status == s for r in results) for s in Status}
    print(f"{len(results)} images in {seconds:.1f} s: {counts[Status.DONE]} trained, "
          f"{counts[Status.SKIPPED]} already done, {counts[Status.FAILED]} failed")
    names = [r.task for r in results]
    if task_registry.any_besides_training(names):
        print(f"tasks: {task_registry.counts(names)}")
    for r in results:
        if r.status == Status.FAILED:
            print(f"  failed {r.image_id}{task_registry.note(r.task)}: {r.error}")
    if table_url is not None:
        print(f"results: {table_url}")
    if ui_hint:
        print(ui_hint)


if __name__ == "__main__":
    sys.exit(main())
