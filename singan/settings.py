"""Configuration: one frozen dataclass whose defaults are the reference SinGAN's, and presets.

Field names follow the reference code (SINGAN.md, in the project's shared reference folder).
Constants the reference hard-codes are named fields here. Values derived from a config and an
image (the real scale factor, the pyramid shapes) are computed by the recipe's plan
(`singan.recipes.singan.levels`, a `singan.plans.PyramidPlan`), never written back into the
config. Whether a recipe can train a config is singan.recipes.check's to say; singan.config
(in singan/api.py) makes a checked Config from a preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from singan.errors import InputError

# Boundary conditions of the generator's inputs (and of the critic's input, see models.pad).
Padding = Literal["zero", "circular", "reflect"]
PADDINGS: tuple[str, ...] = get_args(Padding)
# wgan_gp trains a critic; the others replace it by a loss between real and fake patches
# (singan.recipes.singan.adversary.ADVERSARIES implements each).
Loss = Literal["wgan_gp", "frechet", "nnpl", "annpl"]
LOSSES: tuple[str, ...] = get_args(Loss)
# How z* (the coarsest scale's reconstruction noise) is drawn: once (the paper's text), or anew
# every iteration with the last draw kept (the official code).
ZStar = Literal["fixed", "redrawn"]
Z_STARS: tuple[str, ...] = get_args(ZStar)


@dataclass(frozen=True)
class Config:
    # Pyramid (reference: min_size, max_size, scale_factor_init).
    min_size: int = 25
    max_size: int = 250
    scale_factor: float = 0.75  # the initial factor; the real one is derived per image
    num_scales: int | None = None  # fix the number of scales instead (seed study); factor derived

    # Networks (reference: nfc, min_nfc, num_layer, ker_size).
    nfc: int = 32  # channels at the coarsest scales
    max_nfc: int = 128  # channels never grow past this
    nfc_double_every: int = 4  # channels double every this many scales
    num_layer: int = 5  # head + 3 body blocks + tail
    kernel_size: int = 3
    leaky_slope: float = 0.2
    init_std: float = 0.02  # conv weights N(0, std); BN weights N(1, std)

    # Training (reference: niter, lr_g, lr_d, beta1, gamma, Dsteps, Gsteps, lambda_grad, alpha,
    # noise_amp).
    niter: int = 2000
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gamma: float = 0.1  # learning-rate decay at lr_milestone
    lr_milestone: int = 1600
    d_steps: int = 3
    g_steps: int = 3
    lambda_grad: float = 0.1  # gradient-penalty weight
    alpha: float = 10.0  # reconstruction-loss weight
    noise_amp: float = 0.1  # noise amplitude = noise_amp * RMSE(real, upsampled reconstruction)
    # z* at the coarsest scale: redrawn every iteration, the last draw kept (the official code,
    # which made the paper's figures; measured closer to the photo, docs/faithfulness.md), or
    # fixed, drawn once (the paper's text).
    z_star: ZStar = "redrawn"

    # Variants (the seed study and the applications); the defaults are the reference's.
    padding: Padding = "zero"  # border of G's inputs and D's input: zero | circular | reflect
    noise_padding: bool = False  # animation: noise drawn at the padded size, no border around it
    loss: Loss = "wgan_gp"  # wgan_gp: the paper's critic; frechet | nnpl | annpl: no D network
    patch_size: int = 7  # patch side of the frechet / nnpl / annpl losses

    # Recipe (a name registered in singan.recipes.RECIPES: singan, consingan). train_depth and
    # lr_scale only matter to ConSinGAN; SinGAN always has BatchNorm.
    # singan.config(recipe="consingan") also switches the fields above to ConSinGAN's defaults
    # (its Recipe.defaults). ConSinGAN trains num_scales stages, all channels(0) wide.
    recipe: str = "singan"
    train_depth: int = 3  # ConSinGAN: how many of the newest stages train concurrently
    lr_scale: float = 0.1  # ConSinGAN: lr factor per stage below the newest (1, 0.1, 0.01, ...)
    batch_norm: bool = True  # BatchNorm in the conv blocks; ConSinGAN's default is without

    # Bookkeeping that does not change the result.
    log_every: int = 10  # iterations between loss callbacks (one host sync each)

    def __post_init__(self) -> None:
        problems = []
        for name in ("min_size", "max_size", "nfc", "max_nfc", "nfc_double_every", "num_layer",
                     "kernel_size", "niter", "d_steps", "g_steps", "log_every", "patch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_layer < 3:
            problems.append(f"num_layer must be at least 3 (head, body, tail), got {self.num_layer}")
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd, got {self.kernel_size}")
        if not 0 < self.scale_factor < 1:
            problems.append(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        if self.num_scales is not None and (not isinstance(self.num_scales, int) or self.num_scales < 2):
            problems.append(f"num_scales must be None or an integer >= 2, got {self.num_scales!r}")
        if self.max_size < self.min_size:
            problems.append(f"max_size ({self.max_size}) is below min_size ({self.min_size})")
        if self.padding not in PADDINGS:
            problems.append(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        if not isinstance(self.noise_padding, bool):
            problems.append(f"noise_padding must be true or false, got {self.noise_padding!r}")
        if self.z_star not in Z_STARS:
            problems.append(f"z_star must be one of {', '.join(Z_STARS)}, got {self.z_star!r}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not isinstance(self.train_depth, int) or self.train_depth < 1:
            problems.append(f"train_depth must be a positive integer, got {self.train_depth!r}")
        if not self.lr_scale > 0:
            problems.append(f"lr_scale must be positive, got {self.lr_scale!r}")
        if not isinstance(self.batch_norm, bool):
            problems.append(f"batch_norm must be true or false, got {self.batch_norm!r}")
        # Whether the recipe exists and can train these settings is the registry's to say
        # (singan.recipes.check): the recipes' modules build on this one.
        if not isinstance(self.recipe, str) or not self.recipe:
            problems.append(f"recipe must be a recipe's name, got {self.recipe!r}")
        if problems:
            raise InputError("invalid config: " + "; ".join(problems))

    def channels(self, scale: int) -> int:
        """Feature channels of the generator and discriminator at `scale` (0 = coarsest)."""
        return min(self.nfc * 2 ** (scale // self.nfc_double_every), self.max_nfc)

    @property
    def pad(self) -> int:
        """Zero border that keeps the generator's output the size of its input (5 by default)."""
        return (self.kernel_size - 1) * self.num_layer // 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


PRESETS: dict[str, dict[str, Any]] = {
    # Every reference default.
    "paper": {},
    # A CPU smoke run: smaller images, narrower networks and fewer iterations, so that a 250-px
    # photo trains in a couple of minutes on two cores. Same algorithm, lower quality.
    "quick": dict(max_size=96, num_scales=4, max_nfc=32, niter=100, lr_milestone=80),
}


# --- one override syntax ----------------------------------------------------------------------
# `singan train --set FIELD=VALUE`, the batch job's `--set` and a manifest's per-row columns all
# read a field's value here, so that a value means the same thing wherever it is written.

def _field_kinds() -> tuple[dict[str, str], frozenset[str]]:
    """Every Config field's kind ("int", "float", "str" or "bool"; a choice of texts is "str"),
    and the fields that also take None (`int | None`)."""
    names = {int: "int", float: "float", str: "str", bool: "bool"}
    kinds, nullable = {}, set()
    for name, hint in typing.get_type_hints(Config).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = typing.get_args(hint) if union else (hint,)
        if type(None) in options:
            nullable.add(name)
        options = [option for option in options if option is not type(None)]
        if len(options) == 1 and typing.get_origin(options[0]) is typing.Literal:
            options = list({type(value) for value in typing.get_args(options[0])})
        if len(options) != 1 or options[0] not in names:
            # A new kind of field needs a reading in field_value and a manifest column kind.
            raise TypeError(f"Config.{name}: no override syntax for {hint}")
        kinds[name] = names[options[0]]
    return kinds, frozenset(nullable)


FIELD_KINDS, NULLABLE_FIELDS = _field_kinds()


def parse_bool(text: str) -> bool | None:
    """True for "true", False for "false" (any case, spaces around allowed), else None."""
    return {"true": True, "false": False}.get(text.strip().lower())


def field_value(name: str, value: Any) -> Any:
    """Config field `name`'s value from `value`: a text as typed after `--set name=` (`300`,
    `0.8`, `circular`, `true`, `none` where the field takes None), or a manifest cell (a number,
    a bool, a text). Raises InputError "name must be ..., got ..."; whether the value is allowed
    (a padding of that name, a positive niter) is Config's own check."""
    kind = FIELD_KINDS.get(name)
    if kind is None:
        raise InputError(f"unknown config field {name!r}; the fields are "
                         f"{', '.join(FIELD_KINDS)}")
    text = value.strip() if isinstance(value, str) else None
    if value is None or (text is not None and text.lower() == "none"):
        if name in NULLABLE_FIELDS:
            return None
        value = "none" if value is None else value
    if kind == "str":
        if isinstance(value, str):
            return value
        raise InputError(f"{name} must be a text, got {value!r}")
    if kind == "bool":
        parsed = parse_bool(value) if text is not None else value
        if isinstance(parsed, bool):
            return parsed
        raise InputError(f"{name} must be true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise InputError(f"{name} must be an integer, got {value!r}")
    try:  # float
        number = float(text if text is not None else value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return number


def parse_overrides(items: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """`FIELD=VALUE` texts (repeated `--set` options) -> config overrides, typed by field_value.
    An error names the option as given: "--set max_size=big: max_size must be an integer"."""
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in FIELD_KINDS:
            raise InputError(f"{option} {item}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(FIELD_KINDS)}")
        try:
            overrides[name] = field_value(name, text)
        except InputError as err:
            raise InputError(f"{option} {item}: {err}") from None
    return overrides
