"""Harmonization and editing (SINGAN.md section 5, in the project's shared reference folder): a
pasted object, or an edited region, injected at scale n, takes on the training image's look; the
result is blended back into the real image through a dilated, blurred mask.

Harmonization dilates the mask with a disk of radius 7, editing with radius 20; both blur it with
a Gaussian of sigma 5 and normalise it to [0, 1]. Pixels beyond the blurred border keep the real
image exactly. Inputs of another size than the training image are resized to it first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from singan.apps.masks import BLUR_SIGMA, EDITING_RADIUS, HARMONIZATION_RADIUS, blend, prepare_mask
from singan.apps.paint import fit_to, inject, injection
from singan.errors import InputError
from singan.recipes.singan.networks import SinGAN


def blending_mask(model: SinGAN, mask: Tensor, radius: int, sigma: float = BLUR_SIGMA) -> Tensor:
    """A {0, 1} mask (1 x 1 x h x w) at the training image's size, dilated, blurred, in [0, 1]."""
    shape = tuple(model.reals[-1].shape[-2:])
    mask = mask.to(model.reals[-1])
    if tuple(mask.shape[-2:]) != shape:
        mask = (fit_to(mask, shape) > 0.5).to(mask.dtype)  # binary again after the resize
        if not mask.any():
            raise InputError("the mask has no pixel left after resizing it to the training "
                             f"image's {shape[0]}x{shape[1]}")
    return prepare_mask(mask, radius, sigma)


@torch.no_grad()
def harmonize(model: SinGAN, naive: Tensor, mask: Tensor, start_scale: int, num: int = 1, *,
              radius: int = HARMONIZATION_RADIUS, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor]:
    """(blended, unblended) results for a naive paste `naive` whose object is `mask`.

    Both are num x 3 x H x W in [-1, 1] at the training image's size; `blended` equals the real
    image wherever the prepared mask is 0.
    """
    out = inject(model, injection(model, naive, start_scale), start_scale, num,
                 generator=generator)
    return blend(out, model.reals[-1], blending_mask(model, mask, radius)), out


def edit(model: SinGAN, edited: Tensor, mask: Tensor, start_scale: int, num: int = 1, *,
         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(masked, unmasked) results of an edit: harmonization with the editing radius (20)."""
    return harmonize(model, edited, mask, start_scale, num, radius=EDITING_RADIUS,
                     generator=generator)
