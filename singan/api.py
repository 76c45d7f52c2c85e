"""The public functions, the same for every recipe: each checks its arguments and looks the
model's or config's recipe up once (singan.recipes), which does the work; `config` makes a
checked Config from a preset."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from singan.base import Callback, Diverged, Pyramid, read_metadata, resumable, scale_file_name
from singan.data.image import load_image
from singan.errors import InputError
from singan.plans import PyramidPlan
from singan.recipes import check, recipe_named
from singan.settings import PRESETS, Config


def config(preset: str = "paper", **overrides: Any) -> Config:
    """A frozen `Config` from a preset ("paper" or "quick") with field overrides.

    recipe="consingan" (an override like any other) starts from that recipe's defaults
    (its Recipe.defaults), then applies the preset's values, then the other overrides.

    Overriding `niter` without `lr_milestone` leaves the learning-rate drop where the recipe's
    reference code has it: SinGAN's at iteration 1600 whatever niter is (so `niter=300` never
    drops, as `main_train.py --niter 300`), ConSinGAN's at 80% of niter.

    >>> config(niter=300).lr_milestone, config(recipe="consingan", niter=500).lr_milestone
    (1600, 400)
    """
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown config fields: {', '.join(unknown)}")
    recipe = recipe_named(overrides.get("recipe", "singan"))
    niter = overrides.get("niter")
    derives_drop = recipe.lr_drop_at is not None and "lr_milestone" not in overrides
    if derives_drop and isinstance(niter, int):
        overrides["lr_milestone"] = max(1, round(recipe.lr_drop_at * niter))
    settings = Config(**{**recipe.defaults, **PRESETS[preset], **overrides})
    check(settings)
    return settings


def plan(height: int, width: int, config: Config | None = None) -> PyramidPlan:
    """The pyramid plan of a `height` x `width` image under `config`'s recipe (default: the
    paper's config)."""
    config = config or Config()
    return check(config).plan(height, width, config)


def pyramid_shapes(height: int, width: int, config: Config | None = None) -> list[tuple[int, int]]:
    """(height, width) of every level, coarsest first, under `config`'s recipe."""
    return list(plan(height, width, config).shapes)


Image = Tensor | str | os.PathLike | IO[bytes]


def train(image: Image, config: Config | None = None, *, device: str | torch.device | None = None,
          dtype: torch.dtype | None = None, seed: int | None = None,
          callbacks: Sequence[Callback] = (), resume: Pyramid | None = None) -> Pyramid:
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
    Callbacks get the model being trained (a ConSinGAN's stages are its scales). Raises Diverged
    when the losses become non-finite (the model's finished levels stay with `resume` and the
    callbacks' checkpoints).
    """
    (model,) = train_many([image], config, device=device, dtype=dtype,
                          seeds=None if seed is None else [seed], callbacks=[callbacks],
                          resume=None if resume is None else [resume])
    if model.failure is not None:
        raise Diverged(model.failure)
    return model


def train_many(images: Sequence[Image], config: Config | None = None, *,
               seeds: Sequence[int] | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, callbacks: Sequence[Sequence[Callback]] = (),
               resume: Sequence[Pyramid] | None = None) -> list[Pyramid]:
    """Learn one model per image, K images of one pyramid plan together, in one set of kernels
    (`Recipe.batches`: SinGAN; a recipe that does not batch takes one image at a time).

    Each image keeps its own weights, BatchNorm statistics, optimiser state, noise amplitude,
    z* and random stream (seeded from its seed and the scale), so its model is the one
    `train(image, config, seed=...)` gives, whichever images share its batch. Images whose
    plans differ are refused (InputError naming them): group them by plan first.

    seeds: one per image (default: drawn at random); callbacks: one sequence per image;
    resume: one model per image, all with the same number of finished levels.
    An image whose losses become non-finite stops: its model gets `failure` (the reason) and
    keeps the levels it finished; the others go on unchanged. Returns the models in image order.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = [as_image(image) for image in images]
    count = len(images)
    if count == 0:
        raise InputError("train_many needs at least one image")
    seeds, callbacks = _per_image("seeds", seeds, count), _per_image("callbacks", callbacks, count)
    resume = _per_image("resume", resume, count)
    if resume is not None:
        config = config or resume[0].config
        dtype = dtype or resume[0].dtype
        for index, model in enumerate(resume):
            _check_resume(model, config, dtype, None if seeds is None else seeds[index], index)
        seeds = [model.seed for model in resume]
    config = config or Config()
    dtype = dtype or torch.float32
    if not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point type, got {dtype}")
    if seeds is None:
        seeds = [int(torch.randint(0, 2**31 - 1, ()).item()) for _ in images]

    recipe = check(config)
    if count > 1 and not recipe.batches:
        raise InputError(f"recipe {config.recipe!r} trains one image at a time: call "
                         "singan.train for each image")
    plans = [recipe.plan(image.shape[-2], image.shape[-1], config) for image in images]
    _check_same_plan(images, plans)
    levels = plans[0]
    reals = [recipe.build_reals(image.to(device=device, dtype=dtype), levels)
             for image in images]
    if resume is not None:
        models = []
        for model, pyramid in zip(resume, reals, strict=True):
            recipe.check_resumable(model)
            models.append(resumable(model, levels, pyramid).to(device))
        if len({len(model.scales) for model in models}) > 1:
            raise InputError("resume: the models have finished different numbers of levels "
                             f"({[len(model.scales) for model in models]}); resume each group "
                             "of equal progress on its own")
    else:
        models = [recipe.new_model(config, levels, seed).to(device=device, dtype=dtype)
                  for seed in seeds]
    for level in range(len(models[0].scales), levels.num_scales):
        active = [index for index, model in enumerate(models) if model.failure is None]
        if not active:
            break
        recipe.train_level([models[i] for i in active], level,
                           [reals[i][level] for i in active], [callbacks[i] for i in active])
    return models


def as_image(image: Image) -> Tensor:
    """A 1 x 3 x H x W tensor from a tensor (3 x H x W is fine), a path or a binary file."""
    if not isinstance(image, Tensor):
        image = load_image(image)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InputError(f"image must be 1 x 3 x H x W, got {tuple(image.shape)}")
    return image


def _per_image(name: str, values: Sequence | None, count: int) -> list | None:
    """`values` as a list of one per image (callbacks: [()] * count when none are given)."""
    if values is None or (name == "callbacks" and len(values) == 0):
        return [()] * count if name == "callbacks" else None
    values = list(values)
    if len(values) != count:
        raise InputError(f"{name}: {len(values)} given for {count} images")
    return values


def _check_resume(model: Pyramid, config: Config, dtype: torch.dtype, seed: int | None,
                  index: int) -> None:
    """A model to resume must have been trained with these settings."""
    which = "resume" if index == 0 else f"resume (image {index})"
    if dtype != model.dtype:
        raise InputError(f"{which}: the model was trained in {model.dtype}, not {dtype}")
    if config != model.config:
        raise InputError(f"{which}: the model was trained with another config")
    if seed is not None and seed != model.seed:
        raise InputError(f"{which}: the model was trained with seed {model.seed}, not {seed}")


def _check_same_plan(images: list[Tensor], plans: list[PyramidPlan]) -> None:
    """Images train together only when their pyramids are the same."""
    groups: dict[PyramidPlan, list[int]] = {}
    for index, plan in enumerate(plans):
        groups.setdefault(plan, []).append(index)
    if len(groups) > 1:
        parts = [f"image{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))} "
                 f"({images[indices[0]].shape[-2]}x"
                 f"{images[indices[0]].shape[-1]}: {len(plan.shapes)} levels, finest "
                 f"{plan.real_shape[0]}x{plan.real_shape[1]})" for plan, indices in groups.items()]
        raise InputError("train_many: the images have different pyramid plans and cannot train "
                         "together: " + "; ".join(parts))


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
    model = recipe_named(config.recipe).load(config, levels, seed, level_files, name=name)
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
