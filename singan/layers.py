"""The layers both recipes build with: the conv block, the reference initialisation, and which
parameters the optimiser trains."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from singan import streams
from singan.settings import Config


class ConvBlock(nn.Sequential):
    """Conv 3x3 (no padding) -> BatchNorm -> LeakyReLU(0.2); both recipes' building block.

    SinGAN always has the BatchNorm; ConSinGAN only with config.batch_norm. With `images` = K,
    one block holds K images' blocks side by side: K groups of channels, a grouped convolution
    (each image's filters see only its own channels) and one BatchNorm channel per image
    channel, so that K images train in one set of kernels and stay independent (`stack`).
    """

    def __init__(self, in_channels: int, out_channels: int, config: Config, images: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels * images, out_channels * images, config.kernel_size,
                              groups=images)
        if config.batch_norm:
            self.norm = nn.BatchNorm2d(out_channels * images)
        self.act = nn.LeakyReLU(config.leaky_slope)


def stack(modules: Sequence[nn.Module], batched: nn.Module) -> nn.Module:
    """`batched` (built for len(modules) images) loaded with the images' modules side by side:
    every parameter and buffer concatenated along its first dimension, the output channels, in
    image order (a counter such as BatchNorm's num_batches_tracked is shared: the first's)."""
    states = [m.state_dict() for m in modules]
    batched.load_state_dict({key: torch.cat([s[key] for s in states]) if value.dim() else value
                             for key, value in states[0].items()})
    return batched


def unstack(batched: nn.Module, singles: Sequence[nn.Module]) -> list[nn.Module]:
    """The inverse of `stack`: `singles` (one single-image module per image) loaded with their
    part of `batched`."""
    parts = {key: value.chunk(len(singles)) if value.dim() else [value] * len(singles)
             for key, value in batched.state_dict().items()}
    for index, single in enumerate(singles):
        single.load_state_dict({key: chunks[index] for key, chunks in parts.items()})
    return list(singles)


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """Switch `module` to training its parameters and return them, for the optimiser; all but
    the biases of convolutions that feed a BatchNorm, which stay frozen.

    In training mode BatchNorm subtracts each channel's mean, so such a bias changes no output
    and its exact gradient is zero. What autograd returns for it is rounding noise, and Adam,
    dividing by the noise's own tiny magnitude, turns it into learning-rate-sized random steps
    that differ with the CPU's kernels: float32 trainings drifted by 0.02 in their losses within
    20 iterations between two machines, float64 ones by 0.01. Frozen, these biases keep their
    initial values, which is what exact arithmetic gives (a zero gradient leaves Adam still).
    """
    redundant = {id(block.conv.bias) for block in module.modules()
                 if isinstance(block, ConvBlock) and hasattr(block, "norm")}
    parameters = []
    for parameter in module.parameters():
        parameter.requires_grad_(id(parameter) not in redundant)
        if parameter.requires_grad:
            parameters.append(parameter)
    return parameters


def init_weights(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """The reference initialisation: conv weights N(0, std), BatchNorm weights N(1, std), bias 0.

    Conv biases keep PyTorch's default distribution, U(+-1/sqrt(fan_in)), as in the reference,
    but are drawn from `generator` so that a seeded training is reproducible.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            _fill(m.weight, streams.normal, generator, mean=0.0, std=std)
            _fill(m.bias, streams.uniform, generator, low=-bound, high=bound)
        elif isinstance(m, nn.BatchNorm2d):
            _fill(m.weight, streams.normal, generator, mean=1.0, std=std)
            nn.init.zeros_(m.bias)


def _fill(parameter: Tensor, draw: Callable[..., Tensor], generator: torch.Generator,
          **kwargs: float) -> None:
    with torch.no_grad():
        parameter.copy_(draw(tuple(parameter.shape), generator=generator,
                             device=parameter.device, dtype=parameter.dtype, **kwargs))
