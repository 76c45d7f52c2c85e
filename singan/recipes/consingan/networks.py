"""ConSinGAN's networks and model: one generator for the whole pyramid, a critic per stage.

How it differs from SinGAN (singan.recipes.singan):
- One generator for the whole pyramid: a head, one body per stage, a tail. Stage k starts as a copy
  of stage k - 1's body. Features (not RGB images) pass from stage to stage, upsampled bicubically,
  and each stage adds its output to the upsampled features it got (a residual).
- The newest `train_depth` stages train together, the lower ones at learning rates scaled by
  `lr_scale` per stage below the newest; everything further down is frozen (training.py).
- Its own pyramid (levels.py): a fixed number of stages, more of them at low resolution.
- Per iteration one generator backward pass, then `g_steps` optimizer steps on that gradient.

Storage follows SinGAN's (config.json and one file per finished stage), but training stage k also
changes the stages below it: every stage file holds the whole generator as it was when the stage
finished, and the last file's generator is the one that loads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import IO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singan.base import Level, Pyramid, load_state, scale_file_name
from singan.errors import InputError
from singan.layers import ConvBlock
from singan.plans import PyramidPlan
from singan.settings import Config


def width(config: Config) -> int:
    """ConSinGAN's channels: the same at every stage, the coarsest SinGAN scale's (nfc, capped)."""
    return config.channels(0)


def upsample(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """Bicubic resize of features between stages (torch's, not MATLAB's: no antialiasing needed)."""
    return F.interpolate(x, size=shape, mode="bicubic", align_corners=True)


class Generator(nn.Module):
    """The growing generator: head, one body of num_layer conv blocks per stage, tail.

    For stages 0 .. K (noise z_k, size (h_k, w_k), amplitude a_k):
        x_0 = body_0(pad(up(head(pad(z_0)))))                  z_0: RGB noise (or the real image)
        x_k = body_k(up(x_{k-1}, padded size) + a_k * z_k) + up(x_{k-1}, (h_k, w_k))
        out = tanh(tail(pad(x_K)))
    z_k for k > 0 is a feature map of `width` channels with a border of `config.pad` pixels, the
    border one body takes off. Before the first body the head's output is enlarged by one
    conv's border and the rest zero-padded: the official code does this in generation mode, for
    more diverse image edges.
    """

    def __init__(self, config: Config, num_stages: int = 0):
        super().__init__()
        self.config = config
        channels = width(config)
        self.edge = config.kernel_size // 2  # the border one conv takes off each side
        self.head = ConvBlock(3, channels, config)
        self.body = nn.ModuleList()
        self.tail = nn.Conv2d(channels, 3, config.kernel_size)
        for _ in range(num_stages):
            self.add_stage()

    def add_stage(self) -> None:
        """Grow by one stage: a copy of the last stage's body (a fresh body for the first)."""
        if len(self.body):
            stage = copy.deepcopy(self.body[-1])
        else:
            channels = width(self.config)
            stage = nn.Sequential(*[ConvBlock(channels, channels, self.config)
                                    for _ in range(self.config.num_layer)])
            stage.to(device=self.tail.weight.device, dtype=self.tail.weight.dtype)
        self.body.append(stage)

    def forward(self, noises: Sequence[Tensor], shapes: Sequence[tuple[int, int]],
                noise_amps: Sequence[Tensor | float]) -> Tensor:
        """Run stages 0 .. len(noises) - 1; shapes[k] is stage k's output size (shapes[0] unused)."""
        if not 0 < len(noises) <= len(self.body):
            raise ValueError(f"{len(noises)} noise maps for a generator of {len(self.body)} stages")
        border = self.config.pad
        x = self.head(F.pad(noises[0], (self.edge,) * 4))
        x = upsample(x, (x.shape[-2] + 2 * self.edge, x.shape[-1] + 2 * self.edge))
        x = self.body[0](F.pad(x, (border - self.edge,) * 4))
        for k in range(1, len(noises)):
            h, w = shapes[k]
            skip = upsample(x, (h, w))
            x = self.body[k](upsample(x, (h + 2 * border, w + 2 * border))
                             + noises[k] * noise_amps[k]) + skip
        return torch.tanh(self.tail(F.pad(x, (self.edge,) * 4)))


class Discriminator(nn.Module):
    """A patch critic like SinGAN's: head, num_layer conv blocks, tail conv to one channel."""

    def __init__(self, config: Config):
        super().__init__()
        channels = width(config)
        self.head = ConvBlock(3, channels, config)
        self.body = nn.Sequential(*[ConvBlock(channels, channels, config)
                                    for _ in range(config.num_layer)])
        self.tail = nn.Conv2d(channels, 1, config.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.body(self.head(x)))


def noise_size(config: Config, stage: int, shape: tuple[int, int]) -> tuple[int, int, int]:
    """(channels, h, w) of stage `stage`'s noise for an output of `shape`: RGB at stage 0,
    features with the body's border above it."""
    if stage == 0:
        return 3, *shape
    return width(config), shape[0] + 2 * config.pad, shape[1] + 2 * config.pad


# --- the model -------------------------------------------------------------------------------
class Stage(Level):
    """What belongs to one finished stage besides its generator body.

    z_rec: the fixed input of the reconstruction: stage 0's real image itself, then a fixed
    N(0, 1) feature map (with its border). noise_amp: the amplitude of the noise added to the
    stage's input. discriminator: the critic trained at this stage (the next one starts from it).
    """

    def __init__(self, discriminator: Discriminator, real: Tensor, z_rec: Tensor,
                 noise_amp: Tensor | float):
        super().__init__(real, z_rec, noise_amp)
        self.discriminator = discriminator

    @classmethod
    def empty(cls, index: int, config: Config, shape: tuple[int, int]) -> Stage:
        """A stage with the right parameter and buffer shapes, to load a state dict into."""
        return cls(Discriminator(config), torch.zeros(1, 3, *shape),
                   torch.zeros(1, *noise_size(config, index, shape)), 0.0)


class ConSinGAN(Pyramid):
    """A ConSinGAN learnt from one image: the growing `generator` and the finished `scales`.

    The views and storage are `singan.base.Pyramid`'s, shared with SinGAN, so the pipeline
    trains, checkpoints and samples either recipe; `scale_factor` is the pyramid's base factor r
    (see plan_consingan), its levels not evenly spaced.
    """

    def __init__(self, config: Config, plan: PyramidPlan, seed: int):
        super().__init__(config, plan, seed)
        self.generator = Generator(config)

    def generator_modules(self) -> list[nn.Module]:
        return [self.generator]

    def save_level(self, index: int, f: IO[bytes]) -> None:
        """Write stage `index` (tensors only, on the CPU): its real, z_rec, noise_amp and critic,
        and under "generator." the generator's head, bodies 0 .. index and tail.

        The generator part is the generator as it is now: written when stage `index` ends (as
        the training callbacks do), it is the generator at the end of that stage, a resume
        point. Written later, the lower stages carry their later weights.
        """
        state = dict(self.scales[index].state_dict())
        for key, value in self.generator.state_dict().items():
            parts = key.split(".")
            if parts[0] != "body" or int(parts[1]) <= index:
                state[f"generator.{key}"] = value
        torch.save({k: v.detach().cpu() for k, v in state.items()}, f)

    @classmethod
    def from_files(cls, config: Config, plan: PyramidPlan, seed: int,
                   level_files: list[IO[bytes]], *, name: str = "model") -> ConSinGAN:
        """Rebuild a model from its config.json contents and stage files; the generator comes
        from the last file (training a stage changes the ones below it)."""
        model = cls(config, plan, seed)
        generator_state: dict[str, Tensor] = {}
        for index, f in enumerate(level_files):
            state = load_state(f, index, name)
            stage = Stage.empty(index, config, plan.shapes[index])
            try:
                generator_state = {key.removeprefix("generator."): state.pop(key)
                                   for key in list(state) if key.startswith("generator.")}
                # A model trained in float64 loads in float64 (load_state_dict would cast).
                stage.to(dtype=state["real"].dtype).load_state_dict(state)
            except Exception as err:  # a foreign file: say which one
                raise InputError(f"{name}: {scale_file_name(index)} cannot be loaded ({err})") from err
            model.scales.append(stage.eval().requires_grad_(False))
        if level_files:
            model.generator = Generator(config, num_stages=len(level_files)).to(
                dtype=model.scales[0].real.dtype)
            try:
                model.generator.load_state_dict(generator_state)
            except Exception as err:
                last = scale_file_name(len(level_files) - 1)
                raise InputError(f"{name}: {last} holds no matching generator ({err})") from err
        model.generator.eval().requires_grad_(False)
        return model


