"""Running the pyramid: random samples, samples from a start scale, other sizes, reconstruction.

Every scale n computes x_n = G_n(noise_amp_n * z_n + up(x_{n-1}), up(x_{n-1})), where up() is the
bicubic resize by 1 / scale_factor cropped to scale n's size, and x_{-1} = 0. Training uses the
same chain (`generate`) to make the `prev` inputs of the scale it trains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from singan import streams
from singan.errors import InputError
from singan.models import SinGAN, image_shape, noise_shape, pad, padded_noise
from singan.resize import imresize

if TYPE_CHECKING:
    from singan.consingan import ConSinGAN


def upsample(x: Tensor, shape: tuple[int, int], scale_factor: float) -> Tensor:
    """Resize x by 1 / scale_factor and crop (top-left, as the reference) to `shape`.

    Where rounding leaves the enlarged image short of `shape` (only for sizes that are not the
    pyramid's own), it is resized to `shape` directly instead.
    """
    up = imresize(x, scale=1.0 / scale_factor)
    if up.shape[-2] < shape[0] or up.shape[-1] < shape[1]:
        up = imresize(x, shape=shape)
    return up[..., : shape[0], : shape[1]]


def draw_noise(scale: int, num: int, shape: tuple[int, int], *, generator: torch.Generator | None,
               device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """N(0, 1) noise for `scale`: one channel shared by R, G and B at the coarsest scale.

    `shape` is the noise map's own size: `models.noise_shape` of the image size.
    """
    channels = 1 if scale == 0 else 3
    return streams.normal((num, channels, *shape), generator=generator, device=device,
                          dtype=dtype)


def run_scale(model: SinGAN, scale: int, z: Tensor, prev: Tensor,
              noise_amp: Tensor | float | None = None) -> Tensor:
    """One step of the chain at `scale`: both inputs get their border, the output has none.

    noise_amp: the scale's own amplitude unless given (super-resolution reuses the finest).
    """
    level, config = model.scales[scale], model.config
    amp = level.noise_amp if noise_amp is None else noise_amp
    prev = pad(prev, config)
    return level.generator(amp * padded_noise(z, config) + prev, prev)


def generate(model: SinGAN, noises: list[Tensor], *, start: int = 0,
             prev: Tensor | None = None) -> Tensor:
    """The output of scales start .. start + len(noises) - 1 fed the given noise maps.

    prev: the image given to scale `start` in place of the upsampled output of the scales below
      it (paint-to-image, harmonization and editing inject an image there); zeros by default,
      which is what the coarsest scale gets.
    """
    config = model.config
    x = prev
    if x is None:
        z = noises[0]
        x = torch.zeros(z.shape[0], 3, *image_shape(z, config), device=z.device, dtype=z.dtype)
    for index, z in enumerate(noises):
        if index > 0:
            x = upsample(x, image_shape(z, config), model.scale_factor)
        x = run_scale(model, start + index, z, x)
    return x


@torch.no_grad()
def sample(model: SinGAN | ConSinGAN, num: int = 1, *, start_scale: int = 0, scale_h: float = 1.0,
           scale_v: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Random samples, num x 3 x H x W in [-1, 1] (clamped), from the finished scales.

    start_scale: scales below it follow the reconstruction path (z_rec), fresh noise from it on;
      the paper's "start one scale finer" keeps the layout and changes details.
    scale_h, scale_v: multiply every scale's noise map horizontally / vertically, so a sample
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
    device = model.device
    if generator is not None and generator.device.type != device.type:
        raise InputError(f"the generator is on {generator.device.type} but the model on "
                         f"{device.type}: use torch.Generator(device=model.device)")
    if model.config.recipe == "consingan":
        from singan import consingan  # local: singan.consingan imports this module

        return consingan.sample(model, num, start_scale=start_scale, scale_h=scale_h,
                                scale_v=scale_v, generator=generator)
    noises = []
    for scale, level in enumerate(model.scales):
        if scale < start_scale:
            noises.append(level.z_rec.expand(num, -1, -1, -1))
            continue
        h, w = level.real.shape[-2:]
        shape = (max(1, round(h * scale_v)), max(1, round(w * scale_h)))
        noises.append(draw_noise(scale, num, noise_shape(shape, model.config),
                                 generator=generator, device=device, dtype=level.real.dtype))
    return generate(model, noises).clamp(-1, 1)


@torch.no_grad()
def reconstruct(model: SinGAN | ConSinGAN) -> Tensor:
    """The reconstruction of the real image (1 x 3 x H x W): the chain fed z_rec at every scale."""
    if not len(model.scales):
        raise InputError("the model has no trained scale to reconstruct from")
    if model.config.recipe == "consingan":
        from singan import consingan  # local: singan.consingan imports this module

        return consingan.reconstruct(model)
    return generate(model, [level.z_rec for level in model.scales]).clamp(-1, 1)
