"""SinGAN (Shaham, Dekel, Michaeli, ICCV 2019), the paper's recipe: one GAN per scale, trained
one scale at a time, coarse to fine; K images of one plan train together.

    levels.py    how many scales, their sizes, and the image resized to each
    networks.py  the generator, the critic, a trained scale, the model (SinGAN)
    adversary.py what scores the generator: the WGAN-GP critic, or a patch loss in its place
    training.py  one scale's training
    sampling.py  generation through the scales: samples and the reconstruction
"""

from __future__ import annotations

from singan.recipes.singan.levels import build_reals, plan_pyramid
from singan.recipes.singan.networks import SinGAN
from singan.recipes.singan.sampling import reconstruct_scales, sample_scales
from singan.recipes.singan.training import train_scale
from singan.recipes.spec import Recipe, register
from singan.settings import Config


def config_problems(config: Config) -> list[str]:
    if not config.batch_norm:
        return ["batch_norm=False needs recipe='consingan' (SinGAN always has BatchNorm)"]
    return []


def critic_patch(config: Config) -> int:
    return config.num_layer * (config.kernel_size - 1) + 1  # head, body, tail: num_layer convs


SINGAN = register(Recipe(
    name="singan", plan=plan_pyramid, build_reals=build_reals, new_model=SinGAN,
    train_level=train_scale, sample=sample_scales, reconstruct=reconstruct_scales,
    load=SinGAN.from_files, critic_patch=critic_patch, batches=True,
    config_problems=config_problems))
