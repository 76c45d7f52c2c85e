"""One image's output layout, written the same way by the `singan` command (into a local folder)
and by the batch job (into its fsspec store, which also logs every picture to MLflow):

    model/config.json, model/scale_XX.pt      written as each level finishes (the resume point)
    reals/scale_XX.png                        the image pyramid
    samples/scale_XX.png                      per level: the real image and 3 samples, side by side
    samples/sample_XX.png                     random samples of the finished model
    samples/reconstruction.png                its reconstruction of the image
    samples/final.png                         the real image, the reconstruction and up to 4
                                              samples side by side (what MLflow shows)
    sr/sr_xF.png, sr/bicubic_xF.png           super-resolution by F, and bicubic to compare
    animate/start_scale_S/beta_B.gif          animations (singan.apps.animation), B as 0.80 ... 0.95

Random streams: every picture draws from its own torch.Generator, seeded from the model's seed
and what the picture is (`picture_generator`), so one model gives the same pictures in the command
and in the job, whichever of them are asked for and in whatever order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from singan.api import reconstruct, sample
from singan.apps.animation import ALPHA, BETAS, FPS, FRAMES, START_SCALES, animate
from singan.apps.gif import gif_bytes
from singan.apps.sr import super_resolve
from singan.base import Pyramid, scale_file_name
from singan.data.files import atomic_write
from singan.data.image import png_bytes
from singan.resize import imresize

GRID_SAMPLES = 3  # samples beside the real image in samples/scale_XX.png
GRID_BORDER = 2  # white pixels between them


class Folder(Protocol):
    """Where an image's outputs go: `put` writes a file whole or not at all."""

    def put(self, name: str, data: bytes) -> None: ...


class LocalFolder:
    """A folder on this machine (the `singan` command's --out)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def put(self, name: str, data: bytes) -> None:
        atomic_write(self.root / name, lambda f: f.write(data))


def picture_generator(model: Pyramid, *key: int) -> torch.Generator:
    """The random stream of one picture: the model's seed and the picture's integer key."""
    seed = model.seed
    for part in key:
        seed = (seed * 1_000_003 + part) % 2**63
    return torch.Generator(device=model.device).manual_seed(seed)


def write_level(model: Pyramid, index: int, folder: Folder) -> None:
    """After level `index` finished: its real image and sample grid, then its model file and
    config.json. The model file comes last because it is the resume point: a run stopped
    before it trains the level again and writes its pictures then."""
    folder.put(f"reals/scale_{index:02d}.png", png_bytes(model.scales[index].real))
    folder.put(f"samples/scale_{index:02d}.png", png_bytes(sample_grid(model)))
    folder.put(f"model/{scale_file_name(index)}", model.level_bytes(index))
    folder.put("model/config.json", model.metadata_bytes())


def sample_grid(model: Pyramid) -> Tensor:
    """The real image at the finest finished level, then GRID_SAMPLES random samples."""
    samples = sample(model, GRID_SAMPLES, generator=picture_generator(model))
    return side_by_side([model.reals[-1], *samples.split(1)])


def side_by_side(pictures: list[Tensor]) -> Tensor:
    """1 x 3 x H x W pictures of one height in a row, GRID_BORDER white pixels between them."""
    first = pictures[0]
    white = torch.ones(1, 3, first.shape[-2], GRID_BORDER, device=first.device, dtype=first.dtype)
    return torch.cat([part for x in pictures for part in (x, white)][:-1], dim=-1)


def write_final(model: Pyramid, folder: Folder, num_samples: int) -> None:
    """The finished model's random samples, its reconstruction, and both beside the real image
    in one picture."""
    samples = []
    if num_samples:  # sample() refuses 0
        samples = sample(model, num_samples, generator=picture_generator(model)).split(1)
        for index, x in enumerate(samples):
            folder.put(f"samples/sample_{index:02d}.png", png_bytes(x))
    reconstruction = reconstruct(model)
    folder.put("samples/reconstruction.png", png_bytes(reconstruction))
    folder.put("samples/final.png",
               png_bytes(side_by_side([model.reals[-1], reconstruction, *samples[:4]])))


def write_super_resolution(model: Pyramid, factor: float, folder: Folder) -> Tensor:
    """sr/sr_xF.png and, to compare, sr/bicubic_xF.png; returns the result."""
    result = super_resolve(model, factor, generator=picture_generator(model))
    bicubic = imresize(model.reals[-1], shape=tuple(result.shape[-2:])).clamp(-1, 1)
    folder.put(f"sr/sr_x{factor:g}.png", png_bytes(result))
    folder.put(f"sr/bicubic_x{factor:g}.png", png_bytes(bicubic))
    return result


def write_animations(model: Pyramid, folder: Folder, *, start_scales: Iterable[int] = START_SCALES,
                     betas: Iterable[float] = BETAS, alpha: float = ALPHA, frames: int = FRAMES,
                     fps: float = FPS) -> list[str]:
    """One GIF per start scale below the model's number of scales and per beta; their names."""
    names = []
    for start_scale in start_scales:
        if start_scale >= model.num_scales:
            continue
        for beta in betas:
            clip = animate(model, alpha=alpha, beta=beta, start_scale=start_scale, frames=frames,
                           generator=picture_generator(model, start_scale, round(beta * 1000)))
            name = f"animate/start_scale_{start_scale}/beta_{beta:.2f}.gif"
            folder.put(name, gif_bytes(clip, fps))
            names.append(name)
    return names
