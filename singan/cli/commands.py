"""The `singan` command: train one image, sample a trained model, the demo and the example
images; the metrics' and the applications' subcommands come from metrics.py and apps.py."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from singan.api import config, sample
from singan.base import package_version
from singan.cli.apps import add_commands as add_app_commands
from singan.cli.common import (
    MODEL_HELP,
    add_training_options,
    load_model,
    resolve_device,
    train_into,
    training_config,
)
from singan.cli.metrics import add_commands as add_metric_commands
from singan.data.examples import KINDS, pebbles
from singan.data.image import load_image, save_image
from singan.errors import InputError
from singan.recipes import RECIPES
from singan.settings import LOSSES, PADDINGS

SAMPLE_BATCH = 16  # samples generated together: bounds memory at large sizes

TRAIN_EPILOG = """\
Output folder (the batch job writes the same for each image):
  DIR/model/        config.json and scale_XX.pt, written as each scale finishes
  DIR/reals/        the image pyramid, scale_00.png (coarsest) ...
  DIR/samples/      scale_XX.png (after each scale: the real image and 3 samples),
                    sample_XX.png, reconstruction.png

Training an image into a folder that holds a partly trained model with the same settings
resumes at the first unfinished scale.

Examples:
  singan train photo.jpg --out runs/photo --preset quick
  singan train photo.jpg --out runs/photo --device cuda --seed 1
  singan train photo.jpg --out runs/photo_con --recipe consingan   # ConSinGAN, 6 stages
"""

SAMPLE_EPILOG = """\
Examples:
  singan sample runs/photo --out runs/photo/more --num 20
  singan sample runs/photo --out wide --scale-h 2            # twice as wide
  singan sample runs/photo --out tall --scale-v 1.5          # 1.5 times as tall
  singan sample runs/photo --out details --start-scale 1     # keep the layout, vary details
  singan sample s3://bucket/outputs/img42 --out more         # an image of the batch job
  singan sample runs:/<run id>/model --out more              # from MLflow ($MLFLOW_TRACKING_URI)
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except InputError as err:
        print(f"singan: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("singan: interrupted; finished scales are saved and the next run resumes there",
              file=sys.stderr)
        return 130


class VerboseSubcommands:
    """Subcommands that all take -v as well, so that `singan train -v ...` works like
    `singan -v train ...`."""

    def __init__(self, actions: argparse._SubParsersAction):
        self.actions = actions
        self.verbose = argparse.ArgumentParser(add_help=False)
        # SUPPRESS: a subcommand without -v leaves the top-level value alone.
        self.verbose.add_argument("-v", "--verbose", action="store_true",
                                  default=argparse.SUPPRESS, help="log progress details")

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs["parents"] = [*kwargs.get("parents", []), self.verbose]
        return self.actions.add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="singan", description="Learn a generative model from a single image (SinGAN).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version",
                        version=f"singan-fleet {package_version()}")
    commands = VerboseSubcommands(parser.add_subparsers(required=True, metavar="COMMAND"))

    p = commands.add_parser("train", help="train a SinGAN on one image",
                            description="Train a SinGAN on one image, coarse to fine.",
                            epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="the training image (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (see below)")
    add_training_options(p)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="singan",
                   help="singan: one GAN per scale (the paper); consingan: one growing generator "
                        "whose last 3 stages train together, with ConSinGAN's defaults "
                        "(default: %(default)s)")
    p.add_argument("--padding", choices=PADDINGS, default="zero",
                   help="border of the generator's (and critic's) input; zero is the "
                        "reference's (default: %(default)s)")
    p.add_argument("--loss", choices=LOSSES, default="wgan_gp",
                   help="wgan_gp: the paper's critic; frechet, nnpl, annpl: a patch loss in "
                        "place of the critic (default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=8, metavar="N",
                   help="random samples written at the end (default: %(default)s)")
    p.set_defaults(run=run_train)

    p = commands.add_parser("demo", help="train the built-in example image (quick preset)",
                            description="Train the built-in example image (a procedural stone "
                            "wall) with the quick preset and write samples: a first run that "
                            "needs no data.")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="output folder, laid out as for `singan train` (default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(run=run_demo)

    add_metric_commands(commands)

    p = commands.add_parser("examples", help="write procedural example images to train on",
                            description="Write procedural example images, 192 x 128 "
                            "(balloons: hot-air balloons in a sky, the demo's; landscapes: "
                            "mountain ranges under a sky; stones: walls of several stone "
                            "sizes): data for a first batch job.")
    p.add_argument("out", metavar="DIR", help="folder for the PNG files")
    p.add_argument("--count", type=int, default=3, metavar="N",
                   help="how many images (default: %(default)s)")
    p.add_argument("--kind", choices=sorted(KINDS), default="balloons",
                   help="what they show (default: %(default)s)")
    p.set_defaults(run=run_examples)

    add_app_commands(commands)  # the applications' commands live with them

    p = commands.add_parser("sample", help="draw samples from a trained model",
                            description="Draw random samples from a trained SinGAN.",
                            epilog=SAMPLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="where the PNG samples go")
    p.add_argument("--num", type=int, default=10, metavar="N", help="samples (default: %(default)s)")
    p.add_argument("--start-scale", type=int, default=0, metavar="K",
                   help="scales below K reconstruct the training image; fresh noise from K on "
                        "(default: %(default)s)")
    p.add_argument("--scale-h", type=float, default=1.0, metavar="X",
                   help="width multiplier (default: %(default)s)")
    p.add_argument("--scale-v", type=float, default=1.0, metavar="Y",
                   help="height multiplier (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(run=run_sample)
    return parser


def run_train(args: argparse.Namespace) -> int:
    cfg = training_config(args, recipe=args.recipe, padding=args.padding, loss=args.loss)
    train_into(load_image(args.image), cfg, Path(args.out), resolve_device(args.device),
               args.seed, args.num_samples)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    image = pebbles(128, 192)
    save_image(image, out / "example.png")
    print(f"training the built-in example image {out / 'example.png'} with the quick preset")
    train_into(image, config("quick"), out, resolve_device(args.device), 0, 8)
    return 0


def run_examples(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise InputError("--count must be at least 1")
    out = Path(args.out)
    name, make = KINDS[args.kind]
    for index in range(args.count):
        save_image(make(index), out / f"{name}_{index:02d}.png")
    print(f"{args.count} example images ({args.kind}) in {out}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    model = load_model(args.model, resolve_device(args.device))
    rng = torch.Generator(device=model.device).manual_seed(args.seed)
    out = Path(args.out)
    for first in range(0, args.num, SAMPLE_BATCH):
        batch = sample(model, min(SAMPLE_BATCH, args.num - first), start_scale=args.start_scale,
                       scale_h=args.scale_h, scale_v=args.scale_v, generator=rng)
        for index, x in enumerate(batch, start=first):
            save_image(x, out / f"sample_{index:03d}.png")
    h, w = batch.shape[-2:]
    print(f"{args.num} samples of {h}x{w} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
