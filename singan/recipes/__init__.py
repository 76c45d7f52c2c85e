"""The recipes, by name (what `Config.recipe` names): each is a folder here whose package
defines and registers its `Recipe` (spec.py). Importing this package imports every recipe, so
a lookup never depends on which module someone imported first.

Adding a recipe: a folder with its plan, networks, training and sampling, a `Recipe` registered
in its __init__.py, and its name in the import below.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from singan.errors import InputError
from singan.recipes import consingan, singan  # noqa: F401 - each registers its recipe
from singan.recipes.spec import REGISTRY, Recipe, register

if TYPE_CHECKING:
    from singan.settings import Config

# A read-only view of the registry: recipes enter through `register`.
RECIPES = MappingProxyType(REGISTRY)


def recipe_named(name: str) -> Recipe:
    """The registered recipe called `name`; InputError naming the choices otherwise."""
    try:
        return RECIPES[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}") from None


def check(config: Config) -> Recipe:
    """The recipe of `config`, once it is known to train these settings: InputError naming every
    problem otherwise (an unknown recipe, what the recipe does not implement, a critic left
    nothing to judge). singan.config, plan and train check through here."""
    if config.recipe not in RECIPES:
        raise InputError(f"invalid config: recipe must be one of {', '.join(sorted(RECIPES))}, got "
                         f"{config.recipe!r}")
    recipe = RECIPES[config.recipe]
    problems = recipe.config_problems(config)
    if not problems:  # the critic's patch is only defined for otherwise valid settings
        problems = list(filter(None, [recipe.critic_problem(config)]))
    if problems:
        raise InputError("invalid config: " + "; ".join(problems))
    return recipe


__all__ = ["RECIPES", "Recipe", "check", "recipe_named", "register"]
