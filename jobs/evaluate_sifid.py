"""Evaluate trained pyramids in bulk: SIFID and diversity of samples from the coarsest scale and
from finer ones, as in the SinGAN paper's table, one Ray task per model.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/evaluate_sifid.py --models s3://bucket/outputs --out s3://bucket/eval \\
        --tracking-uri http://127.0.0.1:5000 --inception-weights s3://bucket/inception.pth

--models is a training job's output root (every image with _SUCCESS) or its _results.parquet.
Writes to --out: sifid.parquet (one row per sample), summary.json (per image and overall, per
start scale), sifid_histogram.png, report.html (the real image beside its samples with their
numbers), and per image its samples; logs an evaluation run nested under each image's training
run in MLflow. Models already evaluated with the same settings are skipped. Exit status 1 if a
model failed, 2 for bad arguments or missing Inception weights.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs import fleet
from pipeline import report
from pipeline.evaluate import (
    EvalResult,
    EvalSettings,
    evaluate_image,
    parse_starts,
    trained_image_ids,
)
from pipeline.inception import stem_weights
from pipeline.results import Status
from pipeline.storage import Storage, TransientError
from singan.errors import InputError


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
    p.add_argument("--tracking-uri", metavar="URL", help="MLflow server (default: no tracking)")
    p.add_argument("--experiment", default="singan-fleet", metavar="NAME",
                   help="MLflow experiment for models without a training run")
    p.add_argument("--gpus-per-image", type=float, default=1.0, metavar="G",
                   help="GPUs per evaluation; fractions allowed; CPU without GPUs (default: 1)")
    p.add_argument("--cpus-per-image", type=float, default=1.0, metavar="C")
    p.add_argument("--max-retries", type=int, default=3, metavar="N")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        if args.samples < 2:
            raise InputError("--samples must be at least 2 (diversity is a standard deviation)")
        starts = parse_starts(args.start_scales)
        models = trained_image_ids(args.models)
        if not models:
            raise InputError(f"{args.models}: no finished trainings found")
        inception = stem_weights(args.inception_weights, required=True)
    except InputError as err:
        print(f"evaluate_sifid: error: {err}", file=sys.stderr)
        return 2
    out = args.out if "://" in args.out else str(Path(args.out).resolve())
    settings = EvalSettings(out=out, starts=tuple(starts), samples=args.samples, dims=args.dims,
                            seed=args.seed, tracking_uri=args.tracking_uri,
                            experiment=args.experiment)
    print(f"{len(models)} models from {args.models} -> {out}")

    import ray

    resources = fleet.connect(args.verbose)
    gpus, slots = fleet.placement(resources, args.gpus_per_image, args.cpus_per_image,
                                  "evaluations")
    remote = ray.remote(evaluate_image).options(
        num_gpus=gpus, num_cpus=args.cpus_per_image, max_retries=args.max_retries,
        retry_exceptions=[TransientError], name="evaluate_image")
    inception_ref = ray.put(inception)
    results: list[EvalResult] = fleet.stream(
        lambda item: remote.remote(item[0], item[1], settings, inception_ref), models,
        max_in_flight=2 * slots,
        on_crash=lambda item, err: EvalResult(item[0], Status.FAILED, fleet.crash_reason(err)),
        progress=fleet.Progress(len(models), slots, describe))

    names = [name for name, _ in starts]
    summary = report.write_all(results, Storage(out), names, args.dims)
    print(f"{len(results)} models in {time.perf_counter() - started:.1f} s")
    for name, values in summary["overall"].items():
        print(f"  start {name}: SIFID {values['sifid_mean']:.4f}, diversity "
              f"{values['diversity']:.3f}, patch SWD {values['patch_swd_mean']:.4f}, "
              f"nearest-patch {values['nn_patch_distance_mean']:.4f} over {values['images']} "
              "images")
    for image_id, error in summary["failed"].items():
        print(f"  failed {image_id}: {error}")
    print(f"report: {Storage(out).url_of('report.html')}")
    return 1 if summary["failed"] else 0


def describe(result: EvalResult) -> tuple[str, str]:
    if result.error:
        return result.status, f"{result.status} {result.image_id}: {result.error}"
    numbers = ", ".join(f"SIFID {name} {v['sifid_mean']:.4f}" for name, v in result.summary.items())
    return result.status, f"{result.status} {result.image_id} ({numbers})"


if __name__ == "__main__":
    sys.exit(main())
