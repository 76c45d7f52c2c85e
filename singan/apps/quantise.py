"""Colour quantisation for paint-to-image, in torch.

The reference SinGAN quantises the real image to a few colours with k-means (k = 5) and maps
the user's painting onto those same centres, so that the painting's flat colours are exactly
colours the model learnt at its coarsest scale. `kmeans` is plain k-means++ then Lloyd
iterations, seeded through a torch.Generator so a run can be repeated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from singan.errors import InputError

PAINT_CLUSTERS = 5  # the reference's number of colours for paint-to-image


def kmeans(
    pixels: Tensor,
    k: int = PAINT_CLUSTERS,
    iterations: int = 20,
    generator: torch.Generator | None = None,
) -> Tensor:
    """k-means centres (k x C) of N x C points.

    Centres start by k-means++ (the first uniformly at random, each next one drawn with
    probability proportional to its squared distance to the nearest centre so far), drawn
    with `generator` (torch's default generator when None), so a seeded generator gives the
    same centres every run. Then up to `iterations` Lloyd steps, stopping early once no point
    changes cluster; a cluster that loses all its points keeps its previous centre.

    Raises `InputError` when there are fewer points than clusters. Repeated points are fine,
    though with fewer distinct points than k some centres will coincide.
    """
    if pixels.dim() != 2:
        raise ValueError(f"kmeans expects N x C points, got shape {tuple(pixels.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"the number of colour clusters must be a whole number >= 1, got {k!r}")
    if iterations < 0:
        raise InputError(f"the number of k-means iterations must be >= 0, got {iterations!r}")
    n = pixels.shape[0]
    if n < k:
        raise InputError(f"cannot find {k} colour clusters among only {n} pixels")

    points = pixels.float()
    centers = _kmeans_plus_plus(points, k, generator)
    assign = _nearest(points, centers)
    for _ in range(iterations):
        sums = torch.zeros_like(centers).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
        new_assign = _nearest(points, centers)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centers


def image_centers(
    image: Tensor, k: int = PAINT_CLUSTERS, generator: torch.Generator | None = None
) -> Tensor:
    """k-means colour centres (k x C) of a 1 x C x H x W image's pixels."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image_centers expects 1 x C x H x W, got shape {tuple(image.shape)}")
    pixels = image[0].reshape(image.shape[1], -1).T
    return kmeans(pixels, k, generator=generator)


def quantise(image: Tensor, centers: Tensor) -> Tensor:
    """`image` (N x C x H x W) with every pixel replaced by its nearest centre (k x C)."""
    if image.dim() != 4 or centers.dim() != 2 or centers.shape[1] != image.shape[1]:
        raise ValueError(
            f"quantise expects N x C x H x W and k x C, got {tuple(image.shape)} "
            f"and {tuple(centers.shape)}"
        )
    n, c, h, w = image.shape
    pixels = image.permute(0, 2, 3, 1).reshape(-1, c)
    centers = centers.to(device=image.device, dtype=image.dtype)
    out = centers[_nearest(pixels, centers)]
    return out.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """k initial centres by k-means++ seeding."""
    n = points.shape[0]
    # Random draws happen where the generator lives (CPU by default), whatever the points'
    # device, so a seed gives the same centres on CPU and GPU.
    draw_device = generator.device if generator is not None else torch.device("cpu")
    first = int(torch.randint(n, (1,), generator=generator, device=draw_device))
    chosen = [first]
    closest = _squared_distances(points, points[first : first + 1])[:, 0]
    for _ in range(1, k):
        weights = closest.to(draw_device, torch.float64)
        if weights.sum() > 0:
            index = int(torch.multinomial(weights, 1, generator=generator))
        else:
            # Every point already sits on a centre (fewer distinct points than k): any will do.
            index = int(torch.randint(n, (1,), generator=generator, device=draw_device))
        chosen.append(index)
        distances = _squared_distances(points, points[index : index + 1])[:, 0]
        closest = torch.minimum(closest, distances)
    return points[chosen].clone()


def _squared_distances(points: Tensor, centers: Tensor) -> Tensor:
    """N x k squared Euclidean distances."""
    # The direct difference, not |a|^2 - 2ab + |b|^2: exact zeros for equal points and never
    # negative, which k-means++ weights need. N x k x C memory is small for k this small.
    return ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)


def _nearest(points: Tensor, centers: Tensor) -> Tensor:
    """Index of each point's nearest centre (the first one on ties)."""
    return _squared_distances(points, centers).argmin(dim=1)
