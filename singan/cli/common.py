"""What the `singan` commands share: the training options, the device, where a trained model is
read from, and training into an output folder (singan.data.outputs' layout) with a progress line per
scale and a summary."""

from __future__ import annotations

import argparse
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from singan.api import config, load, train
from singan.base import Callback, IterationLog, Pyramid
from singan.data import outputs
from singan.errors import InputError
from singan.metrics.verdict import judge, summarize
from singan.settings import PRESETS, Config, parse_overrides


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


# Where a model is read from besides a local folder: loaders by URL scheme, registered by other
# packages in this entry point group (the fleet extra's pipeline.model_sources: runs:/ and
# models:/ from MLflow, and `url`, every other scheme, through fsspec), so that singan itself
# needs neither storage nor tracking code.
SOURCES = "singan.model_sources"
ANY_URL = "url"  # the loader of the schemes no loader names
MODEL_HELP = ("a model folder or a `singan train` output; with the fleet extra also any fsspec "
              "URL (s3://..., an image's folder of the batch job) and MLflow's runs:/<run id>/model "
              "or models:/<name>/<version>")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]+):/")  # two letters at least: not C:\


def is_url(ref: str) -> bool:
    """Whether `ref` is a URL (scheme:/...) rather than a local path."""
    return _SCHEME.match(ref) is not None


def load_model(ref: str, device: torch.device) -> Pyramid:
    """The model at `ref`: a local folder, or a URL that a registered loader reads (SOURCES)."""
    match = _SCHEME.match(ref)
    if match is None or (match.group(1) == "file" and Path(ref[7:]).is_dir()):
        return load(ref if match is None else ref[7:], device=device)
    scheme = match.group(1)
    loaders = {entry.name: entry for entry in metadata.entry_points(group=SOURCES)}
    entry = loaders.get(scheme) or loaders.get(ANY_URL)
    needs = "needs the fleet extra: pip install 'singan-fleet[fleet]'"
    if entry is None:
        raise InputError(f"{ref}: reading a model from a {scheme}: URL {needs}")
    try:
        loader = entry.load()
    except ImportError as err:
        raise InputError(f"{ref}: reading a model from a {scheme}: URL {needs} ({err})") from err
    return loader(ref, device)


def train_into(image, cfg, out: Path, device, seed: int | None, num_samples: int) -> Pyramid:
    """Train (or resume) into the output folder layout (singan.data.outputs), then write the final
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
    summary = summarize(model, seed=model.seed)
    verdict = judge(summary)
    print(f"quality: {verdict.quality}" + (f" ({verdict.reason})" if verdict.reason else "") +
          f"; patch SWD {summary.patch_swd:.4f} ({summary.swd_ratio:.1f}x a blurred copy's), "
          f"diversity {summary.diversity:.3f}")
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


class ProgressLine:
    """One line of progress for a scale: iterations, losses, rate and time left. On a terminal
    it is redrawn in place (at most 10 times a second); in a log, a line every 10 %."""

    def __init__(self, title: str, total: int, stream=None):
        self.title, self.total = title, total
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.start = self.last_draw = time.perf_counter()
        self.shown_tenths = 0
        self.text = ""

    def update(self, done: int, losses: str) -> None:
        now = time.perf_counter()
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate > 0 else 0.0
        self.text = (f"{self.title} {done}/{self.total} it {losses}  {rate:.1f} it/s, "
                     f"{int(left) // 60}:{int(left) % 60:02d} left")
        if self.live and (now - self.last_draw >= 0.1 or done == self.total):
            self.stream.write("\r" + self.text + "\033[K")
            self.stream.flush()
            self.last_draw = now
        elif not self.live and done * 10 // self.total > self.shown_tenths:
            self.shown_tenths = done * 10 // self.total
            print(self.text, file=self.stream, flush=True)

    def close(self) -> None:
        seconds = time.perf_counter() - self.start
        end = f"{self.title} done in {seconds:.1f} s"
        self.stream.write(("\r" + end + "\033[K\n") if self.live else end + "\n")
        self.stream.flush()


class Progress(Callback):
    """A progress line per scale (ProgressLine); writes each finished scale's files
    (singan.data.outputs)."""

    def __init__(self, out: Path):
        self.folder = outputs.LocalFolder(out)
        self.out = out
        self.bar = None
        self.rows: list[tuple] = []
        self.scale_start = 0.0
        self.noise_amp = 0.0
        self.last: IterationLog | None = None

    def on_scale_start(self, model, scale, noise_amp):
        h, w = model.plan.shapes[scale]
        self.noise_amp = noise_amp
        self.scale_start = time.perf_counter()
        self.bar = ProgressLine(f"scale {scale + 1}/{model.num_scales} {h}x{w}", model.config.niter)

    def on_iteration(self, log: IterationLog):
        self.last = log
        losses = "" if log.d_loss is None else f"D {log.d_loss:.3f} "
        self.bar.update(log.iteration, f"{losses}G {log.g_adv:.3f} rec {log.reconstruction:.4f}")

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
