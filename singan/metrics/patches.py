"""Weight-free quality metrics on patches: they need no Inception weights, run on any machine,
and see the fine texture that SIFID's 64 features barely do.

- `patch_swd`: the sliced Wasserstein distance between the k x k patches of two images, in
  [0, 1] pixel units: how far the fake's patch distribution is from the real one's.
- `nn_patch_distance`: for each patch of the fake, the distance to the nearest patch of the real
  image, averaged (RMS per pixel value, [0, 1] units): near 0 means the fake copies the real
  image; larger means it invents. Read it beside `patch_swd`.

Images are tensors in [-1, 1] (singan's convention), measured in [0, 1] units. Patch positions
are subsampled with a seeded generator, so both metrics are deterministic and their memory
stays bounded for megapixel images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from singan.errors import InputError

MAX_PATCHES = 65536  # patches drawn per image for the SWD (38 MB at 7x7x3 in float32)
NN_QUERIES = 1024  # fake patches whose nearest real patch is searched
NN_CHUNK = 4096  # real patches compared at once (bounds the distance matrix)


def _check(name: str, x: Tensor, patch: int) -> Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise InputError(f"{name} must be 1 x 3 x H x W (or 3 x H x W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < patch:
        raise InputError(f"{name} ({x.shape[-2]}x{x.shape[-1]}) is smaller than the {patch}x{patch} "
                         "patches")
    return (x.float().clamp(-1, 1) + 1) / 2


def _positions(x: Tensor, patch: int) -> int:
    return (x.shape[-2] - patch + 1) * (x.shape[-1] - patch + 1)


def _gather(x: Tensor, patch: int, index: Tensor) -> Tensor:
    """Patches (len(index) x 3*patch*patch) at flat top-left positions `index`."""
    width = x.shape[-1] - patch + 1
    top, left = index // width, index % width
    offsets = torch.arange(patch, device=x.device)
    rows = (top[:, None] + offsets)[:, :, None]  # n x p x 1
    cols = (left[:, None] + offsets)[:, None, :]  # n x 1 x p
    return x[0][:, rows, cols].permute(1, 0, 2, 3).reshape(len(index), -1)


def _draw(count: int, n: int, generator: torch.Generator) -> Tensor:
    """n distinct positions out of count (all of them when n == count), seeded."""
    return torch.randperm(count, generator=generator, device=generator.device)[:n]


def patch_swd(real: Tensor, fake: Tensor, *, patch: int = 7, projections: int = 256,
              seed: int = 0, levels: int = 1) -> float:
    """Sliced Wasserstein distance between the patch sets of `real` and `fake` ([0, 1] units).

    Each k x k x 3 patch is a vector; both sets are projected on `projections` random unit
    directions, sorted, and compared (mean absolute difference of the sorted projections, the
    1-Wasserstein distance of each slice, averaged). The larger set is subsampled to the smaller
    one's size (and both to at most MAX_PATCHES) with a generator seeded by `seed`. With
    `levels` > 1 the distance is averaged over that many levels of a 2x image pyramid.
    """
    real, fake = _check("real", real, patch), _check("fake", fake, patch)
    if projections < 1 or levels < 1:
        raise InputError("projections and levels must be at least 1")
    generator = torch.Generator(device=real.device).manual_seed(seed)
    total = 0.0
    for level in range(levels):
        if level:
            real, fake = F.avg_pool2d(real, 2), F.avg_pool2d(fake, 2)
            if min(*real.shape[-2:], *fake.shape[-2:]) < patch:
                raise InputError(f"levels={levels}: level {level} is smaller than the patches")
        n = min(_positions(real, patch), _positions(fake, patch), MAX_PATCHES)
        a = _gather(real, patch, _draw(_positions(real, patch), n, generator))
        b = _gather(fake, patch, _draw(_positions(fake, patch), n, generator))
        directions = torch.randn(a.shape[1], projections, generator=generator, device=a.device)
        directions /= directions.norm(dim=0, keepdim=True)
        pa, _ = (a @ directions).sort(dim=0)
        pb, _ = (b @ directions).sort(dim=0)
        total += float((pa - pb).abs().mean())
    return total / levels


def nn_patch_distance(real: Tensor, fake: Tensor, *, patch: int = 7, seed: int = 0) -> float:
    """Mean over fake patches of the distance to the nearest real patch, as RMS per pixel value
    ([0, 1] units). Up to NN_QUERIES fake patches (seeded) are searched against every real
    patch, NN_CHUNK real patches at a time."""
    real, fake = _check("real", real, patch), _check("fake", fake, patch)
    generator = torch.Generator(device=real.device).manual_seed(seed)
    count = _positions(fake, patch)
    queries = _gather(fake, patch, _draw(count, min(count, NN_QUERIES), generator))
    best = torch.full((len(queries),), float("inf"), device=real.device)
    positions = _positions(real, patch)
    for first in range(0, positions, NN_CHUNK):
        index = torch.arange(first, min(first + NN_CHUNK, positions), device=real.device)
        candidates = _gather(real, patch, index)
        # The fast matrix-product distances find the nearest patch; the distance to it is then
        # computed directly, so that a copied patch gives exactly 0.
        nearest = torch.cdist(queries, candidates).argmin(dim=1)
        best = torch.minimum(best, (queries - candidates[nearest]).norm(dim=1))
    return float((best / queries.shape[1] ** 0.5).mean())
