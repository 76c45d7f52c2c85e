"""ConSinGAN (Hinz, Fisher, Wang, Wermter, WACV 2021): one growing generator whose newest stages
train concurrently (reference/SINGAN.md section 7). `Config.recipe = "consingan"` selects it:
this module is the whole recipe (`ConSinGANRecipe`, registered in singan/recipes.py), and
`singan.train`, `singan.sample`, `singan.reconstruct` and `singan.load` reach it through it.

How it differs from SinGAN (singan.models, singan.train):
- One generator for the whole pyramid: a head, one body per stage, a tail. Stage k starts as a copy
  of stage k - 1's body. Features (not RGB images) pass from stage to stage, upsampled bicubically,
  and each stage adds its output to the upsampled features it got (a residual).
- The newest `train_depth` stages train together, the lower ones at learning rates scaled by
  `lr_scale` per stage below the newest; everything further down is frozen.
- Its own pyramid (`plan_consingan`): a fixed number of stages, more of them at low resolution.
- Per iteration one generator backward pass, then `g_steps` optimizer steps on that gradient.

Storage follows SinGAN's (config.json and one file per finished stage), but training stage k also
changes the stages below it: every stage file holds the whole generator as it was when the stage
finished, and the last file's generator is the one that loads.

As in singan.train, random numbers come from one torch.Generator per stage seeded from
(seed, stage), so resuming after k finished stages gives the same model as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singan import streams
from singan.base import (
    Callback,
    IterationLog,
    Pyramid,
    gradient_penalty,
    is_log_step,
    load_state,
    scale_file_name,
)
from singan.config import Config
from singan.errors import InputError
from singan.layers import ConvBlock, init_weights, trainable
from singan.pyramid import PyramidPlan, shrunk_shape
from singan.recipe import Recipe
from singan.resize import imresize
from singan.streams import scale_generator

logger = logging.getLogger(__name__)


# --- pyramid ---------------------------------------------------------------------------------
def plan_consingan(height: int, width: int, config: Config) -> PyramidPlan:
    """The pyramid of ConSinGAN's `config.num_scales` stages for a `height` x `width` image.

    The finest level is the image shrunk to fit max_size, as in SinGAN. With stop = num_scales - 1
    and the base factor r = (min_size / its short side) ** (1 / stop), level i < stop is the finest
    resized by r ** (((stop - 1) / ln stop) * ln(stop - i) + 1): level 0 has min_size on its short
    side, and the levels crowd at low resolution, where the global layout is learnt.
    `PyramidPlan.scale_factor` holds r. Raises InputError where the levels would not shrink.
    """
    if isinstance(height, bool) or isinstance(width, bool) or not (
        isinstance(height, int) and isinstance(width, int)
    ):
        raise InputError(f"image size must be two integers, got {height!r} x {width!r}")
    if height < 1 or width < 1:
        raise InputError(f"image {height}x{width} is empty")
    if config.num_scales is None:
        raise InputError("ConSinGAN needs num_scales: use singan.config(recipe='consingan')")
    size = f"image {height}x{width}"
    if min(height, width) < config.min_size:
        raise InputError(f"{size} is smaller than min_size={config.min_size}; use a larger image "
                         f"or lower min_size")

    # The same shrink to max_size as SinGAN's pyramid, with its guard against max_size + 1.
    scale1 = min(config.max_size / max(height, width), 1.0)
    real_shape = shrunk_shape(height, width, scale1, config.max_size)
    if min(real_shape) < config.min_size:
        raise InputError(f"{size} shrinks to {real_shape[0]}x{real_shape[1]} to fit "
                         f"max_size={config.max_size}, below min_size={config.min_size} on its "
                         f"short side (the image is too elongated); raise max_size or lower min_size")

    stop = config.num_scales - 1
    scale_factor = math.pow(config.min_size / min(real_shape), 1.0 / stop)
    shapes = tuple(
        (math.ceil(real_shape[0] * level_factor(scale_factor, stop, i)),
         math.ceil(real_shape[1] * level_factor(scale_factor, stop, i)))
        for i in range(stop)
    ) + (real_shape,)
    for i in range(stop):
        coarse, fine = shapes[i], shapes[i + 1]
        if coarse == fine or coarse[0] > fine[0] or coarse[1] > fine[1]:
            raise InputError(
                f"{size} gives ConSinGAN stages that do not shrink: stages {i} and {i + 1} are "
                f"{coarse[0]}x{coarse[1]} and {fine[0]}x{fine[1]} ({stop + 1} stages between "
                f"min_size={config.min_size} and {real_shape[0]}x{real_shape[1]}); lower "
                f"num_scales or min_size, or use a larger image")
    return PyramidPlan(real_shape=real_shape, scale1=scale1, scale_factor=scale_factor,
                       shapes=shapes)


def level_factor(scale_factor: float, stop: int, level: int) -> float:
    """The factor from the finest level to `level` (0 = coarsest, stop = the finest itself)."""
    if level == stop:
        return 1.0
    # (stop - 1) / ln(stop) tends to 1 as stop -> 1: the limit keeps two stages defined.
    slope = (stop - 1) / math.log(stop) if stop > 1 else 1.0
    return math.pow(scale_factor, slope * math.log(stop - level) + 1)


def build_consingan_pyramid(image: Tensor, plan: PyramidPlan) -> list[Tensor]:
    """Resize `image` (N x C x H x W) to every level of a `plan_consingan` plan, coarsest first.

    Each level is resized straight from the finest one, with the MATLAB-style bicubic imresize.
    """
    height, width = image.shape[-2:]
    if shrunk_shape(height, width, plan.scale1, max(plan.real_shape)) != plan.real_shape:
        raise InputError(f"image {height}x{width} does not match the plan (made for an image that "
                         f"resizes to {plan.real_shape[0]}x{plan.real_shape[1]})")
    real = image if plan.scale1 == 1 else imresize(image, scale=plan.scale1, shape=plan.real_shape)
    stop = plan.stop_scale
    levels = [imresize(real, scale=level_factor(plan.scale_factor, stop, i), shape=plan.shapes[i])
              for i in range(stop)]
    return [*levels, real]


# --- networks --------------------------------------------------------------------------------
def width(config: Config) -> int:
    """ConSinGAN's channels: the same at every stage, the coarsest SinGAN scale's (nfc, capped)."""
    return config.channels(0)


def upsample(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """Bicubic resize of features between stages (torch's, not MATLAB's: no antialiasing needed)."""
    return F.interpolate(x, size=shape, mode="bicubic", align_corners=True)


class Generator(nn.Module):
    """The growing generator: head, one body of num_layer conv blocks per stage, tail.

    For stages 0 .. K (noise z_k, size (h_k, w_k), amplitude a_k):
        x_0 = body_0(pad(up(head(pad(z_0)))))                  z_0: RGB noise (or the real image)
        x_k = body_k(up(x_{k-1}, padded size) + a_k * z_k) + up(x_{k-1}, (h_k, w_k))
        out = tanh(tail(pad(x_K)))
    z_k for k > 0 is a feature map of `width` channels with a border of `config.pad` pixels, the
    border one body takes off. Before the first body the head's output is enlarged by one
    conv's border and the rest zero-padded: the official code does this in generation mode, for
    more diverse image edges.
    """

    def __init__(self, config: Config, num_stages: int = 0):
        super().__init__()
        self.config = config
        channels = width(config)
        self.edge = config.kernel_size // 2  # the border one conv takes off each side
        self.head = ConvBlock(3, channels, config)
        self.body = nn.ModuleList()
        self.tail = nn.Conv2d(channels, 3, config.kernel_size)
        for _ in range(num_stages):
            self.add_stage()

    def add_stage(self) -> None:
        """Grow by one stage: a copy of the last stage's body (a fresh body for the first)."""
        if len(self.body):
            stage = copy.deepcopy(self.body[-1])
        else:
            channels = width(self.config)
            stage = nn.Sequential(*[ConvBlock(channels, channels, self.config)
                                    for _ in range(self.config.num_layer)])
            stage.to(device=self.tail.weight.device, dtype=self.tail.weight.dtype)
        self.body.append(stage)

    def forward(self, noises: Sequence[Tensor], shapes: Sequence[tuple[int, int]],
                noise_amps: Sequence[Tensor | float]) -> Tensor:
        """Run stages 0 .. len(noises) - 1; shapes[k] is stage k's output size (shapes[0] unused)."""
        if not 0 < len(noises) <= len(self.body):
            raise ValueError(f"{len(noises)} noise maps for a generator of {len(self.body)} stages")
        border = self.config.pad
        x = self.head(F.pad(noises[0], (self.edge,) * 4))
        x = upsample(x, (x.shape[-2] + 2 * self.edge, x.shape[-1] + 2 * self.edge))
        x = self.body[0](F.pad(x, (border - self.edge,) * 4))
        for k in range(1, len(noises)):
            h, w = shapes[k]
            skip = upsample(x, (h, w))
            x = self.body[k](upsample(x, (h + 2 * border, w + 2 * border))
                             + noises[k] * noise_amps[k]) + skip
        return torch.tanh(self.tail(F.pad(x, (self.edge,) * 4)))


class Discriminator(nn.Module):
    """A patch critic like SinGAN's: head, num_layer conv blocks, tail conv to one channel."""

    def __init__(self, config: Config):
        super().__init__()
        channels = width(config)
        self.head = ConvBlock(3, channels, config)
        self.body = nn.Sequential(*[ConvBlock(channels, channels, config)
                                    for _ in range(config.num_layer)])
        self.tail = nn.Conv2d(channels, 1, config.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.body(self.head(x)))


def noise_size(config: Config, stage: int, shape: tuple[int, int]) -> tuple[int, int, int]:
    """(channels, h, w) of stage `stage`'s noise for an output of `shape`: RGB at stage 0,
    features with the body's border above it."""
    if stage == 0:
        return 3, *shape
    return width(config), shape[0] + 2 * config.pad, shape[1] + 2 * config.pad


# --- the model -------------------------------------------------------------------------------
class Stage(nn.Module):
    """What belongs to one finished stage besides its generator body.

    z_rec: the fixed input of the reconstruction: stage 0's real image itself, then a fixed
    N(0, 1) feature map (with its border). noise_amp: the amplitude of the noise added to the
    stage's input. discriminator: the critic trained at this stage (the next one starts from it).
    """

    def __init__(self, discriminator: Discriminator, real: Tensor, z_rec: Tensor,
                 noise_amp: Tensor | float):
        super().__init__()
        self.discriminator = discriminator
        self.register_buffer("real", real)
        self.register_buffer("z_rec", z_rec)
        self.register_buffer("noise_amp", torch.as_tensor(noise_amp, dtype=real.dtype,
                                                          device=real.device).reshape(()))

    @classmethod
    def empty(cls, index: int, config: Config, shape: tuple[int, int]) -> Stage:
        """A stage with the right parameter and buffer shapes, to load a state dict into."""
        return cls(Discriminator(config), torch.zeros(1, 3, *shape),
                   torch.zeros(1, *noise_size(config, index, shape)), 0.0)


class ConSinGAN(Pyramid):
    """A ConSinGAN learnt from one image: the growing `generator` and the finished `scales`.

    The views and storage are `singan.models.Pyramid`'s, shared with SinGAN, so the pipeline
    trains, checkpoints and samples either recipe; `scale_factor` is the pyramid's base factor r
    (see plan_consingan), its levels not evenly spaced.
    """

    def __init__(self, config: Config, plan: PyramidPlan, seed: int):
        super().__init__(config, plan, seed)
        self.generator = Generator(config)

    def generator_modules(self) -> list[nn.Module]:
        return [self.generator]

    def save_level(self, index: int, f: IO[bytes]) -> None:
        """Write stage `index` (tensors only, on the CPU): its real, z_rec, noise_amp and critic,
        and under "generator." the generator's head, bodies 0 .. index and tail.

        The generator part is the generator as it is now: written when stage `index` ends (as
        the training callbacks do), it is the generator at the end of that stage, a resume
        point. Written later, the lower stages carry their later weights.
        """
        state = dict(self.scales[index].state_dict())
        for key, value in self.generator.state_dict().items():
            parts = key.split(".")
            if parts[0] != "body" or int(parts[1]) <= index:
                state[f"generator.{key}"] = value
        torch.save({k: v.detach().cpu() for k, v in state.items()}, f)

    @classmethod
    def from_files(cls, config: Config, plan: PyramidPlan, seed: int,
                   level_files: list[IO[bytes]], *, name: str = "model") -> ConSinGAN:
        """Rebuild a model from its config.json contents and stage files; the generator comes
        from the last file (training a stage changes the ones below it)."""
        model = cls(config, plan, seed)
        generator_state: dict[str, Tensor] = {}
        for index, f in enumerate(level_files):
            state = load_state(f, index, name)
            stage = Stage.empty(index, config, plan.shapes[index])
            try:
                generator_state = {key.removeprefix("generator."): state.pop(key)
                                   for key in list(state) if key.startswith("generator.")}
                # A model trained in float64 loads in float64 (load_state_dict would cast).
                stage.to(dtype=state["real"].dtype).load_state_dict(state)
            except Exception as err:  # a foreign file: say which one
                raise InputError(f"{name}: {scale_file_name(index)} cannot be loaded ({err})") from err
            model.scales.append(stage.eval().requires_grad_(False))
        if level_files:
            model.generator = Generator(config, num_stages=len(level_files)).to(
                dtype=model.scales[0].real.dtype)
            try:
                model.generator.load_state_dict(generator_state)
            except Exception as err:
                last = scale_file_name(len(level_files) - 1)
                raise InputError(f"{name}: {last} holds no matching generator ({err})") from err
        model.generator.eval().requires_grad_(False)
        return model


# --- training --------------------------------------------------------------------------------
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
    for callback in callbacks:
        callback.on_scale_start(model, stage, amp)

    # 3. Optimisers: the concurrently trained stages at decaying rates (generator_param_groups);
    #    one learning-rate drop at lr_milestone.
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator_param_groups(generator, stage, config), lr=config.lr_g,
                             betas=betas, foreach=True)
    opt_d = torch.optim.Adam(trainable(critic), lr=config.lr_d, betas=betas, foreach=True)
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(opt, [config.lr_milestone], config.gamma)
                  for opt in (opt_g, opt_d)]

    for iteration in range(1, config.niter + 1):
        noises = [streams.normal((1, *noise_size(config, k, shape)), generator=rng, device=device,
                                 dtype=dtype) for k, shape in enumerate(shapes)]

        # 4. Critic steps (WGAN-GP), all on the same noise. Only the last step's fake keeps its
        #    graph: the generator loss reuses it.
        for step in range(config.d_steps):
            with torch.set_grad_enabled(step == config.d_steps - 1):
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

        # 6. Report: the only host sync of the loop, every log_every iterations.
        if is_log_step(iteration, config):
            entry = IterationLog.of(stage, iteration, config.niter, d_real, d_fake, penalty,
                                    g_adv, reconstruction)
            if not entry.finite:  # the stage cannot finish; the stages below it trained with
                # it, so the model in memory is spent: its stored files are the resume point
                model.failure = (f"losses became non-finite at stage {stage}, iteration "
                                 f"{iteration}")
                return
            for callback in callbacks:
                callback.on_iteration(entry)

    # 7. Freeze (eval mode: BatchNorm, when on, uses its running statistics from now on).
    generator.eval().requires_grad_(False)
    model.scales.append(Stage(critic.eval().requires_grad_(False), real, z_rec, noise_amp))
    for callback in callbacks:
        callback.on_scale_end(model, stage)


# --- the recipe -------------------------------------------------------------------------------
class ConSinGANRecipe(Recipe):
    """ConSinGAN as a recipe: its pyramid, its model, stage training, sampling and loading."""

    name = "consingan"
    # The official ConSinGAN code's defaults (generation mode), applied before a preset's and
    # the user's overrides.
    defaults: dict[str, Any] = dict(
        num_scales=6, nfc=64, max_nfc=64, num_layer=3, leaky_slope=0.05, batch_norm=False,
        niter=1000, lr_milestone=800, lr_g=5e-4, lr_d=5e-4, beta1=0.5, beta2=0.999, alpha=10.0,
        lambda_grad=0.1, d_steps=3, g_steps=3, noise_amp=0.1, min_size=25, max_size=250)
    # Its official code drops the learning rate at 0.8 * niter, for any niter.
    lr_drop_at = 0.8

    def config_problems(self, config: Config) -> list[str]:
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

    def plan(self, height: int, width: int, config: Config) -> PyramidPlan:
        return plan_consingan(height, width, config)

    def critic_patch(self, config: Config) -> int:
        return (config.num_layer + 2) * (config.kernel_size - 1) + 1  # head, num_layer, tail

    def build_pyramid(self, image: Tensor, plan: PyramidPlan) -> list[Tensor]:
        return build_consingan_pyramid(image, plan)

    def new_model(self, config: Config, plan: PyramidPlan, seed: int) -> ConSinGAN:
        return ConSinGAN(config, plan, seed)

    def check_resumable(self, model: ConSinGAN) -> None:
        if len(model.generator.body) != len(model.scales):
            raise InputError("resume: the model stopped in the middle of a stage; load it from "
                             "its saved files")

    def train_level(self, models: Sequence[ConSinGAN], level: int, reals: Sequence[Tensor],
                    callbacks: Sequence[Sequence[Callback]]) -> None:
        (model,), (real,) = models, reals  # one image at a time (batches is False)
        train_stage(model, level, real, callbacks[0] if callbacks else ())

    @torch.no_grad()
    def sample(self, model: ConSinGAN, num: int, *, start_scale: int, scale_h: float,
               scale_v: float, generator: torch.Generator | None) -> Tensor:
        """Random samples from the finished stages: fresh noise from `start_scale` on, the fixed
        reconstruction inputs below it. Every stage's size is round(scale * its size), so the
        generator retargets to the new size (scale_h=1.5: 1.5 times as wide)."""
        shapes = [(max(1, round(h * scale_v)), max(1, round(w * scale_h)))
                  for h, w in model.plan.shapes[: len(model.scales)]]
        dtype = model.scales[0].real.dtype
        noises = [level.z_rec.expand(num, -1, -1, -1) if k < start_scale else
                  streams.normal((num, *noise_size(model.config, k, shapes[k])),
                                 generator=generator, device=model.device, dtype=dtype)
                  for k, level in enumerate(model.scales)]
        amps = [level.noise_amp for level in model.scales]
        return model.generator(noises, shapes, amps).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, model: ConSinGAN) -> Tensor:
        """The reconstruction of the real image: the generator fed the fixed inputs."""
        shapes = list(model.plan.shapes[: len(model.scales)])
        return model.generator([level.z_rec for level in model.scales], shapes,
                               [level.noise_amp for level in model.scales]).clamp(-1, 1)

    def from_files(self, config: Config, plan: PyramidPlan, seed: int,
                   level_files: list[IO[bytes]], *, name: str) -> ConSinGAN:
        return ConSinGAN.from_files(config, plan, seed, level_files, name=name)


CONSINGAN = ConSinGANRecipe()
