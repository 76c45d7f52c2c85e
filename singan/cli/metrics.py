"""`singan sifid` and `singan quality`: how close generated images are to real ones."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from singan.cli.common import resolve_device
from singan.data.image import IMAGE_SUFFIXES, load_image
from singan.errors import InputError

SIFID_EPILOG = """\
Examples:
  singan sifid photo.png runs/photo/samples           # each sample against the photo
  singan sifid reals/ fakes/ --dims 192               # reals/a.png vs fakes/a.png, ...
"""


def add_commands(commands) -> None:
    """Add the metric commands to the `singan` command's subparsers."""
    p = commands.add_parser("sifid", help="SIFID between real and generated images",
                            description="Single-image FID (lower is closer) of each fake against "
                            "its real image. REAL a file: every FAKE file, and every image in "
                            "each FAKE folder, against it. REAL a folder: one FAKE folder, "
                            "paired by sorted file name.", epilog=SIFID_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_pairs(p, run_sifid)
    p.add_argument("--dims", type=int, choices=(64, 192), default=64,
                   help="64: the layer of published numbers; 192: the paper's text "
                        "(default: %(default)s)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="torchvision's inception_v3_google-0cc3c7bd.pth (default: "
                        "$SINGAN_INCEPTION_WEIGHTS, the torch hub cache, or a download)")

    p = commands.add_parser("quality", help="weight-free patch metrics of generated images",
                            description="Patch SWD (how far the fake's k x k patch distribution "
                            "is from the real one's) and nearest-patch distance (near 0: the "
                            "fake copies the real image), in [0, 1] pixel units; no weights "
                            "needed. Files and folders are paired as for `singan sifid`.")
    add_image_pairs(p, run_quality)
    p.add_argument("--patch", type=int, default=7, metavar="K", help="patch size (default: 7)")
    p.add_argument("--projections", type=int, default=256, metavar="P",
                   help="random directions of the SWD (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of projections and subsampling")


def add_image_pairs(p: argparse.ArgumentParser,
                    run: Callable[[argparse.Namespace], int]) -> None:
    """The arguments of a command that compares generated images with real ones, and what it
    runs."""
    p.add_argument("real", metavar="REAL", help="the real image, or a folder of them")
    p.add_argument("fakes", metavar="FAKE", nargs="+", help="generated images or folders")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(run=run)


def run_sifid(args: argparse.Namespace) -> int:
    from singan.metrics.sifid import load_stem, sifid

    pairs = image_pairs(Path(args.real), [Path(f) for f in args.fakes])
    device = resolve_device(args.device)
    stem = load_stem(args.inception_weights, device=device)
    values = []
    for real, fake in pairs:
        value = sifid(load_image(real, device=device), load_image(fake, device=device),
                      dims=args.dims, stem=stem)
        values.append(value)
        print(f"{value:.6f}  {fake}" + ("" if len({r for r, _ in pairs}) == 1 else f"  (real: {real})"))
    print(f"{sum(values) / len(values):.6f}  mean of {len(values)} (dims {args.dims})")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    from singan.metrics.patches import nn_patch_distance, patch_swd

    pairs = image_pairs(Path(args.real), [Path(f) for f in args.fakes])
    device = resolve_device(args.device)
    print(f"{'patch_swd':>10} {'nn_patch':>10}  fake")
    swd, nn = [], []
    for real_path, fake_path in pairs:
        real, fake = load_image(real_path, device=device), load_image(fake_path, device=device)
        swd.append(patch_swd(real, fake, patch=args.patch, projections=args.projections,
                             seed=args.seed))
        nn.append(nn_patch_distance(real, fake, patch=args.patch, seed=args.seed))
        print(f"{swd[-1]:>10.5f} {nn[-1]:>10.5f}  {fake_path}")
    print(f"{sum(swd) / len(swd):>10.5f} {sum(nn) / len(nn):>10.5f}  mean of {len(swd)}")
    return 0


def image_pairs(real: Path, fakes: list[Path]) -> list[tuple[Path, Path]]:
    """(real, fake) file pairs for `singan sifid` and `singan quality`; folders are read in
    sorted name order."""
    def images(folder: Path) -> list[Path]:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputError(f"{folder}: no images in this folder")
        return found

    for path in (real, *fakes):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    if real.is_dir():
        if len(fakes) != 1 or not fakes[0].is_dir():
            raise InputError("REAL is a folder: give exactly one FAKE folder to pair it with")
        reals, fake_files = images(real), images(fakes[0])
        if len(reals) != len(fake_files):
            raise InputError(f"{real} has {len(reals)} images but {fakes[0]} has "
                             f"{len(fake_files)}: they are paired by sorted file name")
        return list(zip(reals, fake_files))
    return [(real, f) for path in fakes for f in (images(path) if path.is_dir() else [path])]
