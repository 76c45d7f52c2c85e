"""ConSinGAN (Hinz, Fisher, Wang, Wermter, WACV 2021): one growing generator whose newest
stages train concurrently (the algorithm's numbers: SINGAN.md section 7, in the project's shared
reference folder).

    levels.py    its pyramid: a fixed number of stages, more of them at low resolution
    networks.py  the growing generator, the critic, a trained stage, the model (ConSinGAN)
    training.py  one stage's training, with the train_depth - 1 stages below it
    sampling.py  the generator fed noise (samples) or the fixed inputs (the reconstruction)
"""

from __future__ import annotations

from singan.errors import InputError
from singan.recipes.consingan.levels import build_reals, plan_consingan
from singan.recipes.consingan.networks import ConSinGAN
from singan.recipes.consingan.sampling import reconstruct_stages, sample_stages
from singan.recipes.consingan.training import train_level
from singan.recipes.spec import Recipe, register
from singan.settings import Config

# The official ConSinGAN code's defaults (generation mode), applied before a preset's and the
# user's overrides.
DEFAULTS = dict(
    num_scales=6, nfc=64, max_nfc=64, num_layer=3, leaky_slope=0.05, batch_norm=False,
    niter=1000, lr_milestone=800, lr_g=5e-4, lr_d=5e-4, beta1=0.5, beta2=0.999, alpha=10.0,
    lambda_grad=0.1, d_steps=3, g_steps=3, noise_amp=0.1, min_size=25, max_size=250)


def config_problems(config: Config) -> list[str]:
    """What ConSinGAN does not implement: the variants that belong to the SinGAN recipe."""
    problems = []
    if config.num_scales is None:
        problems.append("recipe 'consingan' needs num_scales (its number of stages); "
                        "singan.config(recipe='consingan') sets 6")
    unsupported = {"loss": "wgan_gp", "padding": "zero", "noise_padding": False}
    for name, value in unsupported.items():
        if getattr(config, name) != value:
            problems.append(f"recipe 'consingan' supports only {name}={value!r}")
    return problems


def critic_patch(config: Config) -> int:
    return (config.num_layer + 2) * (config.kernel_size - 1) + 1  # head, num_layer, tail


def check_resumable(model: ConSinGAN) -> None:
    if len(model.generator.body) != len(model.scales):
        raise InputError("resume: the model stopped in the middle of a stage; load it from its "
                         "saved files")


CONSINGAN = register(Recipe(
    name="consingan", plan=plan_consingan, build_reals=build_reals, new_model=ConSinGAN,
    train_level=train_level, sample=sample_stages, reconstruct=reconstruct_stages,
    load=ConSinGAN.from_files, critic_patch=critic_patch, defaults=DEFAULTS,
    # Its official code drops the learning rate at 0.8 * niter, for any niter.
    lr_drop_at=0.8, config_problems=config_problems, check_resumable=check_resumable))
