"""ConSinGAN's training of one stage, with the train_depth - 1 stages below it.

As in SinGAN's training, random numbers come from one torch.Generator per stage seeded from
(seed, stage), so resuming after k finished stages gives the same model as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from singan import streams
from singan.base import Callback, gradient_penalty
from singan.layers import init_weights, trainable
from singan.recipes.consingan.networks import (
    ConSinGAN,
    Discriminator,
    Generator,
    Stage,
    noise_size,
)
from singan.recipes.skeleton import end_level, run_level
from singan.settings import Config
from singan.streams import scale_generator

logger = logging.getLogger(__name__)


def generator_param_groups(generator: Generator, stage: int, config: Config) -> list[dict]:
    """The generator's parameters that stage `stage` trains, as Adam parameter groups; freezes
    the rest.

    The newest min(train_depth, stage + 1) bodies train, at lr_g * lr_scale ** (stages below the
    newest); the head only while stage < train_depth, at the rate of body 0; the tail always,
    at lr_g.
    """
    generator.requires_grad_(False)
    groups = [{"params": trainable(generator.body[k]),
               "lr": config.lr_g * config.lr_scale ** (stage - k)}
              for k in range(max(0, stage - config.train_depth + 1), stage + 1)]
    if stage < config.train_depth:
        groups.append({"params": trainable(generator.head),
                       "lr": config.lr_g * config.lr_scale ** stage})
    groups.append({"params": trainable(generator.tail), "lr": config.lr_g})
    return groups


def train_stage(model: ConSinGAN, stage: int, real: Tensor,
                callbacks: Sequence[Callback] = ()) -> None:
    """Add stage `stage` to the generator and train it against `real`, together with the
    train_depth - 1 stages below it; append the finished stage to `model.scales`."""
    config, device, dtype, generator = model.config, real.device, real.dtype, model.generator
    rng = scale_generator(model.seed, stage, device)
    shapes = list(model.plan.shapes[: stage + 1])

    # 1. Networks: the generator grows by a copy of its last body; the critic starts from the
    #    previous stage's trained one. Stage 0 initialises both.
    generator.add_stage()
    if stage == 0:
        init_weights(generator, config.init_std, rng)
        critic = Discriminator(config).to(device=device, dtype=dtype)
        init_weights(critic, config.init_std, rng)
    else:
        critic = copy.deepcopy(model.scales[stage - 1].discriminator)
    generator.train()
    critic.train()

    # 2. Reconstruction: fixed inputs for every stage (the coarsest real at stage 0, fixed noise
    #    above). The noise amplitude is noise_amp * RMSE of the reconstruction through the grown
    #    generator, the new stage adding no noise yet.
    z_recs = [level.z_rec for level in model.scales]
    amps = [level.noise_amp for level in model.scales]
    if stage == 0:
        z_rec = real.clone()
        noise_amp = torch.ones((), device=device, dtype=dtype)
    else:
        z_rec = streams.normal((1, *noise_size(config, stage, shapes[stage])), generator=rng,
                               device=device, dtype=dtype)
        with torch.no_grad():
            rec = generator([*z_recs, z_rec], shapes,
                            [*amps, torch.zeros((), device=device, dtype=dtype)])
        noise_amp = config.noise_amp * torch.sqrt(F.mse_loss(rec, real))
    z_recs.append(z_rec)
    amps.append(noise_amp)
    amp = float(noise_amp)  # one host sync per stage, for the log and the callbacks
    logger.info("stage %d/%d: %dx%d, noise amplitude %.4f", stage + 1, model.num_scales,
                *shapes[stage], amp)

    # 3. Optimisers: the concurrently trained stages at decaying rates (generator_param_groups);
    #    one learning-rate drop at lr_milestone.
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator_param_groups(generator, stage, config), lr=config.lr_g,
                             betas=betas, foreach=True)
    opt_d = torch.optim.Adam(trainable(critic), lr=config.lr_d, betas=betas, foreach=True)
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(opt, [config.lr_milestone], config.gamma)
                  for opt in (opt_g, opt_d)]

    def step(iteration: int) -> tuple[Tensor, ...]:
        noises = [streams.normal((1, *noise_size(config, k, shape)), generator=rng, device=device,
                                 dtype=dtype) for k, shape in enumerate(shapes)]

        # 4. Critic steps (WGAN-GP), all on the same noise. Only the last step's fake keeps its
        #    graph: the generator loss reuses it.
        for d_step in range(config.d_steps):
            with torch.set_grad_enabled(d_step == config.d_steps - 1):
                fake = generator(noises, shapes, amps)
            d_real = -critic(real).mean()
            d_fake = critic(fake.detach()).mean()
            e = streams.uniform((), generator=rng, device=device, dtype=dtype)
            penalty = config.lambda_grad * gradient_penalty(critic, real, fake.detach(), e)[0]
            opt_d.zero_grad(set_to_none=True)
            (d_real + d_fake + penalty).backward()
            opt_d.step()

        # 5. Generator: one backward of the adversarial loss (on the last critic step's fake,
        #    judged by the updated critic) plus the reconstruction loss, then g_steps optimizer
        #    steps on that one gradient. ConSinGAN's quirk, kept: its defaults were tuned with it
        #    (Adam's moments make the repeated steps differ, not simply a larger step).
        critic.requires_grad_(False)
        g_adv = -critic(fake).mean()
        reconstruction = config.alpha * F.mse_loss(generator(z_recs, shapes, amps), real)
        opt_g.zero_grad(set_to_none=True)
        (g_adv + reconstruction).backward()
        for _ in range(config.g_steps):
            opt_g.step()
        trainable(critic)  # the critic trains again (its redundant biases stay frozen)
        for scheduler in schedulers:
            scheduler.step()
        return d_real, d_fake, penalty, g_adv, reconstruction

    # 6. The iterations, reported every log_every (skeleton.run_level). Losses that are not
    #    finite end the stage: the stages below it trained with it, so the model in memory is
    #    spent, and its stored files are the resume point.
    failed = run_level([model], stage, [amp], [callbacks], config, step, unit="stage")

    # 7. Freeze (eval mode: BatchNorm, when on, uses its running statistics from now on).
    def freeze(index: int) -> None:
        generator.eval().requires_grad_(False)
        model.scales.append(Stage(critic.eval().requires_grad_(False), real, z_rec, noise_amp))

    end_level([model], stage, failed, [callbacks], freeze)


def train_level(models: Sequence[ConSinGAN], level: int, reals: Sequence[Tensor],
                callbacks: Sequence[Sequence[Callback]]) -> None:
    """Recipe.train_level: one image at a time (ConSinGAN does not batch)."""
    (model,), (real,) = models, reals
    train_stage(model, level, real, callbacks[0] if callbacks else ())
