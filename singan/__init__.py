"""singan: SinGAN (Shaham, Dekel, Michaeli, ICCV 2019) in modern, pure PyTorch.

The stable public API:

    cfg = singan.config("paper", max_size=200)       # frozen Config, reference defaults
    image = singan.load_image("photo.jpg")           # 1 x 3 x H x W in [-1, 1]
    singan.pyramid_shapes(375, 500, cfg)             # [(h, w), ...] coarsest first
    model = singan.train(image, cfg, seed=0)         # -> SinGAN
    cfg = singan.config("paper", recipe="consingan")  # ConSinGAN: train -> ConSinGAN
    model.save("out/model"); model = singan.load("out/model")
    x = singan.sample(model, 4, scale_h=1.5)         # 4 x 3 x H x W in [-1, 1]
    singan.save_image(x[0], "sample.png")
    singan.sifid(image, x[:1])                       # SIFID (Inception-v3 weights needed)
    singan.patch_swd(image, x[:1])                   # patch distribution distance (no weights)

Where things live: docs/architecture.md.
"""

from singan.api import (
    config,
    load,
    load_files,
    plan,
    pyramid_shapes,
    reconstruct,
    sample,
    train,
    train_many,
)
from singan.base import Callback, Diverged, IterationLog, Pyramid
from singan.data.image import load_image, save_image
from singan.errors import InputError
from singan.metrics.patches import nn_patch_distance, patch_swd
from singan.metrics.sifid import sifid
from singan.recipes import RECIPES
from singan.recipes.consingan.levels import plan_consingan
from singan.recipes.consingan.networks import ConSinGAN
from singan.recipes.singan.levels import plan_pyramid
from singan.recipes.singan.networks import SinGAN
from singan.resize import imresize
from singan.settings import PRESETS, Config

__all__ = [
    "PRESETS", "RECIPES", "Callback", "ConSinGAN", "Config", "Diverged", "InputError",
    "IterationLog",
    "Pyramid", "SinGAN", "config", "imresize", "load", "load_files", "load_image",
    "nn_patch_distance", "patch_swd", "plan", "plan_consingan", "plan_pyramid", "pyramid_shapes",
    "reconstruct", "sample", "save_image", "sifid", "train", "train_many",
]
