"""Running SinGAN's pyramid: random samples, samples from a start scale, other sizes,
reconstruction (singan.sample and singan.reconstruct check the arguments and call these).

Every scale n computes x_n = G_n(noise_amp_n * z_n + up(x_{n-1}), up(x_{n-1})), where up() is the
bicubic resize by 1 / scale_factor cropped to scale n's size, and x_{-1} = 0. Training uses the
same chain (`generate`) to make the `prev` inputs of the scale it trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from singan import streams
from singan.recipes.singan.networks import SinGAN, image_shape, noise_shape, pad, padded_noise
from singan.resize import imresize
from singan.settings import Config


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


def step(generator: nn.Module, noise_amp: Tensor | float, z: Tensor, prev: Tensor, config: Config,
         images: int = 1) -> Tensor:
    """One step of the chain: G(noise_amp * z + prev, prev), both inputs with their border, the
    output without. For `images` stacked images, noise_amp holds one value per channel."""
    prev = pad(prev, config)
    return generator(noise_amp * padded_noise(z, config, images) + prev, prev)


def run_scale(model: SinGAN, scale: int, z: Tensor, prev: Tensor,
              noise_amp: Tensor | float | None = None) -> Tensor:
    """One step of the chain at `scale` of `model`.

    noise_amp: the scale's own amplitude unless given (super-resolution reuses the finest).
    """
    level = model.scales[scale]
    amp = level.noise_amp if noise_amp is None else noise_amp
    return step(level.generator, amp, z, prev, model.config)


def chain(levels: Sequence[tuple[nn.Module, Tensor | float]], noises: Sequence[Tensor],
          config: Config, scale_factor: float, *, prev: Tensor | None = None,
          images: int = 1) -> Tensor:
    """The output of consecutive levels, (generator, noise amplitude) pairs, fed `noises`.

    prev: the image given to the first level in place of the upsampled output of the levels
      below it; zeros by default, which is what the coarsest scale gets.
    images: how many images lie stacked along the channels (training K images at once).
    """
    x = prev
    if x is None:
        z = noises[0]
        x = torch.zeros(z.shape[0], 3 * images, *image_shape(z, config), device=z.device,
                        dtype=z.dtype)
    for index, ((generator, amp), z) in enumerate(zip(levels, noises, strict=True)):
        if index > 0:
            x = upsample(x, image_shape(z, config), scale_factor)
        x = step(generator, amp, z, x, config, images)
    return x


def generate(model: SinGAN, noises: list[Tensor], *, start: int = 0,
             prev: Tensor | None = None) -> Tensor:
    """The output of scales start .. start + len(noises) - 1 fed the given noise maps.

    prev: the image given to scale `start` in place of the upsampled output of the scales below
      it (paint-to-image, harmonization and editing inject an image there); zeros by default,
      which is what the coarsest scale gets.
    """
    levels = [(s.generator, s.noise_amp) for s in model.scales[start:start + len(noises)]]
    return chain(levels, noises, model.config, model.scale_factor, prev=prev)


@torch.no_grad()
def sample_scales(model: SinGAN, num: int, *, start_scale: int = 0, scale_h: float = 1.0,
                  scale_v: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """SinGAN's random samples (singan.sample checks the arguments): the reconstruction noise
    below `start_scale`, fresh noise from it on, every noise map `scale_h` x `scale_v` its
    scale's size (round(scale * size), as in the reference)."""
    noises = []
    for scale, level in enumerate(model.scales):
        if scale < start_scale:
            noises.append(level.z_rec.expand(num, -1, -1, -1))
            continue
        h, w = level.real.shape[-2:]
        shape = (max(1, round(h * scale_v)), max(1, round(w * scale_h)))
        noises.append(draw_noise(scale, num, noise_shape(shape, model.config),
                                 generator=generator, device=model.device, dtype=level.real.dtype))
    return generate(model, noises).clamp(-1, 1)


@torch.no_grad()
def reconstruct_scales(model: SinGAN) -> Tensor:
    """SinGAN's reconstruction of the real image: the chain fed z_rec at every scale."""
    return generate(model, [level.z_rec for level in model.scales]).clamp(-1, 1)
