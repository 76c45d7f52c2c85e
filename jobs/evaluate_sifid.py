"""Evaluate trained pyramids in bulk: SIFID and diversity of samples from the coarsest scale and
from finer ones, as in the SinGAN paper's table, one Ray task per model.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/evaluate_sifid.py --models s3://bucket/outputs --out s3://bucket/eval \\
        --tracking-uri http://127.0.0.1:5000 --inception-weights s3://bucket/inception.pth

--models is a training job's output root (the images its ledger says are done: one LIST per
1,000 images, no glob of the image folders) or its _results.parquet. The models stream through
Ray tasks of --models-per-task models each, as many in flight as the cluster runs, and their
rows stream into local files. Writes to --out: sifid.parquet (one row per sample), images.parquet
(one row per image and start scale), summary.json (overall, per start scale, and the failed
models), sifid_histogram.png, report.html (the images with the highest and the lowest SIFID
beside their samples, with their numbers), and per image its samples; logs an evaluation run
nested under each image's training run in MLflow. Models already evaluated with the same
settings are skipped. Exit status 1 if a model failed, 2 for bad arguments or missing Inception
weights.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as a script from a checkout, not installed (jobs.*)
    sys.path.insert(0, str(ROOT))

from jobs import fleet
from pipeline import tracking
from pipeline.evaluate import (
    EvalResult,
    EvalSettings,
    end_job_run,
    evaluate_models,
    parse_starts,
    start_job_run,
    trained_image_ids,
)
from pipeline.inception import stem_weights
from pipeline.ledger import Status
from pipeline.report import Report, histogram_figure
from pipeline.storage import Storage, TransientError, redact
from singan.errors import InputError

MODELS_PER_TASK = 8  # models evaluated one after another in one Ray task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_sifid.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, metavar="URL",
                   help="a training output root, or its _results.parquet")
    p.add_argument("--out", required=True, metavar="URL", help="where the evaluation goes")
    p.add_argument("--samples", type=int, default=10, metavar="K",
                   help="samples per start scale and image (default: %(default)s)")
    p.add_argument("--start-scales", default="N,N-1", metavar="N,N-1",
                   help="start scales in the paper's naming, N the coarsest (default: %(default)s)")
    p.add_argument("--dims", type=int, choices=(64, 192), default=64,
                   help="Inception features: 64 as published numbers, 192 as the paper's text")
    p.add_argument("--inception-weights", metavar="URL",
                   help="inception_v3_google-0cc3c7bd.pth at any fsspec URL (default: "
                        "$SINGAN_INCEPTION_WEIGHTS, the torch hub cache, or a download)")
    fleet.add_tracking_options(p, "MLflow experiment, where the training job's runs are")
    p.add_argument("--gpus-per-task", type=float, default=1.0, metavar="G",
                   help="GPUs per Ray task, asked of Ray even before a GPU node has joined; "
                        "fractions allowed; 0 = CPU (a local Ray started on a machine without "
                        "GPUs runs on CPU anyway) (default: 1)")
    p.add_argument("--gpus-per-image", dest="gpus_per_task", type=float, action=fleet.Renamed,
                   help=argparse.SUPPRESS)
    p.add_argument("--cpus-per-task", type=float, default=1.0, metavar="C")
    p.add_argument("--cpus-per-image", dest="cpus_per_task", type=float, action=fleet.Renamed,
                   help=argparse.SUPPRESS)
    p.add_argument("--models-per-task", type=int, default=MODELS_PER_TASK, metavar="K",
                   help="models evaluated one after another by one Ray task (default: "
                        "%(default)s)")
    p.add_argument("--max-retries", type=int, default=3, metavar="N")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    fleet.limit_malloc_arenas()
    try:
        return evaluate(build_parser().parse_args(argv))
    except TransientError as err:  # storage kept failing for the driver itself
        print(f"evaluate_sifid: error: {err}", file=sys.stderr)
        return 1


def evaluate(args: argparse.Namespace) -> int:
    """The job, with its parsed arguments; its exit status."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        if args.samples < 2:
            raise InputError("--samples must be at least 2 (diversity is a standard deviation)")
        if args.models_per_task < 1:
            raise InputError("--models-per-task must be at least 1")
        starts = parse_starts(args.start_scales)
        models = trained_image_ids(args.models)
        first = next(models, None)
        if first is None:
            raise InputError(f"{args.models}: no finished trainings found (the output's ledger, "
                             "_results/, lists none)")
        inception = stem_weights(args.inception_weights, required=True)
    except InputError as err:
        print(f"evaluate_sifid: error: {err}", file=sys.stderr)
        return 2
    out = args.out if "://" in args.out else str(Path(args.out).resolve())
    models_url = args.models if "://" in args.models else str(Path(args.models).resolve())
    tracking_uri = fleet.tracking_target(args)
    settings = EvalSettings(out=out, starts=tuple(starts), samples=args.samples, dims=args.dims,
                            seed=args.seed, tracking_uri=tracking_uri,
                            experiment=args.experiment)
    print(f"models from {args.models} -> {out}")
    # The evaluation's own run, nested under the training job's (when this server has it).
    job_run = start_job_run(settings, models_url,
                            tracking.context_tags("jobs/evaluate_sifid.py"))

    import ray

    placement = fleet.Placement(args.gpus_per_task, args.cpus_per_task,
                                local=fleet.connect(args.verbose), what="evaluations")
    remote = ray.remote(fleet.run_on_worker)
    options = dict(max_retries=args.max_retries, retry_exceptions=[TransientError],
                   **placement.options())
    inception_ref = ray.put(inception)
    names = [name for name, _ in starts]
    report = Report(names, args.dims)

    def submit(batch: list[tuple[str, str]]):
        return remote.options(name=f"evaluate {batch[0][0]}", **options).remote(
            evaluate_models, batch, settings, inception_ref)

    def crashed(batch, err) -> list[EvalResult]:
        return [EvalResult(image_id, Status.FAILED, fleet.crash_reason(err))
                for image_id, _ in batch]

    batches = _batched(itertools.chain([first], models), args.models_per_task)
    progress = fleet.Progress(None, placement, describe, unit="model")
    for result in fleet.stream(submit, batches, placement=placement, on_crash=crashed,
                               progress=progress):
        report.add(result)
    summary = report.write(Storage(out))
    if job_run is not None:
        images = pq.read_table(io.BytesIO(Storage(out).get("images.parquet"))).to_pydict()
        end_job_run(settings, job_run, summary,
                    histogram_figure(report.sifid_values(), report.starts), images,
                    Storage(out).get("report.html"))
        print(f"MLflow: the evaluation run {job_run} at {redact(tracking_uri)}")
    print(f"{summary['evaluated'] + summary['failed_count']} models in "
          f"{time.perf_counter() - started:.1f} s")
    for name, values in summary["overall"].items():
        print(f"  start {name}: SIFID {values['sifid_mean']:.4f}, diversity "
              f"{values['diversity']:.3f}, patch SWD {values['patch_swd_mean']:.4f}, "
              f"nearest-patch {values['nn_patch_distance_mean']:.4f} over {values['images']} "
              "images")
    for image_id, error in summary["failed"].items():
        print(f"  failed {image_id}: {error}")
    if summary["failed_count"] > len(summary["failed"]):
        print(f"  ... and {summary['failed_count'] - len(summary['failed'])} more failed")
    print(f"report: {Storage(out).url_of('report.html')}")
    return 1 if summary["failed_count"] else 0


def _batched(items: Iterator, size: int) -> Iterator[list]:
    """Lists of up to `size` items, taken from `items` as they are needed."""
    while batch := list(itertools.islice(items, size)):
        yield batch


def describe(result: EvalResult) -> tuple[str, str]:
    if result.error:
        return result.status, f"{result.status} {result.image_id}: {result.error}"
    numbers = ", ".join(f"SIFID {name} {v['sifid_mean']:.4f}" for name, v in result.summary.items())
    return result.status, f"{result.status} {result.image_id} ({numbers})"


if __name__ == "__main__":
    sys.exit(main())
