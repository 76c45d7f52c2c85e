"""Built-in example images, made procedurally, for the demo and the tests.

- `balloons`: hot-air balloons apart from each other in a sky (the paper's first example): the
  demo's images, whose samples rearrange the balloons within minutes of CPU training
  (bench/NOTES.md, "The demo").
- `pebbles`: a wall of rounded stones (a Voronoi tiling with shaded cells and dark mortar):
  structure at several scales (the tests' images, and `singan demo`'s).
- `landscape`: a sky over ranges of mountains, paler with distance: SinGAN's classic case, whose
  samples rearrange the ridges into new skylines (the browser check's images).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


# Mountain ranges, far to near: (mean height of the ridge as a fraction of the image's height,
# its amplitude, its colour); far ones paler and bluer (aerial perspective), near ones greener.
RANGES = ((0.42, 0.10, (0.58, 0.62, 0.72)), (0.55, 0.09, (0.42, 0.46, 0.50)),
          (0.68, 0.07, (0.30, 0.36, 0.26)), (0.82, 0.05, (0.22, 0.32, 0.15)))
SKY = ((0.30, 0.50, 0.85), (0.88, 0.86, 0.85))  # zenith, horizon


def _ridge(width: int, rng: torch.Generator, octaves: int = 6) -> Tensor:
    """A skyline in about [-1, 1]: sines of doubling frequency and falling amplitude."""
    x = torch.linspace(0, 1, width)
    total = torch.zeros(width)
    for k in range(octaves):
        frequency = 2 ** k * (1 + torch.rand(1, generator=rng).item())
        phase = 2 * math.pi * torch.rand(1, generator=rng).item()
        total += 0.55 ** k * torch.sin(2 * math.pi * frequency * x + phase)
    return total / 2


def landscape(height: int = 128, width: int = 192, *, seed: int = 0) -> Tensor:
    """A 1 x 3 x height x width landscape in [-1, 1], the same for the same arguments."""
    rng = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None]
    zenith, horizon = (torch.tensor(c)[:, None, None] for c in SKY)
    image = (zenith * (1 - y) + horizon * y).expand(3, height, width)
    for base, amplitude, colour in RANGES:
        top = base + amplitude * _ridge(width, rng)
        below = (y - top).clamp(min=0)  # darker down the slope
        grain = 0.06 * (torch.rand(height, width, generator=rng) - 0.5)
        rock = torch.tensor(colour)[:, None, None] * (1 - 0.8 * below) + grain
        image = torch.where(y >= top, rock, image)
    return image.clamp(0, 1).unsqueeze(0) * 2 - 1


# Hot-air balloons' colours: saturated, so that each balloon stands out from the sky.
BALLOON_COLOURS = ((0.85, 0.15, 0.12), (0.95, 0.75, 0.10), (0.95, 0.45, 0.08),
                   (0.20, 0.62, 0.25), (0.50, 0.20, 0.65), (0.90, 0.35, 0.60))
BALLOON_SKY = ((0.25, 0.50, 0.88), (0.70, 0.84, 0.95))  # zenith, horizon


def balloons(height: int = 128, width: int = 192, *, count: int = 9, seed: int = 0) -> Tensor:
    """A 1 x 3 x height x width sky with `count` hot-air balloons in [-1, 1]: the paper's first
    example, whose samples move, add and drop balloons. The same for the same arguments."""
    rng = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None, None]
    zenith, horizon = (torch.tensor(c) for c in BALLOON_SKY)
    image = (zenith * (1 - y) + horizon * y).expand(height, width, 3).clone()
    yy, xx = (torch.arange(height) + 0.5)[:, None], (torch.arange(width) + 0.5)[None, :]
    placed: list[tuple[float, float, float]] = []
    for _ in range(50 * count):  # apart from each other: one colour per balloon to learn
        if len(placed) == count:
            break
        radius = min(height, width) * (0.07 + 0.06 * torch.rand(1, generator=rng).item())
        cy = radius + (height - 3.2 * radius) * torch.rand(1, generator=rng).item()
        cx = radius + (width - 2 * radius) * torch.rand(1, generator=rng).item()
        if any(math.hypot(cy - y0, cx - x0) < 1.25 * (radius + r0) for y0, x0, r0 in placed):
            continue
        placed.append((cy, cx, radius))
        colour = torch.tensor(BALLOON_COLOURS[int(torch.randint(len(BALLOON_COLOURS), (1,),
                                                                generator=rng))])
        # The envelope: an ellipse a little taller than wide, lit from the upper left.
        dy, dx = (yy - cy) / (1.15 * radius), (xx - cx) / radius
        inside = dy ** 2 + dx ** 2 <= 1
        light = (1.15 - 0.45 * ((dy + 0.45) ** 2 + (dx + 0.45) ** 2)).clamp(0.45, 1.15)
        envelope = (colour * light[..., None]).clamp(0, 1)
        # The basket below it, on two lines.
        below = (yy - cy - 1.15 * radius).clamp(min=0)
        basket = ((below > 0.45 * radius) & (below <= 0.75 * radius)
                  & ((xx - cx).abs() <= 0.22 * radius))
        ropes = ((below > 0) & (below <= 0.45 * radius)
                 & (((xx - cx).abs() - 0.3 * radius * (1 - below / (0.9 * radius))).abs() < 0.6))
        image[inside] = envelope[inside]
        image[basket | ropes] = torch.tensor((0.30, 0.20, 0.12))
    return image.permute(2, 0, 1).unsqueeze(0).clamp(0, 1) * 2 - 1


def _stones(index: int) -> Tensor:
    # From large stones to small ones, so that the collection is not one image repeated.
    return pebbles(128, 192, cells=30 * 2 ** (index % 3), seed=index)


# What `singan examples --kind K` writes: K's file name and its index-th image.
KINDS: dict[str, tuple[str, Callable[[int], Tensor]]] = {
    "balloons": ("balloons", lambda index: balloons(128, 192, seed=index)),
    "landscapes": ("landscape", lambda index: landscape(128, 192, seed=index)),
    "stones": ("stones", _stones),
}
