"""What a recipe is, and the registry of recipes by name (`Config.recipe`).

A recipe is one way of learning a pyramid from an image: SinGAN's one GAN per scale
(singan.train), ConSinGAN's growing generator (singan.consingan). The public functions
(singan.api: plan, pyramid_shapes, train, sample, reconstruct, load) and `Config`'s checks look
a recipe up here, once; nothing else tells recipes apart. singan/recipes.py registers them.
Adding one: a module with a `Recipe` subclass, and one line in singan/recipes.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from singan.errors import InputError

if TYPE_CHECKING:  # annotations only: the modules below import this one
    import torch
    from torch import Tensor

    from singan.base import Callback, Pyramid
    from singan.config import Config
    from singan.pyramid import PyramidPlan


class Recipe:
    """The interface every recipe implements. "Level": a scale of SinGAN, a stage of ConSinGAN."""

    name: str = ""
    # Config fields that singan.config(recipe=name) starts from, before a preset and overrides.
    defaults: Mapping[str, Any] = {}
    # Whether several images of one plan train together in one set of kernels (train_many).
    batches: bool = False
    # Where the learning rate drops when a user sets niter and not lr_milestone, as a fraction
    # of niter, as the recipe's reference code computes it; None: the milestone stays where
    # `defaults` put it (the official SinGAN code drops at iteration 1600 whatever niter is).
    lr_drop_at: float | None = None

    def config_problems(self, config: Config) -> list[str]:
        """What in `config` this recipe cannot train with (Config refuses it with these)."""
        return []

    def plan(self, height: int, width: int, config: Config) -> PyramidPlan:
        """The levels' sizes for a `height` x `width` image."""
        raise NotImplementedError

    def critic_patch(self, config: Config) -> int:
        """The side, in pixels, of the patch the critic scores (its receptive field)."""
        raise NotImplementedError

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

    def build_pyramid(self, image: Tensor, plan: PyramidPlan) -> list[Tensor]:
        """The image resized to every level of `plan`, coarsest first."""
        raise NotImplementedError

    def new_model(self, config: Config, plan: PyramidPlan, seed: int) -> Pyramid:
        """A model with no finished level."""
        raise NotImplementedError

    def check_resumable(self, model: Pyramid) -> None:
        """Raise InputError when `model` cannot go on training (beyond the shared checks)."""

    def train_level(self, models: Sequence[Pyramid], level: int, reals: Sequence[Tensor],
                    callbacks: Sequence[Sequence[Callback]]) -> None:
        """Train level `level` of each model against its real image and append it (one model
        unless the recipe `batches`); a model whose losses become non-finite gets `failure`
        instead. `callbacks`: one sequence per model."""
        raise NotImplementedError

    def sample(self, model: Pyramid, num: int, *, start_scale: int, scale_h: float,
               scale_v: float, generator: torch.Generator | None) -> Tensor:
        """Random samples (the arguments are checked by singan.sample)."""
        raise NotImplementedError

    def reconstruct(self, model: Pyramid) -> Tensor:
        """The reconstruction of the training image."""
        raise NotImplementedError

    def from_files(self, config: Config, plan: PyramidPlan, seed: int,
                   level_files: list[IO[bytes]], *, name: str) -> Pyramid:
        """A model from its stored level files (on the CPU)."""
        raise NotImplementedError


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add `recipe` to the registry under its name."""
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


def recipe_named(name: str) -> Recipe:
    """The registered recipe called `name`; InputError naming the choices otherwise."""
    try:
        return RECIPES[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None
