"""Masks for harmonization and editing: dilate, blur and blend, as the reference SinGAN does.

The reference pastes the generated image into the real one through a soft mask: the user's
binary mask is dilated with a disk (radius 7 for harmonization, 20 for editing), blurred with a
Gaussian of sigma 5 and min-max normalised to [0, 1], so the generated region fades into the
real image over a few pixels instead of showing a hard seam. Masks here are 1 x 1 x H x W
float tensors; everything runs in torch on the mask's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from singan.errors import InputError

HARMONIZATION_RADIUS = 7  # the reference's disk radius for harmonization
EDITING_RADIUS = 20  # the reference's disk radius for editing
BLUR_SIGMA = 5.0  # the reference's Gaussian sigma for both


def disk(radius: int, *, device: torch.device | str | None = None) -> Tensor:
    """The (2r+1) x (2r+1) float32 disk of scikit-image's `morphology.disk(r)`.

    Offset (i, j) from the centre is in the disk when i^2 + j^2 <= r^2.
    """
    _check_radius(radius)
    offsets = torch.arange(-radius, radius + 1, device=device)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).float()


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of an N x C x H x W {0, 1} mask by a disk of `radius`.

    A pixel is 1 when some 1 lies within the disk around it (beyond the border counts as 0).
    Returns float32 0s and 1s (the mask's dtype when it is floating point).
    """
    _check_4d(mask, "dilate")
    _check_radius(radius)
    n, c, h, w = mask.shape
    dtype = mask.dtype if mask.is_floating_point() else torch.float32
    # One channel per conv: fold channels into the batch so one kernel serves them all.
    x = (mask.reshape(n * c, 1, h, w) > 0).float()
    kernel = disk(radius, device=mask.device)[None, None]
    # The disk is symmetric, so conv2d's cross-correlation is the same as a convolution; a sum
    # of 0/1 products is an exact small integer in float32, so "> 0" is exact.
    hits = F.conv2d(x, kernel, padding=radius)
    return (hits > 0).to(dtype).reshape(n, c, h, w)


def gaussian_kernel(
    sigma: float,
    truncate: float = 4.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The normalised 1-D Gaussian weights scipy.ndimage uses: radius int(truncate*sigma+0.5)."""
    _check_sigma(sigma)
    if not truncate >= 0:
        raise InputError(f"the blur truncation must be >= 0, got {truncate!r}")
    radius = int(truncate * sigma + 0.5)
    if sigma == 0 or radius == 0:
        return torch.ones(1, dtype=dtype, device=device)
    # Computed in float64 like scipy, then rounded once to the working precision.
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of an N x C x H x W tensor, each channel on its own.

    Matches scipy.ndimage.gaussian_filter(x, sigma, mode="nearest", truncate=truncate) (and
    hence skimage.filters.gaussian's defaults) over H and W: kernel radius
    int(truncate * sigma + 0.5), weights summing to 1, borders extended by their edge value.
    sigma 0 returns the input unchanged.
    """
    _check_4d(x, "gaussian_blur")
    weights = gaussian_kernel(sigma, truncate, dtype=x.dtype, device=x.device)
    radius = weights.numel() // 2
    if radius == 0:
        return x.clone()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    # "nearest" = replicate padding; torch allows a pad wider than the image in this mode.
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), weights.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), weights.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def prepare_mask(mask: Tensor, radius: int, sigma: float = BLUR_SIGMA) -> Tensor:
    """The reference's blending mask: dilate by a disk of `radius`, blur, scale to [0, 1].

    Pixels farther than radius + int(4 * sigma + 0.5) (in the larger of the row and column
    distances) from every mask pixel are exactly 0. When the dilated mask is constant there is
    nothing to blend across and it is returned as is: all ones for a mask that covers the
    image, all zeros for an empty one (so `blend` keeps the real image).
    """
    grown = dilate(mask, radius)
    # Decided before blurring: the blur of a constant is constant only up to rounding, and
    # min-max normalisation would blow that last-bit noise up to the full [0, 1] range.
    if torch.equal(grown.amin(), grown.amax()):
        return grown
    soft = gaussian_blur(grown, sigma)
    low, high = soft.amin(), soft.amax()
    return (soft - low) / (high - low)


def blend(out: Tensor, real: Tensor, mask: Tensor) -> Tensor:
    """`out` where the mask is 1, `real` where it is 0, mixed in between.

    `mask` (1 x 1 x H x W) is broadcast over the images' channels.
    """
    if out.shape[-2:] != real.shape[-2:] or mask.shape[-2:] != out.shape[-2:]:
        raise ValueError(
            f"blend needs images and mask of one size, got {tuple(out.shape)}, "
            f"{tuple(real.shape)} and mask {tuple(mask.shape)}"
        )
    return out * mask + real * (1 - mask)


def _check_4d(x: Tensor, caller: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{caller} expects an N x C x H x W tensor, got shape {tuple(x.shape)}")


def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise InputError(f"the mask dilation radius must be a whole number >= 0, got {radius!r}")


def _check_sigma(sigma: float) -> None:
    if not sigma >= 0:  # also rejects NaN
        raise InputError(f"the blur sigma must be >= 0, got {sigma!r}")
