"""ConSinGAN's generation: the one generator fed noise (samples) or the fixed reconstruction
inputs, every stage at once."""

from __future__ import annotations

import torch
from torch import Tensor

from singan import streams
from singan.recipes.consingan.networks import ConSinGAN, noise_size


@torch.no_grad()
def sample_stages(model: ConSinGAN, num: int, *, start_scale: int, scale_h: float,
                  scale_v: float, generator: torch.Generator | None) -> Tensor:
    """Random samples from the finished stages: fresh noise from `start_scale` on, the fixed
    reconstruction inputs below it. Every stage's size is round(scale * its size), so the
    generator retargets to the new size (scale_h=1.5: 1.5 times as wide)."""
    shapes = [(max(1, round(h * scale_v)), max(1, round(w * scale_h)))
              for h, w in model.plan.shapes[: len(model.scales)]]
    dtype = model.scales[0].real.dtype
    noises = [level.z_rec.expand(num, -1, -1, -1) if k < start_scale else
              streams.normal((num, *noise_size(model.config, k, shapes[k])),
                             generator=generator, device=model.device, dtype=dtype)
              for k, level in enumerate(model.scales)]
    amps = [level.noise_amp for level in model.scales]
    return model.generator(noises, shapes, amps).clamp(-1, 1)


@torch.no_grad()
def reconstruct_stages(model: ConSinGAN) -> Tensor:
    """The reconstruction of the real image: the generator fed the fixed inputs."""
    shapes = list(model.plan.shapes[: len(model.scales)])
    return model.generator([level.z_rec for level in model.scales], shapes,
                           [level.noise_amp for level in model.scales]).clamp(-1, 1)
