"""The applications' `singan` commands: sr, paint, harmonize, edit, animate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from singan.api import load
from singan.apps.animation import ALPHA, BETAS, FPS, FRAMES, START_SCALES, animation_config
from singan.apps.harmonization import blending_mask, edit, harmonize
from singan.apps.masks import EDITING_RADIUS, HARMONIZATION_RADIUS
from singan.apps.paint import injection, paint_to_image, retrain_for_paint
from singan.apps.sr import sr_config, sr_steps
from singan.cli.common import (
    MODEL_HELP,
    add_training_options,
    is_url,
    load_model,
    resolve_device,
    train_into,
    training_config,
)
from singan.data import outputs
from singan.data.image import load_image, load_mask, save_image
from singan.errors import InputError
from singan.recipes.singan.networks import SinGAN

RAW = argparse.RawDescriptionHelpFormatter

SR_EPILOG = """\
Trains a SinGAN on IMAGE at its full size (no max_size cap; --max-size shrinks it on purpose),
with alpha 100 and min_size 18, into DIR/model (resumed or reused when it is there), then writes
DIR/sr/sr_xF.png and, to compare, DIR/sr/bicubic_xF.png. The work grows with the image: a 250-px image
at the paper preset is the reference's 30 minutes on a GPU; --preset quick tries it on a CPU.

Examples:
  singan sr photo.png --factor 4 --out runs/photo_sr
  singan sr photo.png --factor 2 --out runs/photo_sr2 --preset quick
"""

INJECT_EPILOG = """\
START_SCALE is where the input replaces the output of the coarser scales: 1 is the coarsest
allowed (the most change), the finest scale index the least; the reference uses 1 to 3 for
paint, a middle scale for harmonization and editing. Inputs of another size than the training
image are resized to it.
"""

ANIMATE_EPILOG = f"""\
SOURCE is an image (trained into DIR/model with noise padding and min_size 20, resumed or
reused when it is there) or a model folder trained that way. Writes one GIF per start scale
and beta: DIR/animate/start_scale_S/beta_B.gif (defaults: start scales
{', '.join(map(str, START_SCALES))}, betas {', '.join(f'{b:.2f}' for b in BETAS)}, alpha {ALPHA},
{FRAMES} frames at {FPS} fps).

Examples:
  singan animate lightning.png --out runs/lightning
  singan animate runs/lightning --out runs/lightning --betas 0.9 --start-scales 1 --frames 50
"""


def add_commands(commands) -> None:
    p = commands.add_parser("sr", help="super-resolve an image by 2, 4 or 8",
                            description="Super-resolution: learn IMAGE's patches across scales, "
                            "then upscale it with its own finest generator.",
                            epilog=SR_EPILOG, formatter_class=RAW)
    p.add_argument("image", metavar="IMAGE", help="the low-resolution image")
    p.add_argument("--factor", type=float, default=4, metavar="F",
                   help="upscaling factor, e.g. 2, 4 or 8 (default: %(default)g)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_training_options(p)
    p.set_defaults(run=run_sr)

    p = commands.add_parser("paint", help="turn a colour sketch into an image (paint-to-image)",
                            description="Paint-to-image: inject PAINT at START_SCALE of a trained "
                            "model; the finer scales add the training image's textures.",
                            epilog=INJECT_EPILOG, formatter_class=RAW)
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("paint", metavar="PAINT", help="the sketch, in flat colours")
    add_inject_options(p)
    p.add_argument("--quantise", action="store_true",
                   help="first retrain START_SCALE on images quantised to 5 colours (k-means of "
                        "the real image), and quantise PAINT to them; saved in DIR/model_paint")
    p.set_defaults(run=run_paint)

    for name, verb, radius in (("harmonize", "harmonization", HARMONIZATION_RADIUS),
                               ("edit", "editing", EDITING_RADIUS)):
        what = "a pasted object" if name == "harmonize" else "an edited region"
        p = commands.add_parser(name, help=f"{verb}: blend {what} into the training image",
                                description=f"{verb.capitalize()}: inject NAIVE at START_SCALE, "
                                "then blend the result into the training image through MASK "
                                f"(white: {what}), dilated with a disk of radius {radius} and "
                                "blurred (sigma 5).", epilog=INJECT_EPILOG, formatter_class=RAW)
        p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
        p.add_argument("naive", metavar="NAIVE", help=f"the training image with {what}")
        p.add_argument("mask", metavar="MASK",
                       help="white (brighter than half) where the change is; any image mode; "
                            "transparent pixels count as outside")
        add_inject_options(p)
        p.set_defaults(run=run_harmonize if name == "harmonize" else run_edit)

    p = commands.add_parser("animate", help="animated GIFs from one image",
                            description="Animation: random walks in noise space around the "
                            "image's reconstruction, one GIF per setting.",
                            epilog=ANIMATE_EPILOG, formatter_class=RAW)
    p.add_argument("source", metavar="SOURCE", help="an image, or a trained model: " + MODEL_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--alpha", type=float, default=ALPHA,
                   help="pull back to the image (default: %(default)s)")
    p.add_argument("--betas", type=floats, default=BETAS, metavar="B,B,...",
                   help="momentum values, one GIF each (default: %(default)s)")
    p.add_argument("--start-scales", type=ints, default=START_SCALES, metavar="S,S,...",
                   help="scales where the motion starts (default: %(default)s)")
    p.add_argument("--frames", type=int, default=FRAMES, help="frames per GIF (default: %(default)s)")
    p.add_argument("--fps", type=float, default=FPS, help="frames per second (default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=0, metavar="N",
                   help="random samples written after training (default: %(default)s)")
    add_training_options(p)
    p.set_defaults(run=run_animate)


def add_inject_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start-scale", type=int, required=True, metavar="N",
                   help="the scale the input is injected at (1 .. the finest)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--num", type=int, default=1, metavar="K",
                   help="results with different noise (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from err


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas: {text!r}") from err


def seeded(model: SinGAN, seed: int) -> torch.Generator:
    return torch.Generator(device=model.device).manual_seed(seed)


def run_sr(args: argparse.Namespace) -> int:
    sr_steps(args.factor)  # a bad factor fails before any training
    image = load_image(args.image)
    height, width = image.shape[-2:]
    base = training_config(args)
    cfg = sr_config(height, width, args.factor, base=base, max_size=args.max_size)
    if args.max_size is not None and max(height, width) > args.max_size:
        print(f"note: {args.image} is {height}x{width}; --max-size {args.max_size} shrinks it "
              "before training, so the result is the factor times that smaller copy")
    out = Path(args.out)
    model = train_into(image, cfg, out, resolve_device(args.device), args.seed, 4)
    result = outputs.write_super_resolution(model, args.factor, outputs.LocalFolder(out))
    name = f"x{args.factor:g}"
    h, w = model.reals[-1].shape[-2:]
    print(f"{h}x{w} -> {result.shape[-2]}x{result.shape[-1]}: {out / 'sr' / f'sr_{name}.png'} "
          f"(bicubic for comparison: {out / 'sr' / f'bicubic_{name}.png'})")
    return 0


def run_paint(args: argparse.Namespace) -> int:
    model = load_model(args.model, resolve_device(args.device))
    paint = load_image(args.paint, device=model.device)
    out = Path(args.out)
    centers = None
    if args.quantise:
        model, centers = paint_model(model, args.start_scale, out / "model_paint")
    results = paint_to_image(model, paint, args.start_scale, args.num,
                             generator=seeded(model, args.seed), centers=centers)
    if centers is None:
        save_image(injection(model, paint, args.start_scale), out / "injected.png")
    for index, x in enumerate(results):
        save_image(x, out / f"paint_start{args.start_scale}_{index:02d}.png")
    print(f"{len(results)} result(s) in {out}")
    return 0


def paint_model(model: SinGAN, start_scale: int, folder: Path) -> tuple[SinGAN, torch.Tensor]:
    """The model retrained for quantised paint, reused from `folder` when it is there."""
    colours = folder / "colours.json"
    if colours.is_file():
        saved = json.loads(colours.read_text())
        if saved.get("start_scale") == start_scale:
            print(f"reusing the retrained model in {folder}")
            return load(folder, device=model.device), torch.tensor(
                saved["centers"], device=model.device)
        raise InputError(f"{folder} holds a model retrained at scale {saved.get('start_scale')}, "
                         f"not {start_scale}: choose another --out or delete it")
    print(f"retraining scale {start_scale} on 5-colour inputs")
    retrained, centers = retrain_for_paint(model, start_scale)
    retrained.save(folder)
    save_image(retrained.reals[start_scale], folder / "real_at_start_scale.png")
    colours.write_text(json.dumps({"start_scale": start_scale, "centers": centers.tolist()}))
    return retrained, centers


def run_harmonize(args: argparse.Namespace) -> int:
    return inject_and_blend(args, "harmonized", harmonize, HARMONIZATION_RADIUS)


def run_edit(args: argparse.Namespace) -> int:
    return inject_and_blend(args, "edited", edit, EDITING_RADIUS)


def inject_and_blend(args: argparse.Namespace, name: str, application, radius: int) -> int:
    """Run harmonize or edit; write both results per sample and the mask it blended with."""
    model = load_model(args.model, resolve_device(args.device))
    naive = load_image(args.naive, device=model.device)
    mask = load_mask(args.mask, device=model.device)
    out = Path(args.out)
    blended, unblended = application(model, naive, mask, args.start_scale, args.num,
                                     generator=seeded(model, args.seed))
    save_image(blending_mask(model, mask, radius).expand(-1, 3, -1, -1) * 2 - 1,
               out / "mask_used.png")
    for index, (x, raw) in enumerate(zip(blended, unblended)):
        save_image(x, out / f"{name}_{index:02d}.png")
        save_image(raw, out / f"{name}_unmasked_{index:02d}.png")
    print(f"{len(blended)} result(s) in {out} (masked and unmasked; the mask used: "
          f"{out / 'mask_used.png'})")
    return 0


def run_animate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    out = Path(args.out)
    source = Path(args.source)
    if source.is_dir() or is_url(args.source):
        model = load_model(args.source, device)
        if not model.config.noise_padding:
            print(f"note: {source} was trained without noise padding; its frame borders will "
                  "move less than an animation model's")
    else:
        cfg = animation_config(training_config(args))
        model = train_into(load_image(source), cfg, out, device, args.seed, args.num_samples)
    if not model.is_complete:
        raise InputError(f"{source}: the model has {len(model.scales)} of {model.num_scales} "
                         "scales; finish its training first")
    for start_scale in args.start_scales:
        if start_scale >= model.num_scales:
            print(f"skipping start scale {start_scale}: the model has {model.num_scales} scales")
    written = outputs.write_animations(model, outputs.LocalFolder(out),
                                       start_scales=args.start_scales, betas=args.betas,
                                       alpha=args.alpha, frames=args.frames, fps=args.fps)
    print(f"{len(written)} GIF(s) of {args.frames} frames in {out / 'animate'}")
    return 0
