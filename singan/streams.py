"""Random streams: one torch.Generator per (seed, scale), and the draws made from them.

Every draw is made in float64 and rounded to the working dtype, so a float32 and a float64
training of the same seed start from the same weights and see the same noise (torch's float32
and float64 samplers turn the same random bits into different numbers). Comparing the two is
then meaningful, and float64 trainings, which agree across CPUs, stand in for float32 ones in
tests.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scale_generator(seed: int, scale: int, device: torch.device | str) -> torch.Generator:
    """The random stream of one scale: independent of how many scales ran before in this
    process, so a training resumed after k scales draws what an uninterrupted one draws."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + scale) % 2**63)


def normal(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device | str,
           dtype: torch.dtype = torch.float32, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """N(mean, std^2) samples of `shape`, drawn in float64 and rounded to `dtype`."""
    x = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    return (x * std + mean).to(dtype)


def uniform(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device | str,
            dtype: torch.dtype = torch.float32, low: float = 0.0, high: float = 1.0) -> Tensor:
    """U(low, high) samples of `shape`, drawn in float64 and rounded to `dtype`."""
    x = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return (low + (high - low) * x).to(dtype)
