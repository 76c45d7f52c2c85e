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
from singan.config import PRESETS, Config, config
from singan.consingan import ConSinGAN, plan_consingan
from singan.errors import InputError
from singan.image import load_image, save_image
from singan.models import SinGAN
from singan.pyramid import plan_pyramid
from singan.quality import nn_patch_distance, patch_swd
from singan.recipe import RECIPES
from singan.resize import imresize
from singan.sifid import sifid

__all__ = [
    "PRESETS", "RECIPES", "Callback", "ConSinGAN", "Config", "Diverged", "InputError",
    "IterationLog",
    "Pyramid", "SinGAN", "config", "imresize", "load", "load_files", "load_image",
    "nn_patch_distance", "patch_swd", "plan", "plan_consingan", "plan_pyramid", "pyramid_shapes",
    "reconstruct", "sample", "save_image", "sifid", "train", "train_many",
]
