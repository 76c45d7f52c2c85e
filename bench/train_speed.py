"""Training speed: seconds per iteration at every scale and in total, as JSON.

    python bench/train_speed.py                               # built-in example, quick preset
    python bench/train_speed.py --image photo.jpg --preset paper --niter 100 --device cuda
    python bench/train_speed.py --recipe singan,consingan --niter 50   # compare the recipes

Times a real training (the same code as `singan train`), synchronising the device only at scale
boundaries. With --niter below the preset's, the per-iteration figures are measured on fewer
iterations and `projected_total_seconds` scales them to the preset's iteration count.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import singan
from singan.examples import pebbles


class Timer(singan.Callback):
    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_scale_start(self, model, scale, noise_amp):
        self._sync()
        self.start = time.perf_counter()

    def on_scale_end(self, model, scale):
        self._sync()
        seconds = time.perf_counter() - self.start
        h, w = model.plan.shapes[scale]
        niter = model.config.niter
        self.rows.append({"scale": scale, "height": h, "width": w,
                          "channels": model.config.channels(scale), "seconds": round(seconds, 3),
                          "seconds_per_iteration": round(seconds / niter, 5)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", help="training image (default: the built-in example)")
    parser.add_argument("--preset", default="quick", choices=sorted(singan.PRESETS))
    parser.add_argument("--recipe", default="singan",
                        help="singan, consingan, or both separated by a comma to compare them "
                             "on the same image and max_size (default: %(default)s)")
    parser.add_argument("--niter", type=int, help="iterations per scale (default: the preset's)")
    parser.add_argument("--max-size", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", metavar="DIR",
                        help="also write 4 random samples per recipe to DIR/RECIPE/")
    args = parser.parse_args()

    device = torch.device(args.device)
    image = singan.load_image(args.image) if args.image else pebbles(188, 250)
    runs = [time_training(image, recipe, args, device) for recipe in args.recipe.split(",")]
    result = {
        "benchmark": "train_speed",
        "image": args.image or "built-in example (pebbles 188x250)",
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": runs,
    }
    if len(runs) == 2:
        # How many times faster the second recipe trains a whole image at its own defaults.
        first, second = runs
        result["speedup_projected_total"] = round(
            first["projected_total_seconds"] / second["projected_total_seconds"], 2)
    print(json.dumps(result, indent=2))


def time_training(image: torch.Tensor, recipe: str, args: argparse.Namespace,
                  device: torch.device) -> dict:
    """Train once with `recipe` and time every scale; samples go to --samples when given."""
    preset = singan.config(args.preset, recipe=recipe)
    overrides = {"recipe": recipe}
    if args.max_size:
        overrides["max_size"] = args.max_size
    if args.niter:
        milestone = max(1, round(args.niter * preset.lr_milestone / preset.niter))
        overrides.update(niter=args.niter, lr_milestone=milestone)
    cfg = singan.config(args.preset, **overrides)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer(device)
    start = time.perf_counter()
    model = singan.train(image, cfg, device=device, seed=args.seed, callbacks=[timer])
    total = time.perf_counter() - start
    if args.samples:
        rng = torch.Generator(device=device).manual_seed(args.seed)
        for index, x in enumerate(singan.sample(model, 4, generator=rng)):
            singan.save_image(x, Path(args.samples) / recipe / f"sample_{index}.png")
    per_iteration = sum(r["seconds_per_iteration"] for r in timer.rows)
    return {
        "recipe": recipe,
        "niter": cfg.niter,
        "max_size": cfg.max_size,
        "scales": timer.rows,
        "generator_parameters": generator_parameters(model),
        "seconds_per_iteration_all_scales": round(per_iteration, 5),
        "total_seconds": round(total, 2),
        # At the recipe's own iteration count (SinGAN 2000 per scale, ConSinGAN 1000 per stage).
        "projected_total_seconds": round(per_iteration * preset.niter, 1),
        "peak_memory_mb": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                           if device.type == "cuda" else None),
    }


def generator_parameters(model) -> int:
    """Parameters of all generators: SinGAN's one per scale, ConSinGAN's single growing one."""
    if model.config.recipe == "consingan":
        return sum(p.numel() for p in model.generator.parameters())
    return sum(p.numel() for level in model.scales for p in level.generator.parameters())


if __name__ == "__main__":
    main()
