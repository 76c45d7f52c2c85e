"""Fidelity, side by side: the official SinGAN code and ours trained on the same photos with the
same settings and seeds, sampled from the coarsest scale, and scored against the real image at
the finest scale: patch SWD (7x7 patches), nearest-patch distance, and the paper's diversity
(per-pixel standard deviation over the samples, averaged, over the real image's standard
deviation). Prints JSON (and writes it with --out).

    python bench/fidelity.py --out bench/results/fidelity_48px_default.json  # 6 photos x 4 seeds
    python bench/fidelity.py --set z_star=fixed --label z_fixed --out ...   # one change of ours
    python bench/fidelity.py --photos 2 --seeds 1 --samples 8               # a quick look
    python bench/fidelity.py --quirk uint8 --label uint8 --out ...          # a reference quirk
    python bench/fidelity.py --combine a.json b.json --out ab.json          # one report of both

The official code runs from a copy of ../shared/reference/official-singan (--official) in a
temporary folder; besides torch it needs numpy, scipy, matplotlib, scikit-image and scikit-learn
(`pip install scikit-image scikit-learn` in this environment). The project does not depend on
it. Both sides' trainings and samples are cached in --cache (keyed by photo, seed and settings),
so that ablations of ours reuse the official runs and a report can be rebuilt quickly.

Samples are compared as 8-bit images, as the official code writes them (PNG).

--quirk puts one of the reference's quirks that are not config fields (no user wants them) into
our training and sampling, for this process only, to measure what it changes: `uint8` (every
resize of the pyramid and of `prev` goes through uint8, truncating, as the reference's does),
`biases` (the conv biases that BatchNorm cancels are trained, on their rounding noise),
`borders` (the resize weighs the taps beyond the top/left border 0, as the reference's does)
and `plus_one` (a side shrunk to max_size may come out max_size + 1, as the reference's float
error gives it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

import singan
from singan.data.image import load_image
from singan.metrics.patches import nn_patch_distance, patch_swd
from singan.recipes import recipe_named
from singan.settings import parse_overrides

SHARED = ROOT.parent / "shared"
DEFAULT_PHOTOS = SHARED / "images" / "generation"
DEFAULT_OFFICIAL = SHARED / "reference" / "official-singan"
METRICS = ("patch_swd", "nn_patch", "diversity")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=6, help="how many photos (sorted by name)")
    p.add_argument("--photo-dir", type=Path, default=DEFAULT_PHOTOS)
    p.add_argument("--seeds", default="1,2,3,4",
                   help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--max-size", type=int, default=48)
    p.add_argument("--niter", type=int, default=300, help="iterations per scale")
    p.add_argument("--samples", type=int, default=20, help="samples per run, from scale 0")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a config field of ours (repeatable): the ablation measured")
    p.add_argument("--quirk", action="append", default=[], choices=sorted(QUIRKS),
                   help="a reference quirk put into our training (repeatable)")
    p.add_argument("--label", default="default", help="a name for our settings in the report")
    p.add_argument("--official", type=Path, default=DEFAULT_OFFICIAL)
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / ".fidelity-cache")
    p.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                   help="train nothing: one report of the runs of these reports (the same "
                        "settings, no photo and seed twice), e.g. seeds run in two sessions")
    p.add_argument("--picture", type=Path, metavar="PNG",
                   help="also write the first photo's real image beside 6 samples of each side "
                        "(first seed): official above, ours below")
    return p.parse_args(argv)


def through_uint8(resize):
    """`resize` as the reference does it: the input to uint8 first, truncating ((x + 1) / 2 *
    255 cut towards zero), the output clamped to [-1, 1]."""
    def quantised(x, *args, **kwargs):
        levels = torch.floor(((x + 1) / 2).clamp(0, 1) * 255)
        return resize(levels / 255 * 2 - 1, *args, **kwargs).clamp(-1, 1)
    return quantised


def all_parameters(module):
    """Every parameter trained, the conv biases before BatchNorm included (the reference)."""
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return list(module.parameters())


def module(name: str):
    """The module `name` (singan.sample and singan.train are also functions of the package)."""
    return importlib.import_module(name)


def unsigned_taps(tap_weights):
    """`tap_weights` (singan.resize's) as the reference computes them: the tap indices are cast
    to unsigned 64-bit integers first, so a tap beyond the top/left border (a negative index)
    lies 2**64 pixels away and gets weight 0; the taps left are renormalised. (Our resize mirrors
    those taps, as MATLAB does; the two differ by up to 1.5 grey levels in the first rows and
    columns.)"""
    def unsigned(kernel, centre, index):
        return tap_weights(kernel, centre, torch.where(index < 0, index + 2.0**64, index))
    return unsigned


def unclamped_shape(height, width, scale1, max_size):
    """The reference's shrink to max_size: the plain ceil of the float product, max_size + 1
    included (650 x 48/650 = 48.00000000000001 gives 49)."""
    return math.ceil(height * scale1), math.ceil(width * scale1)


RESIZE = module("singan.resize")

# Quirk -> the patches that put it into our training (module, attribute, replacement).
QUIRKS = {
    "uint8": [(module(name), "imresize", through_uint8(module(name).imresize))
              for name in ("singan.recipes.singan.levels", "singan.recipes.singan.sampling")],
    "biases": [(module(name), "trainable", all_parameters)
               for name in ("singan.recipes.singan.training", "singan.recipes.singan.adversary")],
    "borders": [(RESIZE, "_tap_weights", unsigned_taps(RESIZE._tap_weights))],
    "plus_one": [(module("singan.recipes.singan.levels"), "shrunk_shape", unclamped_shape)],
}


@contextmanager
def quirks_on(names: list[str]):
    """The quirks `names` put into singan for the duration; the resize matrices built meanwhile
    (cached by singan.resize) are dropped on the way in and out, so none outlives its quirk."""
    with ExitStack() as patches:
        for name in names:
            for owner, attribute, value in QUIRKS[name]:
                patches.enter_context(mock.patch.object(owner, attribute, value))
        RESIZE._weight_matrix.cache_clear()
        patches.callback(RESIZE._weight_matrix.cache_clear)
        yield


def our_config(args: argparse.Namespace) -> singan.Config:
    """`singan train --preset paper --max-size M --niter N` plus the --set changes."""
    return singan.config("paper", max_size=args.max_size, niter=args.niter,
                         **parse_overrides(args.set))


def real_image(photo: Path, cfg: singan.Config, shape: tuple[int, int]) -> torch.Tensor:
    """The photo at the finest scale, what a side's samples are scored against: our pyramid's
    when it has `shape`; else the photo resized by the same factor to `shape` (the official
    code may give max_size + 1 pixels where ours keeps max_size)."""
    image = load_image(photo)
    plan = singan.plan(*image.shape[-2:], cfg)
    if plan.real_shape == tuple(shape):
        return recipe_named(cfg.recipe).build_reals(image, plan)[-1]
    return singan.imresize(image, scale=plan.scale1, shape=tuple(shape))


def as_8bit(x: torch.Tensor) -> torch.Tensor:
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def cached(path: Path, make, *make_args) -> dict:
    """make(*make_args), kept in `path` for the next run."""
    if path.exists():
        return torch.load(path, weights_only=True)
    value = make(*make_args)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def run_official(photo: Path, seed: int, args: argparse.Namespace) -> dict:
    """Train and sample with the official code in a temporary copy; its first --samples
    samples from scale 0 (8-bit) and the seconds the whole run took."""
    with tempfile.TemporaryDirectory(prefix="official-singan-") as folder:
        work = Path(folder) / "official"
        shutil.copytree(args.official, work, ignore=shutil.ignore_patterns(
            "TrainedModels", "Output", "__pycache__"))
        name = f"photo{photo.suffix.lower()}"  # it strips 4 characters of extension
        (work / "Input" / "Images").mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, work / "Input" / "Images" / name)
        env = {**os.environ, "PYTHONPATH": str(work / "stubs"), "OMP_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads), "MPLBACKEND": "Agg"}
        command = [sys.executable, "main_train.py", "--not_cuda", "--input_name", name,
                   "--max_size", str(args.max_size), "--niter", str(args.niter),
                   "--manualSeed", str(seed)]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"the official code failed on {photo.name}:\n{done.stderr[-3000:]}")
        folder = work / "Output" / "RandomSamples" / "photo" / "gen_start_scale=0"
        samples = [load_image(folder / f"{i}.png") for i in range(args.samples)]
    return {"samples": torch.cat(samples), "seconds": torch.tensor(seconds)}


def run_ours(photo: Path, seed: int, cfg: singan.Config, args: argparse.Namespace) -> dict:
    with quirks_on(args.quirk):
        start = time.perf_counter()
        model = singan.train(load_image(photo), cfg, device="cpu", seed=seed)
        seconds = time.perf_counter() - start
        samples = singan.sample(model, args.samples, generator=torch.Generator().manual_seed(seed))
    return {"samples": as_8bit(samples), "seconds": torch.tensor(seconds)}


def scores(photo: Path, cfg: singan.Config, samples: torch.Tensor) -> dict[str, float]:
    """Patch SWD and nearest-patch distance (each the mean over samples) and diversity."""
    real = real_image(photo, cfg, tuple(samples.shape[-2:]))
    each = samples.split(1)
    return {"patch_swd": statistics.fmean(patch_swd(real, s) for s in each),
            "nn_patch": statistics.fmean(nn_patch_distance(real, s) for s in each),
            "diversity": float(samples.std(dim=0).mean() / real.std())}


def picture(photo: Path, cfg: singan.Config, sides: list[torch.Tensor], path: Path) -> None:
    """Two rows, official then ours: the real image, then 6 samples; white gaps between."""
    rows = []
    for samples in sides:
        real = real_image(photo, cfg, tuple(samples.shape[-2:]))
        tiles = [real, *samples[:6].split(1)]
        gap = torch.ones(1, 3, real.shape[-2], 3)
        rows.append(torch.cat([part for tile in tiles for part in (tile, gap)][:-1], dim=-1))
    width = max(row.shape[-1] for row in rows)
    rows = [torch.nn.functional.pad(row, (0, width - row.shape[-1]), value=1.0) for row in rows]
    band = torch.ones(1, 3, 3, width)
    grid = torch.cat([rows[0], band, rows[1]], dim=-2)
    singan.save_image(torch.nn.functional.interpolate(grid, scale_factor=3, mode="nearest"), path)


def ratios(rows: list[dict]) -> dict[str, float]:
    """Ours / official of each metric's mean over `rows`."""
    return {m: statistics.fmean(r["ours"][m] for r in rows)
            / statistics.fmean(r["official"][m] for r in rows) for m in METRICS}


def percentiles_2_5_and_97_5(values: list[float]) -> list[float]:
    cuts = statistics.quantiles(values, n=40)  # 39 cuts, every 2.5 %
    return [round(cuts[0], 4), round(cuts[-1], 4)]


# A run has failed when its patch SWD is above FAILED x the median of the other side's runs on
# the same photo: a training that ended on a bad step, which the mean of a few seeds cannot tell
# from a small steady difference.
FAILED = 2.0


def failed_runs(rows: list[dict]) -> dict[str, list[str]]:
    """Per side, its failed runs among `rows` ("photo:seed")."""
    failed = {"official": [], "ours": []}
    for photo in sorted({r["photo"] for r in rows}):
        same = [r for r in rows if r["photo"] == photo]
        for side, other in (("official", "ours"), ("ours", "official")):
            bar = FAILED * statistics.median(r[other]["patch_swd"] for r in same)
            failed[side] += [f"{photo}:{r['seed']}" for r in same if r[side]["patch_swd"] > bar]
    return failed


def summary(rows: list[dict], resamples: int = 0) -> dict:
    """Means of each side's metrics over `rows`, and ours / official of those means; the median
    of the runs' own ratios and the failed runs (which a few of move the means); with
    `resamples`, a 95 % bootstrap interval of each ratio (runs drawn with replacement, a fixed
    seed): how far the seeds' noise alone moves it."""
    means = {side: {m: statistics.fmean(r[side][m] for r in rows) for m in METRICS}
             for side in ("official", "ours")}
    result = {**means, "ratio": ratios(rows),
              "median_run_ratio": {m: statistics.median(r["ours"][m] / r["official"][m]
                                                        for r in rows) for m in METRICS},
              "failed_runs": failed_runs(rows)}
    if resamples:
        rng = random.Random(0)
        draws = [ratios(rng.choices(rows, k=len(rows))) for _ in range(resamples)]
        result["ratio_95"] = {m: percentiles_2_5_and_97_5([d[m] for d in draws])
                              for m in METRICS}
    return result


# What must agree between reports whose runs are combined.
SAME_IN_COMBINED = ("settings", "ours_overrides", "ours_quirks", "ours_config")


def combine(paths: list[Path], label: str) -> dict:
    """One report of the runs of the reports at `paths`."""
    reports = [json.loads(path.read_text()) for path in paths]
    for path, report in zip(paths[1:], reports[1:]):
        for key in SAME_IN_COMBINED:
            if report[key] != reports[0][key]:
                raise SystemExit(f"{path}: its {key} differs from {paths[0]}'s")
    rows = [row for report in reports for row in report["runs"]]
    seen = set()
    for row in rows:
        if (row["photo"], row["seed"]) in seen:
            raise SystemExit(f"{row['photo']} seed {row['seed']} is in more than one report")
        seen.add((row["photo"], row["seed"]))
    return {"bench": "fidelity", "label": label, "combined": [path.name for path in paths],
            **{key: reports[0][key] for key in SAME_IN_COMBINED},
            "machine": [report["machine"] for report in reports], **summaries(rows)}


def summaries(rows: list[dict]) -> dict:
    """A report's results: the summary of each photo's runs and of all, and the runs."""
    photos = sorted({row["photo"] for row in rows})
    return {"photos": {photo: summary([r for r in rows if r["photo"] == photo])
                       for photo in photos},
            "overall": summary(rows, resamples=2000), "runs": rows}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.combine:
        return output(combine(args.combine, args.label), args.out)
    torch.set_num_threads(args.threads)
    cfg = our_config(args)
    photos = sorted(p for p in args.photo_dir.iterdir()
                    if p.suffix.lower() in (".png", ".jpg"))[: args.photos]
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {"max_size": args.max_size, "niter": args.niter, "samples": args.samples}
    ours_key = hashlib.sha256((cfg.to_json() + "".join(
        f"+{quirk}" for quirk in sorted(args.quirk))).encode()).hexdigest()[:12]

    rows = []
    for photo in photos:
        for seed in seeds:
            tag = f"{photo.stem}_m{args.max_size}_n{args.niter}_k{args.samples}_s{seed}"
            official = cached(args.cache / "official" / f"{tag}.pt", run_official, photo, seed,
                              args)
            ours = cached(args.cache / f"ours_{ours_key}" / f"{tag}.pt", run_ours, photo, seed,
                          cfg, args)
            row = {"photo": photo.name, "seed": seed,
                   "official": {**scores(photo, cfg, official["samples"]),
                                "seconds": float(official["seconds"]),
                                "size": list(official["samples"].shape[-2:])},
                   "ours": {**scores(photo, cfg, ours["samples"]),
                            "seconds": float(ours["seconds"]),
                            "size": list(ours["samples"].shape[-2:])}}
            rows.append(row)
            print(f"{photo.name} seed {seed}: patch SWD ours {row['ours']['patch_swd']:.4f} "
                  f"official {row['official']['patch_swd']:.4f}; diversity ours "
                  f"{row['ours']['diversity']:.3f} official {row['official']['diversity']:.3f}",
                  file=sys.stderr)

    if args.picture:
        tag = f"{photos[0].stem}_m{args.max_size}_n{args.niter}_k{args.samples}_s{seeds[0]}"
        sides = [torch.load(args.cache / folder / f"{tag}.pt", weights_only=True)["samples"]
                 for folder in ("official", f"ours_{ours_key}")]
        picture(photos[0], cfg, sides, args.picture)

    result = {
        "bench": "fidelity", "label": args.label, "settings": settings,
        "ours_overrides": parse_overrides(args.set), "ours_quirks": sorted(args.quirk),
        "ours_config": cfg.to_dict(),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
        **summaries(rows),
    }
    return output(result, args.out)


def output(result: dict, out: Path | None) -> dict:
    """Print `result` as JSON, and write it to `out` if given."""
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
