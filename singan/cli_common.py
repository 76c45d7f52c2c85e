"""What the `singan` commands share: the training options, the device, and training into an
output folder (singan.outputs' layout) with a progress bar and a summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from singan import outputs
from singan.api import load, train
from singan.base import Callback, IterationLog, Pyramid
from singan.config import PRESETS, Config, config, parse_overrides
from singan.errors import InputError


def add_training_options(p: argparse.ArgumentParser) -> None:
    """--preset, --max-size, --niter, --device, --seed, --set: shared by every command that
    trains."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: every reference default; quick: a small CPU smoke run "
                        "(default: %(default)s)")
    p.add_argument("--max-size", type=int, metavar="N",
                   help="longest side of the finest scale (paper: 250, quick: 96)")
    p.add_argument("--niter", type=int, metavar="N",
                   help="iterations per scale (paper: 2000); the learning rate drops at "
                        "iteration 1600 as in the reference code, so not at all below that")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--seed", type=int, help="random seed, for a reproducible model")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change any config field (repeatable), applied after the options "
                        "above, e.g. --set scale_factor=0.8 --set noise_padding=true; the same "
                        "syntax as the batch job's --set and its manifest's columns")


def training_config(args: argparse.Namespace, **fields) -> Config:
    """The config the training options ask for: `fields`, then --max-size and --niter, then
    the --set changes on top."""
    if args.max_size is not None:
        fields.setdefault("max_size", args.max_size)
    if args.niter is not None:
        fields["niter"] = args.niter  # config() puts the drop where the recipe's code does
    return config(args.preset, **{**fields, **parse_overrides(args.set)})


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"unknown device {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def train_into(image, cfg, out: Path, device, seed: int | None, num_samples: int) -> Pyramid:
    """Train (or resume) into the output folder layout (singan.outputs), then write the final
    pictures and print a summary."""
    resume = previous_model(out / "model", cfg, seed)
    progress = Progress(out)
    start = time.perf_counter()
    if resume is None or not resume.is_complete:
        if resume is not None:
            print(f"resuming {out / 'model'} at scale {len(resume.scales)} of {resume.num_scales}")
        model = train(image, cfg, device=device, seed=seed, callbacks=[progress], resume=resume)
    else:
        print(f"{out / 'model'} is already trained; writing samples only")
        model = resume.to(device)
    outputs.write_final(model, outputs.LocalFolder(out), num_samples)
    progress.summary(model, time.perf_counter() - start)
    return model


def previous_model(directory: Path, cfg, seed: int | None) -> Pyramid | None:
    """A model already in the output folder, when it can be resumed with these settings."""
    if not (directory / "config.json").is_file():
        return None
    model = load(directory)
    if model.config != cfg or (seed is not None and seed != model.seed):
        raise InputError(f"{directory} holds a model trained with other settings; choose another "
                         "--out or delete that folder")
    return model


class Progress(Callback):
    """A progress bar per scale; writes each finished scale's files (singan.outputs)."""

    def __init__(self, out: Path):
        self.folder = outputs.LocalFolder(out)
        self.out = out
        self.bar = None
        self.rows: list[tuple] = []
        self.scale_start = 0.0
        self.noise_amp = 0.0
        self.last: IterationLog | None = None

    def on_scale_start(self, model, scale, noise_amp):
        from tqdm import tqdm

        h, w = model.plan.shapes[scale]
        self.noise_amp = noise_amp
        self.scale_start = time.perf_counter()
        self.bar = tqdm(total=model.config.niter, unit="it", dynamic_ncols=True, leave=True,
                        desc=f"scale {scale + 1}/{model.num_scales} {h}x{w}")

    def on_iteration(self, log: IterationLog):
        self.bar.update(log.iteration - self.bar.n)
        self.last = log
        losses = {} if log.d_loss is None else {"D": f"{log.d_loss:.3f}"}
        self.bar.set_postfix(**losses, G=f"{log.g_adv:.3f}", rec=f"{log.reconstruction:.4f}",
                             refresh=False)

    def on_scale_end(self, model, scale):
        self.bar.close()
        outputs.write_level(model, scale, self.folder)
        seconds = time.perf_counter() - self.scale_start
        self.rows.append((scale, model.plan.shapes[scale], self.noise_amp, seconds,
                          self.last.reconstruction))

    def summary(self, model: Pyramid, seconds: float) -> None:
        if self.rows:
            print(f"{'scale':>5} {'size':>9} {'noise_amp':>9} {'seconds':>8} {'rec loss':>9}")
            for scale, (h, w), amp, secs, rec in self.rows:
                print(f"{scale:>5} {f'{h}x{w}':>9} {amp:>9.4f} {secs:>8.1f} {rec:>9.5f}")
        print(f"{model.num_scales} scales, {seconds:.1f} s; model: {self.out / 'model'}, "
              f"samples: {self.out / 'samples'}")
