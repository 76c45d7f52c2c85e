"""What every recipe shares: the model base class and its storage, the training hooks, the
resume check and the gradient penalty.

A model is a `Pyramid`: its config, plan and seed, and the finished levels (`scales`: SinGAN's
scales, ConSinGAN's stages), coarsest first. A model with k finished levels samples at the
resolution of its finest one, and training resumes from it; the unit of storage is one level.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from singan.data.files import atomic_write
from singan.errors import InputError
from singan.plans import PyramidPlan
from singan.settings import Config

FORMAT_VERSION = 1


class Pyramid(nn.Module):
    """What every recipe's model shares: its config, pyramid plan and seed, the finished levels
    (`scales`), their views, and storage as config.json plus one file per finished level.

    Subclasses say what a level file holds (`save_level`) and what their generators are; their
    recipe (singan.recipes.spec.Recipe) reads the files back.
    """

    def __init__(self, config: Config, plan: PyramidPlan, seed: int):
        super().__init__()
        self.config = config
        self.plan = plan
        self.seed = seed
        self.scales = nn.ModuleList()
        # Why training stopped early (its losses became non-finite), or None; not stored.
        self.failure: str | None = None

    # --- convenient views ------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        """The number of planned levels."""
        return self.plan.num_scales

    @property
    def is_complete(self) -> bool:
        return len(self.scales) == self.plan.num_scales

    @property
    def scale_factor(self) -> float:
        return self.plan.scale_factor

    @property
    def reals(self) -> list[Tensor]:
        return [s.real for s in self.scales]

    @property
    def noise_amps(self) -> list[float]:
        return [float(s.noise_amp) for s in self.scales]

    @property
    def device(self) -> torch.device:
        for tensor in itertools.chain(self.buffers(), self.parameters()):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type the model was trained in (float32 until a level exists)."""
        for tensor in itertools.chain(self.buffers(), self.parameters()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def generator_modules(self) -> list[nn.Module]:
        """The networks that generate images (for counting parameters, moving, inspecting)."""
        raise NotImplementedError

    # --- storage: config.json + one file per level -----------------------------------------
    def metadata(self) -> dict[str, Any]:
        """What config.json holds: the config (with its recipe), the plan, the seed, versions."""
        return {
            "format_version": FORMAT_VERSION,
            "package_version": package_version(),
            "config": self.config.to_dict(),
            "plan": self.plan.to_dict(),
            "seed": self.seed,
            "finished_scales": len(self.scales),
        }

    def metadata_bytes(self) -> bytes:
        """config.json's contents."""
        return json.dumps(self.metadata(), indent=2, sort_keys=True).encode()

    def save_level(self, index: int, f: IO[bytes]) -> None:
        """Write level `index` (tensors only, on the CPU) to a binary file object."""
        raise NotImplementedError

    def level_bytes(self, index: int) -> bytes:
        """The contents of level `index`'s file (scale_file_name(index))."""
        buffer = io.BytesIO()
        self.save_level(index, buffer)
        return buffer.getvalue()

    def save(self, directory: str | os.PathLike) -> None:
        """Write config.json and scale_XX.pt for every finished level; each file whole or absent."""
        directory = Path(directory)
        for index in range(len(self.scales)):
            data = self.level_bytes(index)
            atomic_write(directory / scale_file_name(index), lambda f, d=data: f.write(d))
        atomic_write(directory / "config.json", lambda f: f.write(self.metadata_bytes()))


class Level(nn.Module):
    """What every finished level holds besides its networks, as buffers saved with it: the real
    image at the level's size, its reconstruction input z_rec and its noise amplitude."""

    def __init__(self, real: Tensor, z_rec: Tensor, noise_amp: Tensor | float):
        super().__init__()
        self.register_buffer("real", real)
        self.register_buffer("z_rec", z_rec)
        self.register_buffer("noise_amp", torch.as_tensor(noise_amp, dtype=real.dtype,
                                                          device=real.device).reshape(()))


def read_metadata(metadata_file: IO[bytes], name: str = "model") -> tuple[Config, PyramidPlan, int]:
    """The config, pyramid plan and seed that a model's config.json holds (any recipe)."""
    try:
        meta = json.loads(metadata_file.read())
        config = Config.from_dict(meta["config"])
        plan = PyramidPlan.from_dict(meta["plan"])
        seed = int(meta["seed"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{name}: config.json is not a SinGAN model description ({err})") from err
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{name}: written by a newer singan-fleet (format "
                         f"{meta['format_version']}); upgrade to load it")
    return config, plan, seed


def load_state(f: IO[bytes], index: int, name: str) -> dict[str, Tensor]:
    """The tensors of one level file; a torn or foreign file is an InputError naming it."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{name}: {scale_file_name(index)} cannot be loaded ({err})") from err


def scale_file_name(index: int) -> str:
    return f"scale_{index:02d}.pt"


def package_version() -> str:
    """The installed singan-fleet version, recorded in every model and _SUCCESS file."""
    try:
        return metadata.version("singan-fleet")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- training hooks ----------------------------------------------------------------------------
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

    @classmethod
    def each(cls, scale: int, iteration: int, niter: int,
             *terms: Tensor | None) -> list[IterationLog]:
        """One entry per image from five loss terms of one value per image (None where a term
        does not exist), read from the device in one host sync."""
        present = [t.reshape(-1) for t in terms if t is not None]  # a single image's: 0-d
        rows = torch.stack(present, dim=1).tolist()  # images x terms
        entries = []
        for row in rows:
            values = iter(row)
            entries.append(cls(scale, iteration, niter,
                               *(None if t is None else next(values) for t in terms)))
        return entries

    @property
    def finite(self) -> bool:
        """Whether every loss term is a finite number (NaN or infinity: training diverged)."""
        return all(math.isfinite(v) for v in (self.d_real, self.d_fake, self.gradient_penalty,
                                              self.g_adv, self.reconstruction) if v is not None)

    @property
    def d_loss(self) -> float | None:
        """The critic's loss, None without a critic."""
        if self.d_real is None:
            return None
        return self.d_real + self.d_fake + self.gradient_penalty


class Callback:
    """Training hooks; override what you need. The pipeline logs and checkpoints with these.

    `model` is the model being trained, of either recipe (a ConSinGAN's stages are its scales).
    """

    def on_scale_start(self, model: Pyramid, scale: int, noise_amp: float) -> None:
        """Before `scale` trains; `model` holds the finished scales 0 .. scale - 1."""

    def on_iteration(self, log: IterationLog) -> None:
        """Every `config.log_every` iterations and at the last one."""

    def on_scale_end(self, model: Pyramid, scale: int) -> None:
        """After `scale` finished; `model` now holds scales 0 .. scale (a resume point)."""


def is_log_step(iteration: int, config: Config) -> bool:
    """Whether the callbacks hear of `iteration` (each a host sync)."""
    return iteration % config.log_every == 0 or iteration == config.niter


def resumable(model: Pyramid, plan: PyramidPlan, reals: list[Tensor]) -> Pyramid:
    """`model` itself when its finished levels were trained on this image (same plan, same
    levels); either recipe's model."""
    if model.plan != plan:
        raise InputError("resume: the model was trained on an image of another size")
    for level, real in zip(model.scales, reals):
        if not torch.allclose(level.real, real.to(level.real), atol=1e-3):
            raise InputError("resume: the model was trained on another image")
    return model


# --- losses of K images stacked along the channels (image after image) -----------------------
def per_image_mean(x: Tensor, images: int) -> Tensor:
    """The mean of each image's part of `x` (its channels lie together): a vector of `images`."""
    return x.reshape(images, -1).mean(dim=1)


def per_channel(values: Tensor, channels: int) -> Tensor:
    """One value per image -> a 1 x (images * channels) x 1 x 1 map, to scale stacked images."""
    return values.repeat_interleave(channels).view(1, -1, 1, 1)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, e: Tensor,
                     images: int = 1) -> Tensor:
    """WGAN-GP's penalty of each image: the mean over its pixels of (|grad_x D(x_hat)|_2 over its
    channels - 1)^2 at x_hat = e real + (1 - e) fake, with one uniform draw `e` per image
    (`images` images stacked along the channels; one value per image back)."""
    x_hat = (per_channel(e.reshape(images), real.shape[1] // images) * real
             + per_channel(1 - e.reshape(images), real.shape[1] // images) * fake)
    x_hat.requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    norms = grad.reshape(images, -1, *grad.shape[-2:]).norm(2, dim=1)
    return ((norms - 1) ** 2).reshape(images, -1).mean(dim=1)


class Diverged(RuntimeError):
    """A training whose losses became non-finite (NaN or infinite): it cannot go on."""
