"""Super-resolution (SINGAN.md section 5, in the project's shared reference folder): a SinGAN
of the low-resolution image, whose finest generator is run again and again on its own upsampled
output.

Training uses the image at its full size (no max_size cap, unlike the reference, which shrinks
inputs above 250 px without saying so), alpha 100 and min_size 18, with a per-step factor
r = factor ** (1 / round(3 * log2(factor))): 2 ** (1/3) for x2, x4 and x8 alike, in 3, 6 and 9
steps. Generation repeats: resize by r, add noise at the finest scale's amplitude, run the finest
generator. The work grows with the output's pixel count: one 128-channel activation of the output
takes 512 bytes a pixel, so a 2000 x 2000 result needs a few GB.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from singan.apps.paint import check_singan
from singan.errors import InputError
from singan.recipes.singan.networks import SinGAN, noise_shape
from singan.recipes.singan.sampling import draw_noise, run_scale
from singan.resize import imresize
from singan.settings import Config

SR_ALPHA = 100.0  # the reference's reconstruction weight for super-resolution
SR_MIN_SIZE = 18  # the reference's coarsest size for super-resolution


def sr_steps(factor: float) -> tuple[float, int]:
    """(per-step factor, number of steps) for an overall upscaling `factor`."""
    if not isinstance(factor, (int, float)) or not factor > 1:
        raise InputError(f"the super-resolution factor must be above 1, got {factor!r}")
    steps = round(3 * math.log2(factor))
    if steps < 1:
        raise InputError(f"factor {factor} is too close to 1: it gives no upscaling step; "
                         "use a factor of at least 1.13")
    return factor ** (1 / steps), steps


def sr_config(height: int, width: int, factor: float, base: Config | None = None,
              max_size: int | None = None) -> Config:
    """The training config for super-resolving a `height` x `width` image by `factor`.

    `base` supplies everything the reference does not change for super-resolution (networks,
    iterations, ...); its num_scales is dropped, since the per-step factor sets the levels. The image trains at full size unless `max_size` asks for a smaller copy.
    """
    step, _ = sr_steps(factor)
    base = base or Config()
    # num_scales cleared: the levels follow from the per-step factor, as the reference's do.
    overrides = dict(alpha=SR_ALPHA, min_size=SR_MIN_SIZE, scale_factor=1 / step, num_scales=None,
                     max_size=max_size or max(height, width))
    return Config.from_dict({**base.to_dict(), **overrides})


@torch.no_grad()
def super_resolve(model: SinGAN, factor: float, *, generator: torch.Generator | None = None,
                  image: Tensor | None = None) -> Tensor:
    """`image` (default: the training image) upscaled by `factor`: 1 x 3 x fH x fW in [-1, 1].

    Each step resizes by the per-step factor (the last one lands on exactly round(factor * size))
    and runs the finest generator with fresh noise at the finest scale's amplitude.
    """
    check_singan(model, "super-resolution")
    if not model.is_complete:
        raise InputError("super-resolution needs a fully trained model; "
                         f"this one has {len(model.scales)} of {model.num_scales} scales")
    step, steps = sr_steps(factor)
    finest = model.scales[-1]
    x = finest.real if image is None else image.to(finest.real)
    h, w = x.shape[-2:]
    for index in range(1, steps + 1):
        grow = factor if index == steps else step ** index
        shape = (round(h * grow), round(w * grow))
        x = imresize(x, shape=shape)
        # Three noise channels: the finest generator learnt with them (the reference draws one
        # channel here, a leftover of its coarsest-scale code path).
        z = draw_noise(model.num_scales - 1, x.shape[0], noise_shape(shape, model.config),
                       generator=generator, device=x.device, dtype=x.dtype)
        x = run_scale(model, model.num_scales - 1, z, x, noise_amp=finest.noise_amp)
    return x.clamp(-1, 1)
