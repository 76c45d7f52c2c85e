"""Paint-to-image (SINGAN.md section 5, in the project's shared reference folder): a rough
colour sketch, injected at scale n, comes out with the training image's textures.

The paint is resized to the training image, shrunk to scale n - 1 and enlarged to scale n (so it
carries no detail the generators of scales n .. N would not add), and stands in for the output
of the scales below n; fresh noise from n on. Optionally scale n is retrained first so that it
maps images of k colours (k-means of the real image at scale n, k = 5) to the real image: then
a paint in flat colours is quantised to the same colours before injection.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from singan.apps.quantise import PAINT_CLUSTERS, image_centers, quantise
from singan.base import Callback, Diverged, Pyramid
from singan.errors import InputError
from singan.recipes.singan.networks import SinGAN
from singan.recipes.singan.sampling import draw_noise, generate, upsample
from singan.recipes.singan.training import train_scale
from singan.resize import imresize


def fit_to(image: Tensor, shape: tuple[int, int]) -> Tensor:
    """`image` resized to `shape` when its size differs (bicubic, as the reference does)."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    return imresize(image, shape=tuple(shape))


def check_singan(model: Pyramid, application: str) -> None:
    """The applications run SinGAN's per-scale generators; ConSinGAN's growing one has none."""
    if not isinstance(model, SinGAN):
        raise InputError(f"{application} needs a model of the singan recipe; this one was "
                         f"trained with recipe {model.config.recipe!r}")


def check_start_scale(model: SinGAN, start_scale: int) -> None:
    """Injection needs a scale below it to stand in for: 1 <= start_scale <= finest."""
    check_singan(model, "injecting an image")
    if not model.is_complete:
        raise InputError(f"the model has {len(model.scales)} of {model.num_scales} scales; "
                         "finish its training first")
    last = model.num_scales - 1
    if not isinstance(start_scale, int) or not 1 <= start_scale <= last:
        raise InputError(f"start scale must be between 1 and {last} (the finest) for this "
                         f"model, got {start_scale!r}")


def injection(model: SinGAN, image: Tensor, start_scale: int) -> Tensor:
    """`image` as scale `start_scale` would receive it from the scales below.

    Resized to the training image, shrunk to scale start_scale - 1, then enlarged by
    1 / scale_factor to scale start_scale, each level straight from the finest as the pyramid
    itself is built.
    """
    check_start_scale(model, start_scale)
    reals = model.reals
    image = fit_to(image.to(reals[-1]), reals[-1].shape[-2:])
    below = imresize(image, shape=tuple(reals[start_scale - 1].shape[-2:]))
    return upsample(below, tuple(reals[start_scale].shape[-2:]), model.scale_factor)


@torch.no_grad()
def inject(model: SinGAN, prev: Tensor, start_scale: int, num: int = 1, *,
           generator: torch.Generator | None = None) -> Tensor:
    """Run scales start_scale .. N from `prev` (an image of scale start_scale's size) with
    fresh noise: num x 3 x H x W in [-1, 1]."""
    noises = [draw_noise(scale, num, tuple(level.z_rec.shape[-2:]), generator=generator,
                         device=prev.device, dtype=prev.dtype)
              for scale, level in enumerate(model.scales) if scale >= start_scale]
    return generate(model, noises, start=start_scale, prev=prev.expand(num, -1, -1, -1)).clamp(-1, 1)


def paint_to_image(model: SinGAN, paint: Tensor, start_scale: int, num: int = 1, *,
                   generator: torch.Generator | None = None,
                   centers: Tensor | None = None) -> Tensor:
    """Images of the training image's size made from `paint` (1 x 3 x h x w in [-1, 1]).

    centers: the colours of a model retrained with `retrain_for_paint`; the paint is quantised
    to them before it is shrunk to scale start_scale (the reference's order).
    """
    if centers is not None:
        paint = quantise(fit_to(paint.to(model.reals[-1]), model.reals[-1].shape[-2:]), centers)
        check_start_scale(model, start_scale)
        prev = imresize(paint, shape=tuple(model.reals[start_scale].shape[-2:]))
    else:
        prev = injection(model, paint, start_scale)
    return inject(model, prev, start_scale, num, generator=generator)


def retrain_for_paint(model: SinGAN, start_scale: int, colours: int = PAINT_CLUSTERS, *,
                      callbacks: Sequence[Callback] = ()) -> tuple[SinGAN, Tensor]:
    """A copy of `model` whose scale `start_scale` learnt to turn k-colour images into the real.

    The k colours are the k-means centres of the real image at that scale. While the scale
    retrains, the random images coming from the scales below are quantised to those colours (the
    reconstruction path is left as it is). Returns the new model and the centres (k x 3).
    """
    check_start_scale(model, start_scale)
    rng = torch.Generator(device=model.device).manual_seed(model.seed + start_scale)
    centers = image_centers(model.reals[start_scale], colours, generator=rng)
    partial = SinGAN(model.config, model.plan, model.seed)
    partial.scales = nn.ModuleList(list(model.scales)[:start_scale])
    train_scale([partial], start_scale, [model.reals[start_scale]], [callbacks],
                prev_map=lambda prev: quantise(prev, centers))
    if partial.failure is not None:
        raise Diverged(f"retraining scale {start_scale} for paint: {partial.failure}")
    # A new module sharing the untouched scales: `model` itself stays as it was.
    retrained = SinGAN(model.config, model.plan, model.seed)
    retrained.scales = nn.ModuleList([*partial.scales, *list(model.scales)[start_scale + 1:]])
    return retrained, centers
