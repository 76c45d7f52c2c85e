"""The recipes, registered by name in singan.recipe.RECIPES (what `Config.recipe` names).

Adding a recipe: a module with a `singan.recipe.Recipe` subclass, and one line here.
"""

from singan.consingan import CONSINGAN
from singan.recipe import register
from singan.train import SINGAN

register(SINGAN)  # singan: one GAN per scale (Shaham et al. 2019)
register(CONSINGAN)  # consingan: a growing generator, stages trained together (Hinz et al. 2021)
