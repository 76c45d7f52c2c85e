"""What the Ray layer costs per image: the same images trained by calling the per-image function
in a loop, and by the training job on a local Ray, with the same threads per training.

    python bench/pipeline_overhead.py [--images 6] [--niter 20] [--max-size 48]

Prints JSON: seconds for the direct loop, for the job (with and without Ray's start-up), and
the overhead per image. Both sides write the full storage layout to local disk; tracking is off
on both (its cost is the tracking server's, not Ray's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from pipeline.catalog import manifest_rows_from, write_manifest
from pipeline.manifest import read_manifest
from pipeline.train_image import JobSettings, train_image
from singan.data.examples import pebbles
from singan.data.image import save_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--max-size", type=int, default=48)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads per training, on both sides (default: all cores, one at a time)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    for i in range(args.images):
        save_image(pebbles(96, 144, seed=i), work / "images" / f"img_{i:03d}.png")
    manifest = str(work / "manifest.parquet")
    write_manifest(manifest_rows_from(str(work / "images")), manifest)
    sets = {"max_size": args.max_size, "niter": args.niter}

    # 1. Direct: the per-image function in a loop, in this process.
    torch.set_num_threads(args.threads)
    tasks = read_manifest(manifest, preset="quick", overrides=sets)
    start = time.perf_counter()
    per_image = [train_image(t, JobSettings(output=str(work / "direct"), device="cpu")).seconds
                 for t in tasks]
    direct = time.perf_counter() - start

    # 2. The job on a local Ray it starts itself: one training at a time, same threads.
    command = [sys.executable, str(ROOT / "jobs" / "train_manifest.py"), "--manifest", manifest,
               "--output", str(work / "ray"), "--preset", "quick", "--no-tracking", "--sifid-samples", "0",
               "--cpus-per-task", str(args.threads), "--gpus-per-task", "0",
               *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    job = time.perf_counter() - start
    lines = done.stdout.splitlines()
    summary = next(line for line in lines if " images in " in line)
    in_job = float(summary.split(" images in ")[1].split(" s")[0])
    ray_ready = next(line for line in lines if line.startswith("Ray ready in "))
    ray_start = float(ray_ready.split("ready in ")[1].split(" s")[0])

    print(json.dumps({
        "images": args.images, "niter": args.niter, "max_size": args.max_size,
        "threads_per_training": args.threads,
        "direct_seconds": round(direct, 2),
        "direct_seconds_per_image": round(direct / args.images, 3),
        "training_seconds_per_image": round(sum(per_image) / args.images, 3),
        "job_seconds_total": round(job, 2),  # process start, imports, Ray start, manifest check
        "job_seconds_in_main": round(in_job, 2),  # as the job reports it (after imports)
        "ray_start_seconds": round(ray_start, 2),
        "ray_overhead_per_image_seconds": round((job - direct) / args.images, 3),
        "ray_overhead_per_image_after_start_seconds": round(
            (in_job - ray_start - direct) / args.images, 3),
        "work_dir": str(work),
    }, indent=2))


if __name__ == "__main__":
    main()
