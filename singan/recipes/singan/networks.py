"""SinGAN's networks: the generator and critic of one scale, and the `SinGAN` model that holds
the whole pyramid (the shared model base is singan.base.Pyramid).

Scales are numbered as in the reference code: 0 is the coarsest. Each finished scale is one
`Scale` submodule (its generator, discriminator, real image, reconstruction noise and noise
amplitude), so a model with k finished scales is a complete, samplable SinGAN of k levels and the
unit of checkpointing is one scale.
"""

from __future__ import annotations

from typing import IO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singan.base import Level, Pyramid, load_state, scale_file_name
from singan.errors import InputError
from singan.layers import ConvBlock
from singan.plans import PyramidPlan
from singan.settings import Config


class _FiveLayerNet(nn.Module):
    """Head block, num_layer - 2 body blocks, tail conv: the body shared by G and D.

    `images` = K: K images' networks side by side in grouped convolutions (layers.ConvBlock);
    their inputs and outputs are stacked along the channels, image after image.
    """

    def __init__(self, channels: int, out_channels: int, config: Config, images: int = 1):
        super().__init__()
        self.images = images
        self.head = ConvBlock(3, channels, config, images)
        self.body = nn.Sequential(*[ConvBlock(channels, channels, config, images)
                                    for _ in range(config.num_layer - 2)])
        self.tail = nn.Conv2d(channels * images, out_channels * images, config.kernel_size,
                              groups=images)

    def features(self, x: Tensor) -> Tensor:
        return self.tail(self.body(self.head(x)))


class Generator(_FiveLayerNet):
    """G_n(z, prev) = tanh(net(z)) + centre-crop(prev); z already holds noise_amp * noise + prev.

    Both inputs carry a border of `config.pad` pixels (see `pad`); the output has the unpadded
    size.
    """

    def __init__(self, channels: int, config: Config, images: int = 1):
        super().__init__(channels, 3, config, images)

    def forward(self, z: Tensor, prev: Tensor) -> Tensor:
        x = torch.tanh(self.features(z))
        crop = (prev.shape[-2] - x.shape[-2]) // 2
        return x + prev[..., crop:prev.shape[-2] - crop, crop:prev.shape[-1] - crop]


class Discriminator(_FiveLayerNet):
    """A patch critic: one score per 11x11 receptive field, no activation (WGAN-GP).

    With zero padding (the reference) it sees the bare image and scores (H-10) x (W-10) patches.
    With circular or reflect padding its input gets the same border as the generator's, so that
    patches across the border are judged under the boundary condition the generator works with.
    """

    def __init__(self, channels: int, config: Config, images: int = 1):
        super().__init__(channels, 1, config, images)
        self.padding = config.padding
        self.pad = config.pad

    def forward(self, x: Tensor) -> Tensor:
        if self.padding != "zero":
            x = F.pad(x, (self.pad,) * 4, mode=self.padding)
        return self.features(x)


def pad(x: Tensor, config: Config) -> Tensor:
    """The border of `config.pad` pixels around a generator input, in `config.padding`'s mode."""
    mode = "constant" if config.padding == "zero" else config.padding
    return F.pad(x, (config.pad,) * 4, mode=mode)


def noise_shape(shape: tuple[int, int], config: Config) -> tuple[int, int]:
    """The size a noise map is drawn at for an image of `shape`.

    With noise padding (animation) the noise covers the border too, instead of being padded
    around, so the generator never sees a blank frame at the image edges.
    """
    if config.noise_padding:
        return shape[0] + 2 * config.pad, shape[1] + 2 * config.pad
    return shape


def image_shape(noise: Tensor, config: Config) -> tuple[int, int]:
    """The image size a noise map belongs to (the inverse of `noise_shape`)."""
    h, w = noise.shape[-2:]
    border = 2 * config.pad if config.noise_padding else 0
    return h - border, w - border


def padded_noise(z: Tensor, config: Config, images: int = 1) -> Tensor:
    """A noise map as the generator takes it: three channels per image, with the border added.

    The coarsest scale's map has one channel per image, shared by R, G and B. For `images`
    stacked images the maps lie side by side along the channels (K or 3K of them).
    """
    if z.shape[1] == images:
        z = z.repeat_interleave(3, dim=1)
    return z if config.noise_padding else pad(z, config)


class Scale(Level):
    """One finished level of the pyramid.

    `z_rec` is the reconstruction noise at this scale (z* at the coarsest, zeros elsewhere), and
    `noise_amp` the standard deviation of the noise added to the upsampled previous output.
    `discriminator` is None when a patch loss replaced the critic (`Config.loss`).
    """

    def __init__(self, generator: Generator, discriminator: Discriminator | None, real: Tensor,
                 z_rec: Tensor, noise_amp: Tensor | float):
        super().__init__(real, z_rec, noise_amp)
        self.generator = generator
        self.discriminator = discriminator

    @classmethod
    def empty(cls, index: int, config: Config, shape: tuple[int, int], critic: bool) -> Scale:
        """A scale with the right parameter and buffer shapes, to load a state dict into;
        `critic`: whether it has one (a patch loss trains without)."""
        channels = config.channels(index)
        z_channels = 1 if index == 0 else 3
        critic = Discriminator(channels, config) if critic else None
        return cls(Generator(channels, config), critic, torch.zeros(1, 3, *shape),
                   torch.zeros(1, z_channels, *noise_shape(shape, config)), 0.0)


class SinGAN(Pyramid):
    """A pyramid of per-scale GANs learnt from one image, coarsest scale first.

    `plan` holds every planned level's shape; `scales` the levels trained so far (`Scale`), so a
    partly trained model samples at the resolution of its finest finished scale and training can
    resume from it.
    """

    @property
    def generators(self) -> list[Generator]:
        return [s.generator for s in self.scales]

    def generator_modules(self) -> list[nn.Module]:
        return list(self.generators)

    def save_level(self, index: int, f: IO[bytes]) -> None:
        """Write scale `index` (tensors only, on the CPU) to a binary file object."""
        state = {k: v.detach().cpu() for k, v in self.scales[index].state_dict().items()}
        torch.save(state, f)

    @classmethod
    def from_files(cls, config: Config, plan: PyramidPlan, seed: int,
                   level_files: list[IO[bytes]], *, name: str = "model") -> SinGAN:
        """Rebuild a model from its config.json contents and its first scale files."""
        model = cls(config, plan, seed)
        for index, f in enumerate(level_files):
            state = load_state(f, index, name)
            try:
                critic = any(key.startswith("discriminator.") for key in state)
                scale = Scale.empty(index, config, plan.shapes[index], critic)
                # A model trained in float64 loads in float64 (load_state_dict would cast).
                scale.to(dtype=state["real"].dtype).load_state_dict(state)
            except Exception as err:  # a foreign file: say which one
                raise InputError(f"{name}: {scale_file_name(index)} cannot be loaded "
                                 f"({err})") from err
            model.scales.append(scale.eval().requires_grad_(False))
        return model
