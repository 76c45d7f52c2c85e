"""What a recipe is: one way of learning a pyramid from an image, as a frozen dataclass of the
functions that do it. "Level": a scale of SinGAN, a stage of ConSinGAN.

The public functions (singan.api: plan, train, sample, reconstruct, load) and `Config`'s checks
look a recipe up by name in singan.recipes.RECIPES, once; nothing else tells recipes apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the recipes' modules import this one
    from torch import Tensor

    from singan.base import Callback, Pyramid
    from singan.plans import PyramidPlan
    from singan.settings import Config


def _no_problems(config: Config) -> list[str]:
    return []


def _always_resumable(model: Pyramid) -> None:
    return None


@dataclass(frozen=True)
class Recipe:
    """A recipe's name, defaults and functions."""

    name: str
    # The levels' sizes for a height x width image.
    plan: Callable[[int, int, Config], PyramidPlan]
    # The image (N x C x H x W) resized to every level of a plan, coarsest first.
    build_reals: Callable[[Tensor, PyramidPlan], list[Tensor]]
    # A model with no finished level: (config, plan, seed).
    new_model: Callable[[Config, PyramidPlan, int], Pyramid]
    # Train level `level` of each model against its real image and append it (one model unless
    # the recipe `batches`); a model whose losses become non-finite gets `failure` instead.
    # (models, level, reals, callbacks: one sequence per model).
    train_level: Callable[[Sequence[Pyramid], int, Sequence[Tensor],
                           Sequence[Sequence[Callback]]], None]
    # Random samples: (model, num, *, start_scale, scale_h, scale_v, generator), the arguments
    # checked by singan.sample.
    sample: Callable[..., Tensor]
    # The reconstruction of the training image.
    reconstruct: Callable[[Pyramid], Tensor]
    # A model from its stored level files, on the CPU: (config, plan, seed, level_files, *, name).
    load: Callable[..., Pyramid]
    # The side, in pixels, of the patch the critic scores (its receptive field).
    critic_patch: Callable[[Config], int]
    # Config fields that singan.config(recipe=name) starts from, before a preset and overrides.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Whether several images of one plan train together in one set of kernels (train_many).
    batches: bool = False
    # Where the learning rate drops when a user sets niter and not lr_milestone, as a fraction
    # of niter, as the recipe's reference code computes it; None: the milestone stays where
    # `defaults` put it (the official SinGAN code drops at iteration 1600 whatever niter is).
    lr_drop_at: float | None = None
    # What in a config this recipe cannot train with (Config refuses it with these).
    config_problems: Callable[[Config], list[str]] = _no_problems
    # Raise InputError when a model cannot go on training (beyond the shared checks).
    check_resumable: Callable[[Pyramid], None] = _always_resumable

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def critic_problem(self, config: Config) -> str | None:
        """Why the critic could not judge the coarsest scale, or None (Config refuses it).

        The WGAN-GP critic convolves without padding (zero padding, the reference's), each
        convolution taking kernel_size - 1 pixels off, and the coarsest scale's short side is
        min_size (or one more, by rounding): below the critic's patch it leaves the critic no
        pixel, and its BatchNorm one value per channel, which PyTorch refuses only once training
        reaches that scale. Patch losses have no critic; circular and reflect padding give the
        critic the generator's border, so it keeps the input's size.
        """
        if config.loss != "wgan_gp" or config.padding != "zero":
            return None
        patch = self.critic_patch(config)
        if config.min_size >= patch:
            return None
        return (f"min_size ({config.min_size}) is below the {patch}x{patch} px the critic scores "
                f"(num_layer {config.num_layer}, kernel_size {config.kernel_size}): the coarsest "
                f"scale would leave it nothing to judge; raise min_size to at least {patch}")


# Filled by each recipe's package as it is defined (register); singan.recipes imports them all
# before anyone can look one up.
REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add `recipe` to the registry under its name."""
    if recipe.name in REGISTRY:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    REGISTRY[recipe.name] = recipe
    return recipe

