"""ConSinGAN's pyramid: a fixed number of stages (`num_scales`), more of them at low
resolution, and the image resized to each."""

from __future__ import annotations

import math

from torch import Tensor

from singan.errors import InputError
from singan.plans import PyramidPlan, first_not_shrinking, shrunk_shape
from singan.resize import imresize
from singan.settings import Config


def plan_consingan(height: int, width: int, config: Config) -> PyramidPlan:
    """The pyramid of ConSinGAN's `config.num_scales` stages for a `height` x `width` image.

    The finest level is the image shrunk to fit max_size, as in SinGAN. With stop = num_scales - 1
    and the base factor r = (min_size / its short side) ** (1 / stop), level i < stop is the finest
    resized by r ** (((stop - 1) / ln stop) * ln(stop - i) + 1): level 0 has min_size on its short
    side, and the levels crowd at low resolution, where the global layout is learnt.
    `PyramidPlan.scale_factor` holds r. Raises InputError where the levels would not shrink.
    """
    if isinstance(height, bool) or isinstance(width, bool) or not (
        isinstance(height, int) and isinstance(width, int)
    ):
        raise InputError(f"image size must be two integers, got {height!r} x {width!r}")
    if height < 1 or width < 1:
        raise InputError(f"image {height}x{width} is empty")
    if config.num_scales is None:
        raise InputError("ConSinGAN needs num_scales: use singan.config(recipe='consingan')")
    size = f"image {height}x{width}"
    if min(height, width) < config.min_size:
        raise InputError(f"{size} is smaller than min_size={config.min_size}; use a larger image "
                         f"or lower min_size")

    # The same shrink to max_size as SinGAN's pyramid, with its guard against max_size + 1.
    scale1 = min(config.max_size / max(height, width), 1.0)
    real_shape = shrunk_shape(height, width, scale1, config.max_size)
    if min(real_shape) < config.min_size:
        raise InputError(f"{size} shrinks to {real_shape[0]}x{real_shape[1]} to fit "
                         f"max_size={config.max_size}, below min_size={config.min_size} on its "
                         f"short side (the image is too elongated); raise max_size or lower min_size")

    stop = config.num_scales - 1
    scale_factor = math.pow(config.min_size / min(real_shape), 1.0 / stop)
    shapes = tuple(
        (math.ceil(real_shape[0] * level_factor(scale_factor, stop, i)),
         math.ceil(real_shape[1] * level_factor(scale_factor, stop, i)))
        for i in range(stop)
    ) + (real_shape,)
    i = first_not_shrinking(shapes)
    if i is not None:
        coarse, fine = shapes[i], shapes[i + 1]
        raise InputError(
            f"{size} gives ConSinGAN stages that do not shrink: stages {i} and {i + 1} are "
            f"{coarse[0]}x{coarse[1]} and {fine[0]}x{fine[1]} ({stop + 1} stages between "
            f"min_size={config.min_size} and {real_shape[0]}x{real_shape[1]}); lower "
            f"num_scales or min_size, or use a larger image")
    return PyramidPlan(real_shape=real_shape, scale1=scale1, scale_factor=scale_factor,
                       shapes=shapes)


def level_factor(scale_factor: float, stop: int, level: int) -> float:
    """The factor from the finest level to `level` (0 = coarsest, stop = the finest itself)."""
    if level == stop:
        return 1.0
    # (stop - 1) / ln(stop) tends to 1 as stop -> 1: the limit keeps two stages defined.
    slope = (stop - 1) / math.log(stop) if stop > 1 else 1.0
    return math.pow(scale_factor, slope * math.log(stop - level) + 1)


def build_reals(image: Tensor, plan: PyramidPlan) -> list[Tensor]:
    """Resize `image` (N x C x H x W) to every level of a `plan_consingan` plan, coarsest first.

    Each level is resized straight from the finest one, with the MATLAB-style bicubic imresize.
    """
    height, width = image.shape[-2:]
    if shrunk_shape(height, width, plan.scale1, max(plan.real_shape)) != plan.real_shape:
        raise InputError(f"image {height}x{width} does not match the plan (made for an image that "
                         f"resizes to {plan.real_shape[0]}x{plan.real_shape[1]})")
    real = image if plan.scale1 == 1 else imresize(image, scale=plan.scale1, shape=plan.real_shape)
    stop = plan.stop_scale
    levels = [imresize(real, scale=level_factor(plan.scale_factor, stop, i), shape=plan.shapes[i])
              for i in range(stop)]
    return [*levels, real]


