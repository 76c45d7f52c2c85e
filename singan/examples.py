"""A built-in example image, made procedurally, for the demo and the tests.

A wall of rounded stones (a Voronoi tiling with shaded cells and dark mortar): structure at
several scales, which is what SinGAN learns and rearranges.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pebbles(height: int = 96, width: int = 144, *, cells: int | None = None, seed: int = 0) -> Tensor:
    """A 1 x 3 x height x width image of stones in [-1, 1], the same for the same arguments."""
    rng = torch.Generator().manual_seed(seed)
    cells = cells or max(4, height * width // 400)
    centres = torch.rand(cells, 2, generator=rng) * torch.tensor([height, width])
    # Earthy colours: a warm grey with per-stone variation in brightness and hue.
    base = torch.tensor([0.55, 0.48, 0.40])
    colours = (base + 0.25 * (torch.rand(cells, 1, generator=rng) - 0.5)
               + 0.12 * (torch.rand(cells, 3, generator=rng) - 0.5)).clamp(0, 1)

    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pixels = torch.stack([yy, xx], -1).reshape(-1, 1, 2)
    dist = (pixels - centres).norm(dim=-1)  # (H*W, cells)
    nearest, index = dist.topk(2, dim=1, largest=False)
    d1, d2 = nearest[:, 0], nearest[:, 1]

    # Dome shading inside each stone, dark mortar where two stones meet.
    radius = (d1 + d2) / 2
    shade = 1.0 - 0.45 * (d1 / radius.clamp(min=1e-6)) ** 2
    mortar = ((d2 - d1) < 1.6).float()
    rgb = colours[index[:, 0]] * shade[:, None]
    rgb = rgb * (1 - mortar[:, None]) + 0.18 * mortar[:, None]
    image = rgb.reshape(height, width, 3).permute(2, 0, 1).unsqueeze(0)
    return image.clamp(0, 1) * 2 - 1
