"""A/B timing of training-step variants ("levers"), interleaved with ours and the baseline.

    python bench/lever_ab.py --image photo.jpg --max-size 128 --scales 2,5 \\
        --variant /tmp/train_fused.py --variant /tmp/train_channels_last.py

A variant is a Python file defining `train_scale` with the signature of
singan.recipes.singan.training.train_scale, usually a copy of singan/recipes/singan/training.py
with one change (the lever). The coarser scales are trained
once (--niter-frozen iterations each, quality does not matter for timing); then at every
--scales scale each round times ours, every variant and the reference-style baseline
(bench/reference_style.py) on the same frozen model, in an order rotated every round so that
machine load hits them alike. Prints JSON: per scale, the median wall and CPU seconds per
iteration of each and each one's ratio to ours (below 1: faster than ours). CPU only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import time_baseline, time_ours

import singan
from singan.recipes.singan.levels import build_reals, plan_pyramid
from singan.recipes.singan.training import train_scale


def load_variant(path: str):
    spec = importlib.util.spec_from_file_location(f"variant_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.train_scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", required=True)
    p.add_argument("--preset", default="paper")
    p.add_argument("--max-size", type=int, default=128)
    p.add_argument("--scales", default="2,5", help="scales to time, comma separated")
    p.add_argument("--variant", action="append", default=[], metavar="FILE")
    p.add_argument("--niter-frozen", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-baseline", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    image = singan.load_image(args.image)
    cfg = singan.config(args.preset, max_size=args.max_size, niter=args.niter_frozen)
    plan = plan_pyramid(image.shape[-2], image.shape[-1], cfg)
    reals = build_reals(image, plan)
    scales = [int(s) for s in args.scales.split(",")]
    model = singan.SinGAN(cfg, plan, seed=0)
    for scale in range(max(scales)):
        train_scale([model], scale, [reals[scale]])

    steps = {"ours": train_scale}
    steps.update({Path(v).stem: load_variant(v) for v in args.variant})
    if not args.no_baseline:
        steps["baseline"] = None
    rows = []
    for scale in scales:
        runs = {name: [] for name in steps}
        names = list(steps)
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "baseline":
                    timing = time_baseline(model, reals, scale, args.warmup, args.iters)
                else:
                    timing = time_ours(model, reals, scale, args.warmup, args.iters,
                                       step=steps[name])
                runs[name].append(timing)
        row = {"scale": scale, "shape": list(plan.shapes[scale]), "channels": cfg.channels(scale)}
        for key in ("wall", "cpu"):
            medians = {n: statistics.median(r[key] for r in rs) for n, rs in runs.items()}
            row[f"{key}_seconds_per_iteration"] = {n: round(m, 4) for n, m in medians.items()}
            row[f"{key}_ratio_to_ours"] = {n: round(m / medians["ours"], 3)
                                           for n, m in medians.items()}
            row[f"{key}_rounds"] = {n: [round(r[key], 4) for r in rs] for n, rs in runs.items()}
        rows.append(row)
    print(json.dumps({"benchmark": "lever_ab", "image": args.image, "max_size": args.max_size,
                      "threads": torch.get_num_threads(), "scales": rows}, indent=2))


if __name__ == "__main__":
    main()
