"""Packing: k trainings at once on one device, aggregate images per hour for each k, as JSON.

    python bench/packing.py                                   # CPU, k = 1, 2, 4, 8, small config
    python bench/packing.py --device cuda --preset paper --max-size 250 --niter 100 --ks 1,2,4,8

Every training is a separate process (as Ray runs them: one worker per training), a full
`singan.train` of the image with its own seed. The processes start, import torch and load the
image, then all begin training at the same moment; the wall time runs from there to the last
one's end, so start-up and shut-down are not counted (a fleet's workers are long-lived).
aggregate images per hour = k * 3600 / wall seconds.

CPU: the cores are split, torch threads = max(1, cores // k) per training (k above the core
count oversubscribes them: the point where packing stops paying).
CUDA: all k processes on the same GPU (the job's `--gpus-per-task 1/k`). By default the driver
time-slices between processes; with MPS (started on the node by the infrastructure,
`nvidia-cuda-mps-control -d`, not by this script) kernels of different processes can run
concurrently, which is what small SinGAN kernels need to fill a GPU. Run it both ways to see
what MPS is worth on a given GPU.

With --niter below the preset's, images per hour are for that many iterations per scale; the
ratios between k are what this benchmark is for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One training: get ready, wait for the parent's "go" on stdin, train, print JSON."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    import singan
    from singan.data.examples import pebbles

    overrides = {"niter": args.niter} if args.niter else {}
    if args.max_size:
        overrides["max_size"] = args.max_size
    cfg = singan.config(args.preset, **overrides)
    image = singan.load_image(args.image) if args.image else pebbles(120, 160, seed=args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # create the CUDA context before the start line
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    singan.train(image, cfg, device=device, seed=args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # time.time(): comparable across processes, so the parent can end its clock at the last
    # training's end rather than at the last interpreter's exit.
    print(json.dumps({"seconds": time.perf_counter() - start, "end": time.time(),
                      "peak_memory_mb": peak}), flush=True)


def run_k(k: int, args: argparse.Namespace, cores: int) -> dict:
    """Start k workers, release them together, wait for all; the wall time and the per-training
    figures."""
    threads = max(1, cores // k)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", args.device,
               "--preset", args.preset, "--threads", str(threads)]
    for flag, value in (("--niter", args.niter), ("--max-size", args.max_size),
                        ("--image", args.image)):
        if value:
            command += [flag, str(value)]
    procs = [subprocess.Popen(command + ["--seed", str(args.seed + i)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(k)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a training did not start: {proc.communicate()[1][-2000:]}")
        start = time.time()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"a training failed (exit {proc.returncode}): {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        wall = max(r["end"] for r in results) - start
    finally:
        for proc in procs:  # only our own children, and only if something went wrong
            if proc.poll() is None:
                proc.kill()
    seconds = [r["seconds"] for r in results]
    return {"k": k, "threads_per_training": threads, "wall_seconds": round(wall, 2),
            "seconds_per_training_mean": round(sum(seconds) / k, 2),
            "seconds_per_training_max": round(max(seconds), 2),
            "images_per_hour": round(k * 3600 / wall, 2),
            "peak_memory_mb_per_training": round(max(r["peak_memory_mb"] for r in results), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--max-size", type=int, default=64,
                        help="image size of every training (default: %(default)s)")
    parser.add_argument("--niter", type=int, default=20,
                        help="iterations per scale (default: %(default)s)")
    parser.add_argument("--ks", default="1,2,4,8",
                        help="trainings at once, comma separated (default: %(default)s)")
    parser.add_argument("--image", help="training image (default: a built-in example)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", type=int, default=os.cpu_count(),
                        help="CPU cores to split between the trainings (default: all)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    ks = [int(k) for k in args.ks.split(",")]
    if not ks or min(ks) < 1:
        parser.error("--ks: positive integers, e.g. 1,2,4,8")
    runs = [run_k(k, args, args.cores) for k in ks]
    first = runs[0]["images_per_hour"]
    for run in runs:
        run["aggregate_speedup"] = round(run["images_per_hour"] / first, 2)  # vs the first k
    device_name = platform.processor() or "cpu"
    if args.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(torch.device(args.device))
    result = {
        "benchmark": "packing",
        "device": device_name,
        "device_type": args.device.split(":")[0],
        "cores": args.cores,
        "image": args.image or "built-in example (pebbles 120x160)",
        "preset": args.preset,
        "max_size": args.max_size,
        "niter": args.niter,
        "runs": runs,
        "best_k": max(runs, key=lambda r: r["images_per_hour"])["k"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
