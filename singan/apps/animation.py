"""Animation (SINGAN.md section 5, in the project's shared reference folder): a short looping
video from one image.

The model trains with noise padding (noise covers the generator's border instead of a blank
frame) and min_size 20. Each frame's noise takes a random walk with momentum around the
reconstruction noise z_rec, at every scale from `start_scale` on:

    z_prev1 = 0.95 z_rec + 0.05 n_0,  z_prev2 = z_rec
    diff_t  = beta (z_prev1 - z_prev2) + (1 - beta) n_t
    z_t     = alpha z_rec + (1 - alpha) (z_prev1 + diff_t);  z_prev2, z_prev1 = z_prev1, z_t

alpha pulls the walk back to z_rec (the frames stay near the real image), beta is the momentum
(higher: smoother, slower motion). Below `start_scale` the scales reconstruct the image, so a
higher start scale keeps the layout and moves only finer details.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from singan.apps.paint import check_singan
from singan.errors import InputError
from singan.recipes.singan.networks import SinGAN
from singan.recipes.singan.sampling import draw_noise, generate
from singan.settings import Config

ANIMATION_MIN_SIZE = 20  # the reference trains animation models down to 20 px
ALPHA = 0.1
BETAS = (0.80, 0.85, 0.90, 0.95)
START_SCALES = (0, 1, 2)
FRAMES = 100
FPS = 10
FRAME_BATCH = 8  # frames run through the pyramid together: bounds memory at large sizes


def animation_config(base: Config | None = None) -> Config:
    """`base` (default: the paper's) with noise padding and min_size 20."""
    values = (base or Config()).to_dict()
    return Config.from_dict({**values, "noise_padding": True, "min_size": ANIMATION_MIN_SIZE})


def noise_walk(z_rec: Tensor, frames: int, alpha: float, beta: float,
               draw: Callable[[], Tensor]) -> Tensor:
    """`frames` noise maps (frames x C x h x w) walking around `z_rec` (1 x C x h x w)."""
    z_prev1 = 0.95 * z_rec + 0.05 * draw()
    z_prev2 = z_rec
    walk = []
    for _ in range(frames):
        diff = beta * (z_prev1 - z_prev2) + (1 - beta) * draw()
        z = alpha * z_rec + (1 - alpha) * (z_prev1 + diff)
        z_prev2, z_prev1 = z_prev1, z
        walk.append(z)
    return torch.cat(walk)


@torch.no_grad()
def animate(model: SinGAN, *, alpha: float = ALPHA, beta: float = 0.95, start_scale: int = 0,
            frames: int = FRAMES, generator: torch.Generator | None = None) -> Tensor:
    """The frames of one animation: frames x 3 x H x W in [-1, 1].

    Any model animates; one trained with `animation_config` (noise padding) also moves at the
    frame's border, where a zero-padded model's noise has no room.
    """
    check_singan(model, "animation")
    if not model.is_complete:
        raise InputError(f"the model has {len(model.scales)} of {model.num_scales} scales; "
                         "finish its training first")
    if not 0 <= alpha <= 1 or not 0 <= beta <= 1:
        raise InputError(f"alpha and beta must be in [0, 1], got {alpha} and {beta}")
    if not 0 <= start_scale < model.num_scales:
        raise InputError(f"start scale must be in 0..{model.num_scales - 1}, got {start_scale}")
    if frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    walks = []
    for scale, level in enumerate(model.scales):
        z_rec = level.z_rec
        if scale < start_scale:
            walks.append(z_rec.expand(frames, -1, -1, -1))
            continue
        draw = lambda scale=scale, z=z_rec: draw_noise(  # noqa: E731
            scale, 1, tuple(z.shape[-2:]), generator=generator, device=z.device, dtype=z.dtype)
        walks.append(noise_walk(z_rec, frames, alpha, beta, draw))
    out = [generate(model, [w[first:first + FRAME_BATCH] for w in walks])
           for first in range(0, frames, FRAME_BATCH)]
    return torch.cat(out).clamp(-1, 1)
