"""Training speed: seconds per iteration at every scale and in total, images per hour and peak
memory, as JSON; optionally against a reference-style baseline timed in the same run.

    python bench/train_speed.py                               # built-in example, quick preset
    python bench/train_speed.py --image photo.jpg --preset paper --niter 100 --device cuda
    python bench/train_speed.py --recipe singan,consingan --niter 50   # compare the recipes
    python bench/train_speed.py --image photo.jpg --preset paper --max-size 128 --niter 5 \\
        --baseline --threads 1                                # ours vs the reference's style
    python bench/train_speed.py --preset paper --max-size 48 --images 4   # 4 images together

Times a real training (the same code as `singan train`), synchronising the device only at scale
boundaries. With --niter below the preset's, the per-iteration figures are measured on fewer
iterations and `projected_total_seconds` scales them to the preset's iteration count.

--baseline (SinGAN recipe only): at the start of every scale, with the coarser scales of this
very training frozen, our training step (singan.recipes.singan.training.train_scale) and the
reference-style loop (bench/reference_style.py) are timed on the same image, config and device, alternately (ours
first in even rounds, the baseline first in odd ones) so that other load on the machine hits
both alike. Each round runs --warmup untimed iterations (lazy allocations, optimizer state,
kernel selection), then --baseline-iters timed ones; a scale's seconds are the median over
--rounds rounds, its ratio the median of the rounds' ours / baseline (each pair timed back to
back). ratio is in wall time (the speed issue's target: at most 0.5 at every scale); on the CPU
also cpu_ratio, the same in process CPU time, which other processes on the machine disturb much
less.

--images K: K images trained together (singan.train_many: copies of the image with seeds
seed .. seed + K - 1) against the same K trained one after another, at every scale, in the same
run: the coarser scales are trained once (2 iterations each, quality does not matter for
timing), then each round times the K together and the K in turn (alternating which goes first)
for --warmup + --baseline-iters iterations; the median over --rounds rounds is kept. The totals
are projected to the preset's iterations per scale, as images per hour each way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import singan
from singan.data.examples import pebbles
from singan.recipes.singan.training import train_scale

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_style import ReferenceStyleScale


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Timer(singan.Callback):
    """Per-scale wall time of the real training; with `compare`, runs it at every scale start
    (before the clock of that scale starts)."""

    def __init__(self, device: torch.device, compare=None):
        self.device, self.rows, self.compare, self.comparisons = device, [], compare, []
        self.compare_seconds = 0.0  # kept out of the training's total

    def on_scale_start(self, model, scale, noise_amp):
        if self.compare is not None:
            start = time.perf_counter()
            self.comparisons.append(self.compare(model, scale))
            self.compare_seconds += time.perf_counter() - start
        sync(self.device)
        self.start = time.perf_counter()

    def on_scale_end(self, model, scale):
        sync(self.device)
        seconds = time.perf_counter() - self.start
        h, w = model.plan.shapes[scale]
        niter = model.config.niter
        self.rows.append({"scale": scale, "height": h, "width": w,
                          "channels": model.config.channels(scale), "seconds": round(seconds, 3),
                          "seconds_per_iteration": round(seconds / niter, 5)})


class Stamps(singan.Callback):
    """Wall and CPU timestamps after logged iterations (every config.log_every iterations and the
    last: singan.base.is_log_step). CPU time (this process's, all threads) is the steadier figure
    when other processes share the cores; on a GPU only the wall time means anything."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, {}

    def on_iteration(self, log):
        self.stamp(log.iteration)

    def stamp(self, iteration: int) -> None:
        sync(self.device)
        self.times[iteration] = (time.perf_counter(), time.process_time())

    def per_iteration(self, warmup: int, iters: int) -> dict:
        """Wall and CPU seconds per iteration over iterations warmup+1 .. warmup+iters."""
        (wall0, cpu0), (wall1, cpu1) = self.times[warmup], self.times[warmup + iters]
        return {"wall": (wall1 - wall0) / iters, "cpu": (cpu1 - cpu0) / iters,
                "peak": read_peak(self.device)}


def time_ours(model, reals, scale: int, warmup: int, iters: int, step=train_scale) -> dict:
    """Wall and CPU seconds per iteration of singan.recipes.singan.training.train_scale (or
    `step`, a variant of it with the same signature) on `scale`, and peak CUDA MB.

    Trains a throwaway model that shares the frozen coarser scales; logging every `warmup`
    iterations gives the timestamps (on a GPU each log is one host sync, so ours is timed with
    a few more syncs than it has in a real training: slightly pessimistic)."""
    real = reals[scale]
    cfg = dataclasses.replace(model.config, niter=warmup + iters, log_every=warmup)
    scratch = singan.SinGAN(cfg, model.plan, model.seed).to(real.device)
    scratch.scales.extend(list(model.scales[:scale]))
    stamps = Stamps(real.device)
    reset_peak(real.device)
    step([scratch], scale, [real], [[stamps]])
    return stamps.per_iteration(warmup, iters)


def time_baseline(model, reals, scale: int, warmup: int, iters: int) -> dict:
    """Wall and CPU seconds per iteration of the reference-style loop on `scale`, peak CUDA MB."""
    real = reals[scale]
    stamps = Stamps(real.device)
    reset_peak(real.device)
    baseline = ReferenceStyleScale(model, scale, real, seed=model.seed)
    baseline.run(warmup + iters, stamps.stamp)
    return stamps.per_iteration(warmup, iters)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def read_peak(device: torch.device) -> float | None:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return None


def make_compare(args: argparse.Namespace, reals: list[torch.Tensor]):
    """The per-scale comparison, run by Timer at every scale start; `reals`: every level's
    real image (the one about to train included)."""

    def compare(model, scale: int) -> dict:
        runs = {"ours": [], "baseline": []}
        for round_ in range(args.rounds):
            order = ("ours", "baseline") if round_ % 2 == 0 else ("baseline", "ours")
            for who in order:
                timing = time_ours if who == "ours" else time_baseline
                runs[who].append(timing(model, reals, scale, args.warmup, args.baseline_iters))

        def median(who, key):
            return statistics.median(r[key] for r in runs[who])

        def paired_ratio(key):
            # Each round's ours / baseline, timed back to back: a change of machine load between
            # rounds cancels out, which a ratio of the two medians would not do.
            return statistics.median(o[key] / b[key]
                                     for o, b in zip(runs["ours"], runs["baseline"]))

        def rounds(who, key):
            return [round(r[key], 5) for r in runs[who]]

        h, w = model.plan.shapes[scale]
        row = {"scale": scale, "height": h, "width": w,
               "channels": model.config.channels(scale),
               "ours_seconds_per_iteration": round(median("ours", "wall"), 5),
               "baseline_seconds_per_iteration": round(median("baseline", "wall"), 5),
               "ratio": round(paired_ratio("wall"), 3),
               "ours_rounds": rounds("ours", "wall"),
               "baseline_rounds": rounds("baseline", "wall")}
        if reals[0].device.type == "cpu":
            row.update(ours_cpu_seconds_per_iteration=round(median("ours", "cpu"), 5),
                       baseline_cpu_seconds_per_iteration=round(median("baseline", "cpu"), 5),
                       cpu_ratio=round(paired_ratio("cpu"), 3),
                       ours_cpu_rounds=rounds("ours", "cpu"),
                       baseline_cpu_rounds=rounds("baseline", "cpu"))
        else:
            row["ours_peak_memory_mb"] = max(r["peak"] for r in runs["ours"])
            row["baseline_peak_memory_mb"] = max(r["peak"] for r in runs["baseline"])
        return row

    return compare


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
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--samples", metavar="DIR",
                        help="also write 4 random samples per recipe to DIR/RECIPE/")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the reference-style loop at every scale (SinGAN recipe)")
    parser.add_argument("--baseline-iters", type=int, default=3,
                        help="timed iterations per round and side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed iterations before them, at least 1 (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per scale; the median is kept (default: %(default)s)")
    parser.add_argument("--images", type=int, metavar="K",
                        help="time K images trained together against K one after another")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.baseline and (args.baseline_iters < 1 or args.warmup < 1 or args.rounds < 1):
        parser.error("--baseline-iters, --warmup and --rounds must be at least 1")

    device = torch.device(args.device)
    image = singan.load_image(args.image) if args.image else pebbles(188, 250)
    if args.images:
        runs = [time_batches(image, args, device)]
    else:
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
    baseline = args.baseline and recipe == "singan"
    compare = None
    if baseline:
        from singan.recipes.singan.levels import build_reals, plan_pyramid

        # The comparison needs every level's real image, including the one about to train.
        reals = build_reals(image.to(device=device, dtype=torch.float32),
                              plan_pyramid(image.shape[-2], image.shape[-1], cfg))
        compare = make_compare(args, reals)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_mb()
    timer = Timer(device, compare)
    start = time.perf_counter()
    model = singan.train(image, cfg, device=device, seed=args.seed, callbacks=[timer])
    total = time.perf_counter() - start - timer.compare_seconds
    if args.samples:
        rng = torch.Generator(device=device).manual_seed(args.seed)
        for index, x in enumerate(singan.sample(model, 4, generator=rng)):
            singan.save_image(x, Path(args.samples) / recipe / f"sample_{index}.png")
    per_iteration = sum(r["seconds_per_iteration"] for r in timer.rows)
    projected = per_iteration * preset.niter
    run = {
        "recipe": recipe,
        "niter": cfg.niter,
        "max_size": cfg.max_size,
        "scales": timer.rows,
        "generator_parameters": generator_parameters(model),
        "seconds_per_iteration_all_scales": round(per_iteration, 5),
        "total_seconds": round(total, 2),
        # At the recipe's own iteration count (SinGAN 2000 per scale, ConSinGAN 1000 per stage).
        "projected_total_seconds": round(projected, 1),
        "images_per_hour": round(3600 / projected, 3),
        # CUDA: peak allocated by torch; CPU: the process's peak RSS (with --baseline it also
        # covers the baseline's rounds) and how much it grew during the training.
        "peak_memory_mb": read_peak(device) if device.type == "cuda" else peak_rss_mb(),
        "peak_memory_kind": ("cuda_max_memory_allocated" if device.type == "cuda"
                             else "process_peak_rss"),
        "peak_rss_growth_mb": round(peak_rss_mb() - rss_before, 1),
    }
    if baseline:
        run["baseline"] = summarise(timer.comparisons, preset.niter, args)
        run["baseline"]["comparison_seconds"] = round(timer.compare_seconds, 1)
    return run


def summarise(rows: list[dict], niter: int, args: argparse.Namespace) -> dict:
    """Totals of the per-scale comparison, projected to the preset's iterations per scale."""
    ours = sum(r["ours_seconds_per_iteration"] for r in rows)
    base = sum(r["baseline_seconds_per_iteration"] for r in rows)
    summary = {
        "style": "reference (bench/reference_style.py): uint8 numpy resizes on the CPU, "
                 ".item() every D step, per-parameter Adam",
        "warmup": args.warmup, "iterations_per_round": args.baseline_iters, "rounds": args.rounds,
        "scales": rows,
        "ours_projected_total_seconds": round(ours * niter, 1),
        "baseline_projected_total_seconds": round(base * niter, 1),
        "ours_images_per_hour": round(3600 / (ours * niter), 3),
        "baseline_images_per_hour": round(3600 / (base * niter), 3),
        "ratio_total": round(ours / base, 3),
        "ratio_max": max(r["ratio"] for r in rows),
        # The speed issue's target: at most half the reference style's time at every scale.
        "target_met": all(r["ratio"] <= 0.5 for r in rows),
    }
    if "cpu_ratio" in rows[0]:
        ours_c = sum(r["ours_cpu_seconds_per_iteration"] for r in rows)
        base_c = sum(r["baseline_cpu_seconds_per_iteration"] for r in rows)
        summary.update(cpu_ratio_total=round(ours_c / base_c, 3),
                       cpu_ratio_max=max(r["cpu_ratio"] for r in rows))
    return summary


def time_batches(image: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """K images with train_many against the same K one after another, per scale (--images)."""
    count, warmup, iters = args.images, max(1, args.warmup), args.baseline_iters
    preset = singan.config(args.preset)
    overrides = {"max_size": args.max_size} if args.max_size else {}
    frozen_cfg = singan.config(args.preset, niter=2, **overrides)
    seeds = list(range(args.seed, args.seed + count))
    models = singan.train_many([image] * count, frozen_cfg, seeds=seeds, device=device)
    cfg = dataclasses.replace(frozen_cfg, niter=warmup + iters, lr_milestone=warmup + iters,
                              log_every=warmup)
    reals = [model.reals for model in models]
    rows = []
    for scale in range(models[0].num_scales):
        times = {"together": [], "one_by_one": []}
        for round_ in range(args.rounds):
            order = ("together", "one_by_one") if round_ % 2 == 0 else ("one_by_one", "together")
            for how in order:
                groups = [list(range(count))] if how == "together" else [[k] for k in range(count)]
                seconds, peak = 0.0, 0.0
                for group in groups:
                    timing = time_group([models[k] for k in group], scale,
                                        [reals[k][scale] for k in group], cfg, warmup, iters)
                    seconds += timing["wall"]
                    peak = max(peak, timing["peak"] or 0.0)
                times[how].append((seconds, peak))
        h, w = models[0].plan.shapes[scale]
        together = statistics.median(t for t, _ in times["together"])
        one_by_one = statistics.median(t for t, _ in times["one_by_one"])
        row = {"scale": scale, "height": h, "width": w, "channels": cfg.channels(scale),
               "together_seconds_per_iteration": round(together, 5),
               "one_by_one_seconds_per_iteration": round(one_by_one, 5),
               "speedup": round(one_by_one / together, 3)}
        if device.type == "cuda":
            row["together_peak_memory_mb"] = max(p for _, p in times["together"])
            row["one_image_peak_memory_mb"] = max(p for _, p in times["one_by_one"])
        rows.append(row)
    together = sum(r["together_seconds_per_iteration"] for r in rows) * preset.niter
    one_by_one = sum(r["one_by_one_seconds_per_iteration"] for r in rows) * preset.niter
    return {"images": count, "max_size": frozen_cfg.max_size, "scales": rows,
            "warmup": warmup, "iterations_timed": iters, "rounds": args.rounds,
            "projected_total_seconds_together": round(together, 1),
            "projected_total_seconds_one_by_one": round(one_by_one, 1),
            "images_per_hour_together": round(3600 * count / together, 2),
            "images_per_hour_one_by_one": round(3600 * count / one_by_one, 2),
            "time_ratio_together_over_one_by_one": round(together / one_by_one, 3)}


def time_group(models, scale: int, reals, cfg, warmup: int, iters: int) -> dict:
    """Seconds per iteration of train_scale on `models` together (throwaway copies sharing
    their frozen coarser scales), and peak CUDA MB."""
    scratches = []
    for model in models:
        scratch = singan.SinGAN(cfg, model.plan, model.seed).to(reals[0].device)
        scratch.scales.extend(list(model.scales[:scale]))
        scratches.append(scratch)
    stamps = Stamps(reals[0].device)
    reset_peak(reals[0].device)
    train_scale(scratches, scale, reals, [[stamps]] + [[] for _ in scratches[1:]])
    return stamps.per_iteration(warmup, iters)


def generator_parameters(model) -> int:
    """Parameters of all generators: SinGAN's one per scale, ConSinGAN's single growing one."""
    return sum(p.numel() for net in model.generator_modules() for p in net.parameters())


if __name__ == "__main__":
    main()
