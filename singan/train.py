"""SinGAN's training: coarse to fine, one GAN per scale, earlier scales frozen
(reference/SINGAN.md s. 4), and the SinGAN `Recipe` (singan.recipe) that ties its modules
(models, sample, this one) together. singan.train runs the outer loop over scales.

Decisions where the reference and the paper differ (each keeps the paper's algorithm):
- z* (the coarsest reconstruction noise) is drawn once and kept fixed, as in the paper; the
  reference redraws it every iteration and stores the last draw.
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
from typing import IO

import torch
import torch.nn.functional as F
from torch import Tensor

from singan.adversary import ADVERSARIES
from singan.base import Callback, IterationLog, is_log_step
from singan.config import Config
from singan.layers import init_weights, trainable
from singan.models import Generator, Scale, SinGAN, noise_shape, pad, padded_noise
from singan.pyramid import PyramidPlan, build_pyramid, plan_pyramid
from singan.recipe import Recipe
from singan.sample import draw_noise, generate, reconstruct_scales, sample_scales, upsample
from singan.streams import scale_generator

logger = logging.getLogger(__name__)


def train_scale(model: SinGAN, scale: int, real: Tensor, callbacks: Sequence[Callback] = (), *,
                prev_map: Callable[[Tensor], Tensor] | None = None) -> None:
    """Train scale `scale` against `real` with scales 0 .. scale - 1 frozen; append it to model.

    prev_map: applied to every random `prev` (paint-to-image retrains a scale on images
      quantised to a few colours); the reconstruction path is left as it is.
    """
    config, device, dtype = model.config, real.device, real.dtype
    rng = scale_generator(model.seed, scale, device)
    shape = tuple(real.shape[-2:])

    # 1. Networks: start from the previous scale's G (and critic) when the width is unchanged
    #    (warm start). The adversary (Config.loss) is the critic or a patch loss in its place.
    channels = config.channels(scale)
    warm = model.scales[scale - 1] if scale > 0 and config.channels(scale - 1) == channels else None
    if warm is not None:
        generator = copy.deepcopy(warm.generator).train()
    else:
        generator = Generator(channels, config).to(device=device, dtype=dtype)
        init_weights(generator, config.init_std, rng)
    adversary = ADVERSARIES[config.loss](config, channels, warm, rng, device, dtype)

    # 2. Reconstruction path: z* at the coarsest scale, zeros above it; the upsampled
    #    reconstruction of the frozen scales (prev_rec) is fixed for the whole scale.
    z_shape = noise_shape(shape, config)
    if scale == 0:
        z_rec = draw_noise(0, 1, z_shape, generator=rng, device=device, dtype=dtype)
        prev_rec = torch.zeros_like(real)
        noise_amp = torch.ones((), device=device, dtype=dtype)
    else:
        z_rec = torch.zeros(1, 3, *z_shape, device=device, dtype=dtype)
        with torch.no_grad():
            prev_rec = upsample(generate(model, [s.z_rec for s in model.scales]), shape,
                                model.scale_factor)
        noise_amp = config.noise_amp * torch.sqrt(F.mse_loss(prev_rec, real))
    level = Scale(generator, adversary.module, real, z_rec, noise_amp)
    amp = float(noise_amp)  # one host sync per scale, for the log and the callbacks
    logger.info("scale %d/%d: %dx%d, %d channels, noise amplitude %.4f", scale + 1,
                model.num_scales, *shape, channels, amp)
    for callback in callbacks:
        callback.on_scale_start(model, scale, amp)

    # 3. The generator's optimiser: Adam with one learning-rate drop at lr_milestone, over the
    #    trainable parameters (not the conv biases BatchNorm cancels). foreach: one kernel per
    #    operation over all parameters instead of one per parameter (same arithmetic).
    g_parameters = trainable(generator)
    opt_g = torch.optim.Adam(g_parameters, lr=config.lr_g, betas=(config.beta1, config.beta2),
                             foreach=True)
    schedule_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, [config.lr_milestone], config.gamma)

    prev_rec = pad(prev_rec, config)
    rec_input = noise_amp * padded_noise(z_rec, config) + prev_rec

    for iteration in range(1, config.niter + 1):
        z = padded_noise(draw_noise(scale, 1, z_shape, generator=rng, device=device, dtype=dtype),
                         config)

        # 4. Critic steps, each on a fresh random `prev` (a patch loss: one, to draw `prev`).
        for _ in range(adversary.critic_steps):
            prev = pad(random_prev(model, scale, real, rng, prev_map), config)
            adversary.update(real, generator, noise_amp * z + prev, prev)

        # 5. Generator steps on the last `prev`: adversarial (or patch) loss plus the
        #    reconstruction of the real image; gradients for the generator only.
        for _ in range(config.g_steps):
            fake = generator(noise_amp * z + prev, prev)
            g_adv = adversary.generator_loss(fake, real)
            reconstruction = config.alpha * F.mse_loss(generator(rec_input, prev_rec), real)
            opt_g.zero_grad(set_to_none=True)
            (g_adv + reconstruction).backward(inputs=g_parameters)
            opt_g.step()
        schedule_g.step()
        adversary.end_iteration()

        # 6. Report: the only host sync of the loop, every log_every iterations.
        if callbacks and is_log_step(iteration, config):
            entry = IterationLog.of(scale, iteration, config.niter,
                                    *adversary.losses(), g_adv, reconstruction)
            for callback in callbacks:
                callback.on_iteration(entry)

    # 7. Freeze the scale (eval mode: BatchNorm uses its running statistics from now on).
    model.scales.append(level.eval().requires_grad_(False))
    for callback in callbacks:
        callback.on_scale_end(model, scale)


def random_prev(model: SinGAN, scale: int, real: Tensor, rng: torch.Generator,
                prev_map: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The frozen scales run on fresh noise, upsampled to the size of `real` (scale `scale`'s
    image): the input `prev` of `scale`."""
    shape = tuple(real.shape[-2:])
    if scale == 0:
        return torch.zeros_like(real)
    with torch.no_grad():
        noises = [draw_noise(n, 1, tuple(level.z_rec.shape[-2:]), generator=rng,
                             device=rng.device, dtype=level.z_rec.dtype)
                  for n, level in enumerate(model.scales)]
        prev = upsample(generate(model, noises), shape, model.scale_factor)
        return prev if prev_map is None else prev_map(prev)


class SinGANRecipe(Recipe):
    """The paper's recipe: one GAN per scale, trained one at a time."""

    name = "singan"
    defaults = {}

    def config_problems(self, config: Config) -> list[str]:
        if not config.batch_norm:
            return ["batch_norm=False needs recipe='consingan' (SinGAN always has BatchNorm)"]
        return []

    def plan(self, height: int, width: int, config: Config) -> PyramidPlan:
        return plan_pyramid(height, width, config)

    def build_pyramid(self, image: Tensor, plan: PyramidPlan) -> list[Tensor]:
        return build_pyramid(image, plan)

    def new_model(self, config: Config, plan: PyramidPlan, seed: int) -> SinGAN:
        return SinGAN(config, plan, seed)

    def train_level(self, model: SinGAN, level: int, real: Tensor,
                    callbacks: Sequence[Callback]) -> None:
        train_scale(model, level, real, callbacks)

    def sample(self, model: SinGAN, num: int, *, start_scale: int, scale_h: float,
               scale_v: float, generator: torch.Generator | None) -> Tensor:
        return sample_scales(model, num, start_scale=start_scale, scale_h=scale_h,
                             scale_v=scale_v, generator=generator)

    def reconstruct(self, model: SinGAN) -> Tensor:
        return reconstruct_scales(model)

    def from_files(self, config: Config, plan: PyramidPlan, seed: int,
                   level_files: list[IO[bytes]], *, name: str) -> SinGAN:
        return SinGAN.from_files(config, plan, seed, level_files, name=name)


SINGAN = SinGANRecipe()
