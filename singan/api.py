"""The public functions, the same for every recipe: each checks its arguments and looks the
model's or config's recipe up once (singan.recipe), which does the work."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import torch
from torch import Tensor

import singan.recipes  # noqa: F401 - registers the recipes
from singan.base import Callback, Pyramid, read_metadata, resumable, scale_file_name
from singan.config import Config
from singan.errors import InputError
from singan.image import load_image
from singan.pyramid import PyramidPlan
from singan.recipe import recipe_named


def plan(height: int, width: int, config: Config | None = None) -> PyramidPlan:
    """The pyramid plan of a `height` x `width` image under `config`'s recipe (default: the
    paper's config)."""
    config = config or Config()
    return recipe_named(config.recipe).plan(height, width, config)


def pyramid_shapes(height: int, width: int, config: Config | None = None) -> list[tuple[int, int]]:
    """(height, width) of every level, coarsest first, under `config`'s recipe."""
    return list(plan(height, width, config).shapes)


def train(image: Tensor | str | os.PathLike | IO[bytes], config: Config | None = None, *,
          device: str | torch.device | None = None, dtype: torch.dtype | None = None,
          seed: int | None = None, callbacks: Sequence[Callback] = (),
          resume: Pyramid | None = None) -> Pyramid:
    """Learn a model of `config.recipe` (a SinGAN by default) from one image and return it.

    image: a 1 x 3 x H x W (or 3 x H x W) tensor in [-1, 1], or a path / binary file object.
    config: defaults to `resume.config` or the paper preset.
    device: "cpu", "cuda", ... (default: CUDA when available).
    dtype: the floating-point type of the whole training: networks, image pyramid, noise, resizes
      and optimiser state (default: float32, or `resume`'s). float64 makes a seeded training
      repeatable across CPUs: float32 results of many optimiser steps depend on the CPU's
      kernels (rounding noise that Adam amplifies).
    seed: makes training reproducible; drawn from torch's global generator when None. The seed is
      stored in the model, and a resumed training keeps it.
    resume: a model with k finished levels trained on the same image and config; only levels
      k .. N are trained.
    Callbacks get the model being trained (a ConSinGAN's stages are its scales).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not isinstance(image, Tensor):
        image = load_image(image)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InputError(f"image must be 1 x 3 x H x W, got {tuple(image.shape)}")

    if resume is not None:
        dtype = dtype or resume.dtype
        if dtype != resume.dtype:
            raise InputError(f"resume: the model was trained in {resume.dtype}, not {dtype}")
        config = config or resume.config
        if config != resume.config:
            raise InputError("resume: the model was trained with another config")
        if seed is not None and seed != resume.seed:
            raise InputError(f"resume: the model was trained with seed {resume.seed}, not {seed}")
        seed = resume.seed
    config = config or Config()
    dtype = dtype or torch.float32
    if not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point type, got {dtype}")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())

    recipe = recipe_named(config.recipe)
    levels = recipe.plan(image.shape[-2], image.shape[-1], config)
    reals = recipe.build_pyramid(image.to(device=device, dtype=dtype), levels)
    if resume is not None:
        recipe.check_resumable(resume)
        model = resumable(resume, levels, reals).to(device)
    else:
        model = recipe.new_model(config, levels, seed).to(device=device, dtype=dtype)
    for level in range(len(model.scales), levels.num_scales):
        recipe.train_level(model, level, reals[level], callbacks)
    return model


@torch.no_grad()
def sample(model: Pyramid, num: int = 1, *, start_scale: int = 0, scale_h: float = 1.0,
           scale_v: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Random samples, num x 3 x H x W in [-1, 1] (clamped), from the finished levels.

    start_scale: levels below it follow the reconstruction path (z_rec), fresh noise from it on;
      the paper's "start one scale finer" keeps the layout and changes details.
    scale_h, scale_v: multiply every level's noise map horizontally / vertically, so a sample
      1.5 wide is scale_h=1.5. Sizes are round(scale * level size), as in the reference.
    generator: a torch.Generator on the model's device, for reproducible samples.
    """
    if not len(model.scales):
        raise InputError("the model has no trained scale to sample from")
    if num < 1:
        raise InputError(f"num must be at least 1, got {num}")
    if not 0 <= start_scale < len(model.scales):
        raise InputError(f"start_scale must be in 0..{len(model.scales) - 1}, got {start_scale}")
    if scale_h <= 0 or scale_v <= 0:
        raise InputError(f"scale_h and scale_v must be positive, got {scale_h}, {scale_v}")
    if start_scale > 0 and (scale_h, scale_v) != (1.0, 1.0):
        raise InputError("start_scale > 0 reuses the reconstruction noise, which has the training "
                         "image's size: use scale_h = scale_v = 1 with it")
    if generator is not None and generator.device.type != model.device.type:
        raise InputError(f"the generator is on {generator.device.type} but the model on "
                         f"{model.device.type}: use torch.Generator(device=model.device)")
    return recipe_named(model.config.recipe).sample(model, num, start_scale=start_scale,
                                                    scale_h=scale_h, scale_v=scale_v,
                                                    generator=generator)


@torch.no_grad()
def reconstruct(model: Pyramid) -> Tensor:
    """The reconstruction of the real image (1 x 3 x H x W) from the fixed reconstruction noise."""
    if not len(model.scales):
        raise InputError("the model has no trained scale to reconstruct from")
    return recipe_named(model.config.recipe).reconstruct(model)


def load_files(metadata_file: IO[bytes], level_files: list[IO[bytes]],
               device: str | torch.device | None = None, name: str = "model") -> Pyramid:
    """Rebuild a model from config.json and its first len(level_files) level files (any storage:
    the pipeline passes file objects it read through fsspec); the recipe in config.json reads
    them. `name` is what errors call the model."""
    config, levels, seed = read_metadata(metadata_file, name)
    model = recipe_named(config.recipe).from_files(config, levels, seed, level_files, name=name)
    return model.to(device or "cpu")


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> Pyramid:
    """Load a model saved with `save` (or a training output folder holding `model/`), of any
    recipe. Loads every consecutive level file present, so a partly trained model loads too."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a SinGAN model folder (no config.json)")
    count = 0
    while (path / scale_file_name(count)).is_file():
        count += 1
    with open(path / "config.json", "rb") as meta:
        files = [open(path / scale_file_name(i), "rb") for i in range(count)]
        try:
            return load_files(meta, files, device=device, name=str(path))
        finally:
            for f in files:
                f.close()
