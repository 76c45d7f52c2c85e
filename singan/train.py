"""Training: coarse to fine, one GAN per scale, earlier scales frozen (reference/SINGAN.md s. 4).

Decisions where the reference and the paper differ (each keeps the paper's algorithm):
- z* (the coarsest reconstruction noise) is drawn once and kept fixed, as in the paper; the
  reference redraws it every iteration and stores the last draw.
- The generator steps recompute `fake` with the current weights for each step; the reference
  reuses the graph of the last discriminator step, which modern PyTorch rejects.
- Every resize and random draw happens on the training device; the reference round-trips
  through uint8 numpy arrays on the CPU.
- Random numbers come from one torch.Generator per scale, seeded from (seed, scale), so that
  resuming from k finished scales gives the same model as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from singan import streams
from singan.config import Config
from singan.errors import InputError
from singan.image import load_image
from singan.models import (
    Discriminator,
    Generator,
    Scale,
    SinGAN,
    init_weights,
    noise_shape,
    pad,
    padded_noise,
    trainable,
)
from singan.patch_losses import aligned_nn_patch_loss, frechet_patch_loss, nn_patch_loss
from singan.pyramid import build_pyramid, plan_pyramid
from singan.sample import draw_noise, generate, upsample
from singan.streams import scale_generator

if TYPE_CHECKING:
    from singan.consingan import ConSinGAN

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IterationLog:
    """The loss terms at one logged iteration (last discriminator and generator step).

    d_real + d_fake + gradient_penalty is the discriminator loss; g_adv + reconstruction the
    generator loss. `iteration` counts from 1 to `niter`. Without a critic (a patch loss in
    its place) the three D terms are None and g_adv is the patch loss.
    """

    scale: int
    iteration: int
    niter: int
    d_real: float | None  # -mean D(real)
    d_fake: float | None  # mean D(fake)
    gradient_penalty: float | None  # lambda_grad * mean (|grad D(x_hat)| - 1)^2
    g_adv: float  # -mean D(fake), or the patch loss that replaces D
    reconstruction: float  # alpha * MSE(G(z_rec), real)

    @property
    def d_loss(self) -> float | None:
        """The critic's loss, None without a critic."""
        if self.d_real is None:
            return None
        return self.d_real + self.d_fake + self.gradient_penalty


class Callback:
    """Training hooks; override what you need. The pipeline logs and checkpoints with these."""

    def on_scale_start(self, model: SinGAN, scale: int, noise_amp: float) -> None:
        """Before `scale` trains; `model` holds the finished scales 0 .. scale - 1."""

    def on_iteration(self, log: IterationLog) -> None:
        """Every `config.log_every` iterations and at the last one."""

    def on_scale_end(self, model: SinGAN, scale: int) -> None:
        """After `scale` finished; `model` now holds scales 0 .. scale (a resume point)."""


def train(image: Tensor | str | os.PathLike | IO[bytes], config: Config | None = None, *,
          device: str | torch.device | None = None, dtype: torch.dtype | None = None,
          seed: int | None = None, callbacks: Sequence[Callback] = (),
          resume: SinGAN | ConSinGAN | None = None) -> SinGAN | ConSinGAN:
    """Learn a SinGAN from one image and return it; config.recipe "consingan" trains a
    ConSinGAN instead (singan.consingan).

    image: a 1 x 3 x H x W (or 3 x H x W) tensor in [-1, 1], or a path / binary file object.
    config: defaults to `resume.config` or the paper preset.
    device: "cpu", "cuda", ... (default: CUDA when available).
    dtype: the floating-point type of the whole training: networks, image pyramid, noise, resizes
      and optimiser state (default: float32, or `resume`'s). float64 makes a seeded training
      repeatable across CPUs: in float32 the rounding noise of gradients that are zero in exact
      arithmetic (conv biases feeding BatchNorm) differs between CPU kernels, and Adam turns it
      into learning-rate-sized steps.
    seed: makes training reproducible; drawn from torch's global generator when None. The seed is
      stored in the model, and a resumed training keeps it.
    resume: a model with k finished scales trained on the same image and config; only scales
      k .. N are trained.
    Callbacks get the model being trained, a SinGAN or a ConSinGAN (its stages are its scales).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not isinstance(image, Tensor):
        image = load_image(image)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InputError(f"image must be 1 x 3 x H x W, got {tuple(image.shape)}")

    if resume is not None:
        dtype = dtype or resume.dtype
        if dtype != resume.dtype:
            raise InputError(f"resume: the model was trained in {resume.dtype}, not {dtype}")
        config = config or resume.config
        if config != resume.config:
            raise InputError("resume: the model was trained with another config")
        if seed is not None and seed != resume.seed:
            raise InputError(f"resume: the model was trained with seed {resume.seed}, not {seed}")
        seed = resume.seed
    config = config or Config()
    dtype = dtype or torch.float32
    if not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point type, got {dtype}")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    if config.recipe == "consingan":
        from singan import consingan  # local: singan.consingan imports this module

        return consingan.train(image, config, device=device, dtype=dtype, seed=seed,
                               callbacks=callbacks, resume=resume)

    plan = plan_pyramid(image.shape[-2], image.shape[-1], config)
    reals = build_pyramid(image.to(device=device, dtype=dtype), plan)
    if resume is not None:
        model = resumable(resume, plan, reals).to(device)
    else:
        model = SinGAN(config, plan, seed).to(device=device, dtype=dtype)

    for scale in range(len(model.scales), plan.num_scales):
        train_scale(model, scale, reals[scale], callbacks)
    return model


def resumable(model, plan, reals: list[Tensor]):
    """`model` itself when its finished levels were trained on this image (same plan, same
    levels); either recipe's model."""
    if model.plan != plan:
        raise InputError("resume: the model was trained on an image of another size")
    for level, real in zip(model.scales, reals):
        if not torch.allclose(level.real, real.to(level.real.device), atol=1e-3):
            raise InputError("resume: the model was trained on another image")
    return model


def train_scale(model: SinGAN, scale: int, real: Tensor, callbacks: Sequence[Callback] = (), *,
                prev_map: Callable[[Tensor], Tensor] | None = None) -> None:
    """Train scale `scale` against `real` with scales 0 .. scale - 1 frozen; append it to model.

    prev_map: applied to every random `prev` (paint-to-image retrains a scale on images
      quantised to a few colours); the reconstruction path is left as it is.
    """
    config, device, dtype = model.config, real.device, real.dtype
    rng = scale_generator(model.seed, scale, device)
    shape = tuple(real.shape[-2:])

    # 1. Networks: copy the previous scale's G and D when the width is unchanged (warm start).
    #    A patch loss (config.loss) stands in for the critic: then there is no D to train.
    channels = config.channels(scale)
    if scale > 0 and config.channels(scale - 1) == channels:
        generator = copy.deepcopy(model.scales[scale - 1].generator).train()
        critic = copy.deepcopy(model.scales[scale - 1].discriminator)
    else:
        generator = Generator(channels, config).to(device=device, dtype=dtype)
        init_weights(generator, config.init_std, rng)
        critic = (Discriminator(channels, config).to(device=device, dtype=dtype)
                  if config.has_discriminator else None)
        if critic is not None:
            init_weights(critic, config.init_std, rng)
    if critic is not None:
        critic.train()

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
    level = Scale(generator, critic, real, z_rec, noise_amp)
    amp = float(noise_amp)  # one host sync per scale, for the log and the callbacks
    logger.info("scale %d/%d: %dx%d, %d channels, noise amplitude %.4f", scale + 1,
                model.num_scales, *shape, channels, amp)
    for callback in callbacks:
        callback.on_scale_start(model, scale, amp)

    # 3. Optimisers: Adam with one learning-rate drop at lr_milestone, over the trainable
    #    parameters (models.trainable: not the conv biases that BatchNorm cancels). foreach: one
    #    kernel per operation over all parameters instead of one per parameter (same arithmetic).
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(trainable(generator), lr=config.lr_g, betas=betas, foreach=True)
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(opt_g, [config.lr_milestone], config.gamma)]
    if critic is not None:
        opt_d = torch.optim.Adam(trainable(critic), lr=config.lr_d, betas=betas, foreach=True)
        schedulers.append(torch.optim.lr_scheduler.MultiStepLR(opt_d, [config.lr_milestone],
                                                               config.gamma))
    patch_loss = None if critic is not None else PATCH_LOSSES[config.loss]

    prev_rec = pad(prev_rec, config)
    rec_input = noise_amp * padded_noise(z_rec, config) + prev_rec
    d_real = d_fake = penalty = None

    for iteration in range(1, config.niter + 1):
        z = padded_noise(draw_noise(scale, 1, z_shape, generator=rng, device=device, dtype=dtype),
                         config)

        # 4. Critic steps: WGAN-GP on a fresh random `prev` each step (one `prev` for the
        #    generator steps when a patch loss replaces the critic).
        if critic is None:
            prev = pad(random_prev(model, scale, real, rng, prev_map), config)
        else:
            for _ in range(config.d_steps):
                prev = pad(random_prev(model, scale, real, rng, prev_map), config)
                with torch.no_grad():
                    fake = generator(noise_amp * z + prev, prev)
                d_real = -critic(real).mean()
                d_fake = critic(fake).mean()
                penalty = config.lambda_grad * gradient_penalty(critic, real, fake, rng)
                opt_d.zero_grad(set_to_none=True)
                (d_real + d_fake + penalty).backward()
                opt_d.step()

        # 5. Generator steps: adversarial (or patch) loss on the last `prev`, reconstruction of
        #    the real image.
        if critic is not None:
            critic.requires_grad_(False)
        for _ in range(config.g_steps):
            fake = generator(noise_amp * z + prev, prev)
            g_adv = -critic(fake).mean() if critic is not None else patch_loss(
                fake, real, config.patch_size)
            reconstruction = config.alpha * F.mse_loss(generator(rec_input, prev_rec), real)
            opt_g.zero_grad(set_to_none=True)
            (g_adv + reconstruction).backward()
            opt_g.step()
        if critic is not None:
            trainable(critic)  # the critic trains again (its redundant biases stay frozen)
        for scheduler in schedulers:
            scheduler.step()

        # 6. Report: the only host sync of the loop, every log_every iterations.
        if callbacks and (iteration % config.log_every == 0 or iteration == config.niter):
            losses = [d_real, d_fake, penalty, g_adv, reconstruction]
            values = torch.stack([v for v in losses if v is not None]).tolist()
            if critic is None:
                values = [None, None, None, *values]
            entry = IterationLog(scale, iteration, config.niter, *values)
            for callback in callbacks:
                callback.on_iteration(entry)

    # 7. Freeze the scale (eval mode: BatchNorm uses its running statistics from now on).
    model.scales.append(level.eval().requires_grad_(False))
    for callback in callbacks:
        callback.on_scale_end(model, scale)


# The losses that can stand in for the critic (Config.loss); each takes (fake, real, patch size).
PATCH_LOSSES = {"frechet": frechet_patch_loss, "nnpl": nn_patch_loss,
                "annpl": aligned_nn_patch_loss}


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


def gradient_penalty(critic: Discriminator, real: Tensor, fake: Tensor, rng: torch.Generator) -> Tensor:
    """mean over pixels of (|grad_x D(x_hat)|_2 over channels - 1)^2, x_hat between real and fake."""
    e = streams.uniform((), generator=rng, device=real.device, dtype=real.dtype)
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()
