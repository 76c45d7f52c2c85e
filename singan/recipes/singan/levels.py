"""The image pyramid: how many scales, their sizes, and the resized images.

The arithmetic is the reference SinGAN's (SINGAN.md section 1, in the project's shared reference
folder), float error included: a level meant to be 25 px often comes out 26, and trained models,
noise maps and parity tests all depend on the exact sizes. Where the reference crashes or
silently misbehaves on a degenerate image, `plan_pyramid` raises `InputError` instead, naming the
image size and what to change.

Scales are numbered as in the reference code: 0 is the coarsest, the last is the finest.
"""

from __future__ import annotations

import math

from torch import Tensor

from singan.errors import InputError
from singan.plans import PyramidPlan, first_not_shrinking, shrunk_shape
from singan.resize import imresize
from singan.settings import Config


def plan_pyramid(height: int, width: int, config: Config | None = None) -> PyramidPlan:
    """Plan the pyramid of a `height` x `width` image with the reference SinGAN's arithmetic.

    Raises InputError when the image is too small, or when the settings would give a single
    scale or levels that do not shrink (cases where the reference crashes or misbehaves).
    """
    cfg = config if config is not None else Config()
    if isinstance(height, bool) or isinstance(width, bool) or not (
        isinstance(height, int) and isinstance(width, int)
    ):
        raise InputError(f"image size must be two integers, got {height!r} x {width!r}")
    if height < 1 or width < 1:
        raise InputError(f"image {height}x{width} is empty")
    size = f"image {height}x{width}"
    short, long = min(height, width), max(height, width)
    if short < cfg.min_size:
        raise InputError(
            f"{size} is smaller than min_size={cfg.min_size}; use a larger image or lower min_size"
        )

    # The reference's formulas, with math.log(x, base) as it writes them: the same float error
    # gives the same number of scales. num_scales depends on the *original* size, not the resized
    # one, so a 375x500 photo gets 9 scales while a native 188x250 gets 10 (kept for parity).
    sf_init = cfg.scale_factor
    num_scales = math.ceil(math.log(cfg.min_size / short, sf_init)) + 1
    scale2stop = math.ceil(math.log(min(cfg.max_size, long) / long, sf_init))
    stop_scale = num_scales - scale2stop
    scale1 = min(cfg.max_size / long, 1.0)

    real_shape = shrunk_shape(height, width, scale1, cfg.max_size)
    real_size = f"{real_shape[0]}x{real_shape[1]}"

    if cfg.num_scales is not None:
        # Seed-study option: a fixed number of levels; the ratio between them follows from it.
        stop_scale = cfg.num_scales - 1
    if stop_scale < 1:
        # The reference divides by zero here (1 / stop_scale).
        raise InputError(
            f"{size} gives a single scale: fitting it into max_size={cfg.max_size} shrinks it to "
            f"{real_size}, which leaves no room above min_size={cfg.min_size}; raise max_size, "
            f"lower min_size or set num_scales"
        )
    if min(real_shape) < cfg.min_size:
        # The ratio would exceed 1: the "coarser" levels would be larger than the image itself.
        raise InputError(
            f"{size} shrinks to {real_size} to fit max_size={cfg.max_size}, and its short side is "
            f"below min_size={cfg.min_size} (the image is too elongated); raise max_size or lower "
            f"min_size"
        )

    scale_factor = math.pow(cfg.min_size / min(real_shape), 1.0 / stop_scale)
    shapes = tuple(
        (
            math.ceil(real_shape[0] * math.pow(scale_factor, stop_scale - i)),
            math.ceil(real_shape[1] * math.pow(scale_factor, stop_scale - i)),
        )
        for i in range(stop_scale + 1)
    )
    i = first_not_shrinking(shapes)
    if i is not None:  # the reference would train two scales on the same image (e.g. 25x25)
        coarse, fine = shapes[i], shapes[i + 1]
        raise InputError(
            f"{size} gives levels that do not shrink: scales {i} and {i + 1} are "
            f"{coarse[0]}x{coarse[1]} and {fine[0]}x{fine[1]} (ratio {scale_factor:.4f} "
            f"between {stop_scale + 1} levels, finest {real_size}); "
            + ("lower num_scales, " if cfg.num_scales is not None else "")
            + "use a larger image or lower min_size"
        )
    return PyramidPlan(
        real_shape=real_shape, scale1=scale1, scale_factor=scale_factor, shapes=shapes
    )


def build_reals(image: Tensor, plan: PyramidPlan) -> list[Tensor]:
    """Resize `image` (N x C x H x W, any value range) to every level of `plan`, coarsest first.

    As in the reference, the image is first shrunk to `plan.real_shape` (the finest level) and
    every coarser level is resized straight from it, not from its neighbour, so that errors do
    not accumulate. The levels stay on the image's device, in its dtype. When the image needs no
    shrinking, the finest level is `image` itself, not a copy.
    """
    if not isinstance(image, Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"build_reals expects an N x C x H x W tensor, got {shape}")
    height, width = image.shape[-2], image.shape[-1]
    # Redo the plan's shrink (max(real_shape) is max_size whenever a side was clamped) to catch
    # a plan made for another image.
    expected = shrunk_shape(height, width, plan.scale1, max(plan.real_shape))
    if expected != plan.real_shape:
        raise InputError(
            f"image {height}x{width} does not match the plan (made for an image that resizes to "
            f"{plan.real_shape[0]}x{plan.real_shape[1]})"
        )

    real = image if plan.scale1 == 1 else imresize(image, scale=plan.scale1, shape=plan.real_shape)
    stop = plan.stop_scale
    levels = [
        imresize(real, scale=math.pow(plan.scale_factor, stop - i), shape=plan.shapes[i])
        for i in range(stop)
    ]
    levels.append(real)
    return levels
