"""The networks of one scale and the `SinGAN` module that holds the whole pyramid.

Scales are numbered as in the reference code: 0 is the coarsest. Each finished scale is one
`Scale` submodule (its generator, discriminator, real image, reconstruction noise and noise
amplitude), so a model with k finished scales is a complete, samplable SinGAN of k levels and the
unit of checkpointing is one scale.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singan import streams
from singan.config import Config
from singan.errors import InputError
from singan.files import atomic_write
from singan.pyramid import PyramidPlan

if TYPE_CHECKING:
    from singan.consingan import ConSinGAN

FORMAT_VERSION = 1


class ConvBlock(nn.Sequential):
    """Conv 3x3 (no padding) -> BatchNorm -> LeakyReLU(0.2); both recipes' building block.

    SinGAN always has the BatchNorm; ConSinGAN only with config.batch_norm.
    """

    def __init__(self, in_channels: int, out_channels: int, config: Config):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, config.kernel_size)
        if config.batch_norm:
            self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(config.leaky_slope)


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """Switch `module` to training its parameters and return them, for the optimiser; all but
    the biases of convolutions that feed a BatchNorm, which stay frozen.

    In training mode BatchNorm subtracts each channel's mean, so such a bias changes no output
    and its exact gradient is zero. What autograd returns for it is rounding noise, and Adam,
    dividing by the noise's own tiny magnitude, turns it into learning-rate-sized random steps
    that differ with the CPU's kernels: float32 trainings drifted by 0.02 in their losses within
    20 iterations between two machines, float64 ones by 0.01. Frozen, these biases keep their
    initial values, which is what exact arithmetic gives (a zero gradient leaves Adam still).
    """
    redundant = {id(block.conv.bias) for block in module.modules()
                 if isinstance(block, ConvBlock) and hasattr(block, "norm")}
    parameters = []
    for parameter in module.parameters():
        parameter.requires_grad_(id(parameter) not in redundant)
        if parameter.requires_grad:
            parameters.append(parameter)
    return parameters


class _FiveLayerNet(nn.Module):
    """Head block, num_layer - 2 body blocks, tail conv: the body shared by G and D."""

    def __init__(self, channels: int, out_channels: int, config: Config):
        super().__init__()
        self.head = ConvBlock(3, channels, config)
        self.body = nn.Sequential(*[ConvBlock(channels, channels, config)
                                    for _ in range(config.num_layer - 2)])
        self.tail = nn.Conv2d(channels, out_channels, config.kernel_size)

    def features(self, x: Tensor) -> Tensor:
        return self.tail(self.body(self.head(x)))


class Generator(_FiveLayerNet):
    """G_n(z, prev) = tanh(net(z)) + centre-crop(prev); z already holds noise_amp * noise + prev.

    Both inputs carry a border of `config.pad` pixels (see `pad`); the output has the unpadded
    size.
    """

    def __init__(self, channels: int, config: Config):
        super().__init__(channels, 3, config)

    def forward(self, z: Tensor, prev: Tensor) -> Tensor:
        x = torch.tanh(self.features(z))
        crop = (prev.shape[-2] - x.shape[-2]) // 2
        return x + prev[..., crop:prev.shape[-2] - crop, crop:prev.shape[-1] - crop]


class Discriminator(_FiveLayerNet):
    """A patch critic: one score per 11x11 receptive field, no activation (WGAN-GP).

    With zero padding (the reference) it sees the bare image and scores (H-10) x (W-10) patches.
    With circular or reflect padding its input gets the same border as the generator's, so that
    patches across the border are judged under the boundary condition the generator works with.
    """

    def __init__(self, channels: int, config: Config):
        super().__init__(channels, 1, config)
        self.padding = config.padding
        self.pad = config.pad

    def forward(self, x: Tensor) -> Tensor:
        if self.padding != "zero":
            x = F.pad(x, (self.pad,) * 4, mode=self.padding)
        return self.features(x)


def pad(x: Tensor, config: Config) -> Tensor:
    """The border of `config.pad` pixels around a generator input, in `config.padding`'s mode."""
    mode = "constant" if config.padding == "zero" else config.padding
    return F.pad(x, (config.pad,) * 4, mode=mode)


def noise_shape(shape: tuple[int, int], config: Config) -> tuple[int, int]:
    """The size a noise map is drawn at for an image of `shape`.

    With noise padding (animation) the noise covers the border too, instead of being padded
    around, so the generator never sees a blank frame at the image edges.
    """
    if config.noise_padding:
        return shape[0] + 2 * config.pad, shape[1] + 2 * config.pad
    return shape


def image_shape(noise: Tensor, config: Config) -> tuple[int, int]:
    """The image size a noise map belongs to (the inverse of `noise_shape`)."""
    h, w = noise.shape[-2:]
    border = 2 * config.pad if config.noise_padding else 0
    return h - border, w - border


def padded_noise(z: Tensor, config: Config) -> Tensor:
    """A noise map as the generator takes it: three channels, with the border added."""
    z = z.expand(-1, 3, -1, -1)
    return z if config.noise_padding else pad(z, config)


def init_weights(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """The reference initialisation: conv weights N(0, std), BatchNorm weights N(1, std), bias 0.

    Conv biases keep PyTorch's default distribution, U(+-1/sqrt(fan_in)), as in the reference,
    but are drawn from `generator` so that a seeded training is reproducible.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            _fill(m.weight, streams.normal, generator, mean=0.0, std=std)
            _fill(m.bias, streams.uniform, generator, low=-bound, high=bound)
        elif isinstance(m, nn.BatchNorm2d):
            _fill(m.weight, streams.normal, generator, mean=1.0, std=std)
            nn.init.zeros_(m.bias)


def _fill(parameter: Tensor, draw, generator: torch.Generator, **kwargs) -> None:
    with torch.no_grad():
        parameter.copy_(draw(tuple(parameter.shape), generator=generator,
                             device=parameter.device, dtype=parameter.dtype, **kwargs))


class Scale(nn.Module):
    """One finished level of the pyramid.

    `z_rec` is the reconstruction noise at this scale (z* at the coarsest, zeros elsewhere), and
    `noise_amp` the standard deviation of the noise added to the upsampled previous output.
    `discriminator` is None when a patch loss replaced the critic (`Config.loss`).
    """

    def __init__(self, generator: Generator, discriminator: Discriminator | None, real: Tensor,
                 z_rec: Tensor, noise_amp: Tensor | float):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.register_buffer("real", real)
        self.register_buffer("z_rec", z_rec)
        self.register_buffer("noise_amp", torch.as_tensor(noise_amp, dtype=real.dtype,
                                                          device=real.device).reshape(()))

    @classmethod
    def empty(cls, index: int, config: Config, shape: tuple[int, int]) -> Scale:
        """A scale with the right parameter and buffer shapes, to load a state dict into."""
        channels = config.channels(index)
        z_channels = 1 if index == 0 else 3
        critic = Discriminator(channels, config) if config.has_discriminator else None
        return cls(Generator(channels, config), critic, torch.zeros(1, 3, *shape),
                   torch.zeros(1, z_channels, *noise_shape(shape, config)), 0.0)


class Pyramid(nn.Module):
    """What every recipe's model shares: its config, pyramid plan and seed, the finished levels
    (`scales`), their views, and storage as config.json plus one file per finished level.

    Subclasses say what a level file holds (`save_scale`) and how to read them (`from_files`).
    """

    def __init__(self, config: Config, plan: PyramidPlan, seed: int):
        super().__init__()
        self.config = config
        self.plan = plan
        self.seed = seed
        self.scales = nn.ModuleList()

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

    def save_metadata(self, f: IO[bytes]) -> None:
        f.write(json.dumps(self.metadata(), indent=2, sort_keys=True).encode())

    def save_scale(self, index: int, f: IO[bytes]) -> None:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        """Write config.json and scale_XX.pt for every finished level; each file whole or absent."""
        directory = Path(directory)
        for index in range(len(self.scales)):
            atomic_write(directory / scale_file_name(index), lambda f, i=index: self.save_scale(i, f))
        atomic_write(directory / "config.json", self.save_metadata)


class SinGAN(Pyramid):
    """A pyramid of per-scale GANs learnt from one image, coarsest scale first.

    `plan` holds every planned level's shape; `scales` the levels trained so far (`Scale`), so a
    partly trained model samples at the resolution of its finest finished scale and training can
    resume from it.
    """

    @property
    def generators(self) -> list[Generator]:
        return [s.generator for s in self.scales]

    def save_scale(self, index: int, f: IO[bytes]) -> None:
        """Write scale `index` (tensors only, on the CPU) to a binary file object."""
        state = {k: v.detach().cpu() for k, v in self.scales[index].state_dict().items()}
        torch.save(state, f)

    @classmethod
    def from_files(cls, metadata_file: IO[bytes], scale_files: list[IO[bytes]],
                   device: str | torch.device | None = None,
                   name: str = "model") -> SinGAN | ConSinGAN:
        """Rebuild a model from config.json and the first len(scale_files) scale files.

        config.json's recipe picks the class: a ConSinGAN model loads as a `ConSinGAN`.
        """
        config, plan, seed = read_metadata(metadata_file, name)
        if config.recipe == "consingan":
            from singan.consingan import ConSinGAN  # local: singan.consingan imports this module

            return ConSinGAN.from_parts(config, plan, seed, scale_files, device=device, name=name)
        model = cls(config, plan, seed)
        for index, f in enumerate(scale_files):
            scale = Scale.empty(index, config, plan.shapes[index])
            try:
                state = torch.load(f, map_location="cpu", weights_only=True)
                # A model trained in float64 loads in float64 (load_state_dict would cast).
                scale.to(dtype=state["real"].dtype).load_state_dict(state)
            except Exception as err:  # a torn or foreign file: say which one
                raise InputError(f"{name}: {scale_file_name(index)} cannot be loaded ({err})") from err
            model.scales.append(scale.eval().requires_grad_(False))
        return model.to(device or "cpu")


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


def scale_file_name(index: int) -> str:
    return f"scale_{index:02d}.pt"


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> SinGAN | ConSinGAN:
    """Load a model saved with `SinGAN.save` or `ConSinGAN.save` (or a training output folder
    holding `model/`); config.json's recipe picks the class.

    Loads every consecutive scale file present, so a partly trained model loads too.
    """
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a SinGAN model folder (no config.json)")
    count = 0
    while (path / scale_file_name(count)).is_file():
        count += 1
    with open(path / "config.json", "rb") as meta:
        files = [open(path / scale_file_name(i), "rb") for i in range(count)]
        try:
            return SinGAN.from_files(meta, files, device=device, name=str(path))
        finally:
            for f in files:
                f.close()


def package_version() -> str:
    """The installed singan-fleet version, recorded in every model and _SUCCESS file."""
    try:
        return metadata.version("singan-fleet")
    except metadata.PackageNotFoundError:
        return "unknown"

