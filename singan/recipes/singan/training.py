"""SinGAN's training of one scale (`train_scale`), the earlier scales frozen (SINGAN.md section
4, in the project's shared reference folder); singan.train_many runs the scales coarse to fine,
and the outline every level shares (callbacks, reports, divergence, freezing) is
singan.recipes.skeleton's.

Decisions where the reference and the paper differ:
- z* (the coarsest reconstruction noise) is redrawn every iteration and the last draw stored,
  as the reference does (its figures came from that; bench/fidelity.py measured our samples
  closer to the photo with it); `Config.z_star = "fixed"` gives the paper's text, drawn once.
- The generator steps recompute `fake` with the current weights for each step; the reference
  reuses the graph of the last discriminator step, which modern PyTorch rejects.
- Every resize and random draw happens on the training device; the reference round-trips
  through uint8 numpy arrays on the CPU.
- Random numbers come from one torch.Generator per scale, seeded from (seed, scale), so that
  resuming from k finished scales gives the same model as an uninterrupted run.
- The conv biases that BatchNorm cancels are not trained (singan.layers.trainable).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from singan.base import Callback, per_channel, per_image_mean
from singan.layers import init_weights, stack, trainable, unstack
from singan.recipes.singan.adversary import ADVERSARIES
from singan.recipes.singan.networks import Generator, Scale, SinGAN, noise_shape, pad, padded_noise
from singan.recipes.singan.sampling import (
    chain,
    draw_noise,
    upsample,
)
from singan.recipes.skeleton import end_level, run_level
from singan.streams import scale_generator

logger = logging.getLogger(__name__)


def train_scale(models: Sequence[SinGAN], scale: int, reals: Sequence[Tensor],
                callbacks: Sequence[Sequence[Callback]] = (), *,
                prev_map: Callable[[Tensor], Tensor] | None = None) -> None:
    """Train scale `scale` of K models together, each against its real image (all of one size)
    with its scales 0 .. scale - 1 frozen, and append it to each model.

    The K images train in one set of kernels: their networks side by side in grouped
    convolutions, their images stacked along the channels (layers.stack); each keeps its own
    weights, BatchNorm statistics, Adam state, noise amplitude, z* and random stream, so its
    result is the one it gets alone. An image whose losses become non-finite stops: its model
    gets `failure` and not this scale, and the others go on unchanged.

    callbacks: one sequence per image (or none at all).
    prev_map: applied to every random `prev` (paint-to-image retrains a scale on images
      quantised to a few colours); the reconstruction path is left as it is.
    """
    images, config = len(models), models[0].config
    callbacks = list(callbacks) or [()] * images
    device, dtype = reals[0].device, reals[0].dtype
    rngs = [scale_generator(model.seed, scale, device) for model in models]
    real = torch.cat(list(reals), dim=1)  # the K images stacked along the channels
    shape = tuple(real.shape[-2:])

    # 1. Networks: start from the previous scale's G (and critic) when the width is unchanged
    #    (warm start). The adversary (Config.loss) is the critic or a patch loss in its place.
    channels = config.channels(scale)
    warm = ([model.scales[scale - 1] for model in models]
            if scale > 0 and config.channels(scale - 1) == channels else None)
    if warm is not None:
        singles = [copy.deepcopy(level.generator) for level in warm]
    else:
        singles = [Generator(channels, config).to(device=device, dtype=dtype) for _ in rngs]
        for single, rng in zip(singles, rngs):
            init_weights(single, config.init_std, rng)
    generator = stack(singles, Generator(channels, config, images).to(device=device,
                                                                       dtype=dtype)).train()
    adversary = ADVERSARIES[config.loss](config, channels, warm, rngs, device, dtype)

    # 2. Reconstruction path: z* at the coarsest scale, zeros above it; the upsampled
    #    reconstruction of the frozen scales (prev_rec) is fixed for the whole scale.
    frozen = frozen_scales(models, scale)
    z_shape = noise_shape(shape, config)

    def draw(level: int) -> Tensor:  # one noise map per image, each from its own stream
        return torch.cat([draw_noise(level, 1, z_shape, generator=rng, device=device,
                                     dtype=dtype) for rng in rngs], dim=1)

    if scale == 0:
        z_rec = draw(0)
        prev_rec = torch.zeros_like(real)
        noise_amp = torch.ones(images, device=device, dtype=dtype)
    else:
        z_rec = torch.zeros(1, 3 * images, *z_shape, device=device, dtype=dtype)
        with torch.no_grad():
            prev_rec = run_frozen(frozen, [level.z_rec for level in frozen], models, shape)
        noise_amp = config.noise_amp * per_image_mean((prev_rec - real) ** 2, images).sqrt()
    amps = noise_amp.tolist()  # one host sync per scale, for the log and the callbacks
    logger.info("scale %d/%d: %dx%d, %d channels, %d image(s), noise amplitude %s", scale + 1,
                models[0].num_scales, *shape, channels, images,
                ", ".join(f"{a:.4f}" for a in amps))
    amp_map = per_channel(noise_amp, 3)

    # 3. The generator's optimiser: Adam with one learning-rate drop at lr_milestone, over the
    #    trainable parameters (not the conv biases BatchNorm cancels). foreach: one kernel per
    #    operation over all parameters instead of one per parameter (same arithmetic; Adam is
    #    elementwise, so K images side by side are K independent optimisers).
    g_parameters = trainable(generator)
    opt_g = torch.optim.Adam(g_parameters, lr=config.lr_g, betas=(config.beta1, config.beta2),
                             foreach=True)
    schedule_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, [config.lr_milestone], config.gamma)

    prev_rec = pad(prev_rec, config)
    rec_input = amp_map * padded_noise(z_rec, config, images) + prev_rec
    # z* redrawn every iteration (the default, as the official code: the coarsest generator then
    # learns to reconstruct the image from any noise; the last draw is kept) or fixed (the paper).
    redraw_z_star = scale == 0 and config.z_star == "redrawn"

    def step(iteration: int) -> tuple[Tensor | None, ...]:
        nonlocal z_rec, rec_input
        if redraw_z_star:
            z_rec = draw(0)
            rec_input = amp_map * padded_noise(z_rec, config, images) + prev_rec
        z = padded_noise(draw(scale), config, images)

        # 4. Critic steps, each on a fresh random `prev` (a patch loss: one, to draw `prev`).
        for _ in range(adversary.critic_steps):
            prev = pad(random_prev(frozen, models, real, rngs, prev_map), config)
            adversary.update(real, generator, amp_map * z + prev, prev)

        # 5. Generator steps on the last `prev`: adversarial (or patch) loss plus the
        #    reconstruction of the real image; gradients for the generator only.
        for _ in range(config.g_steps):
            fake = generator(amp_map * z + prev, prev)
            g_adv = adversary.generator_loss(fake, real)
            reconstruction = config.alpha * per_image_mean(
                (generator(rec_input, prev_rec) - real) ** 2, images)
            opt_g.zero_grad(set_to_none=True)
            (g_adv + reconstruction).sum().backward(inputs=g_parameters)
            opt_g.step()
        schedule_g.step()
        adversary.end_iteration()
        return (*adversary.losses(), g_adv, reconstruction)

    # 6. The iterations, reported every log_every (skeleton.run_level). An image whose losses
    #    are not finite stops reporting; its kernels run on, cut off from the others', until
    #    the scale ends.
    failed = run_level(models, scale, amps, callbacks, config, step)

    # 7. Freeze the scale (eval mode: BatchNorm uses its running statistics from now on), one
    #    Scale per image.
    generators, critics = unstack(generator, singles), adversary.critics()

    def freeze(index: int) -> None:
        level = Scale(generators[index], critics[index], reals[index],
                      z_rec.chunk(images, dim=1)[index], noise_amp[index])
        models[index].scales.append(level.eval().requires_grad_(False))

    end_level(models, scale, failed, callbacks, freeze)


@dataclass(frozen=True)
class FrozenScale:
    """One finished scale of K models side by side: their generators in one grouped generator
    (eval mode), their noise amplitudes as one value per channel, their z_rec stacked."""

    generator: Generator
    noise_amp: Tensor
    z_rec: Tensor


def frozen_scales(models: Sequence[SinGAN], scale: int) -> list[FrozenScale]:
    """Scales 0 .. scale - 1 of the K models, each side by side (FrozenScale)."""
    config, frozen = models[0].config, []
    for index in range(scale):
        levels = [model.scales[index] for model in models]
        generator = stack([level.generator for level in levels],
                          Generator(config.channels(index), config, len(models)).to(
                              levels[0].real)).eval().requires_grad_(False)
        frozen.append(FrozenScale(generator, per_channel(torch.stack(
            [level.noise_amp for level in levels]), 3),
            torch.cat([level.z_rec for level in levels], dim=1)))
    return frozen


def run_frozen(frozen: list[FrozenScale], noises: list[Tensor], models: Sequence[SinGAN],
               shape: tuple[int, int]) -> Tensor:
    """The frozen scales fed `noises` (stacked), upsampled to `shape` (the next scale's)."""
    levels = [(level.generator, level.noise_amp) for level in frozen]
    x = chain(levels, noises, models[0].config, models[0].scale_factor, images=len(models))
    return upsample(x, shape, models[0].scale_factor)


def random_prev(frozen: list[FrozenScale], models: Sequence[SinGAN], real: Tensor,
                rngs: Sequence[torch.Generator],
                prev_map: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The frozen scales run on fresh noise (each image's from its own stream), upsampled to
    the size of `real` (the K images of the scale being trained): its input `prev`."""
    if not frozen:
        return torch.zeros_like(real)
    with torch.no_grad():
        noises = [torch.cat([draw_noise(index, 1, tuple(level.z_rec.shape[-2:]), generator=rng,
                                        device=rng.device, dtype=real.dtype) for rng in rngs],
                            dim=1) for index, level in enumerate(frozen)]
        prev = run_frozen(frozen, noises, models, tuple(real.shape[-2:]))
        if prev_map is not None:
            prev = torch.cat([prev_map(part) for part in prev.chunk(len(models), dim=1)], dim=1)
        return prev
