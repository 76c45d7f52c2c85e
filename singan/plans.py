"""The plan of a pyramid: the levels' sizes that every recipe's plan computes (SinGAN's scales,
ConSinGAN's stages), stored with each model."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PyramidPlan:
    """The sizes of one image's pyramid, derived from the image size and a `Config`.

    real_shape: the input resized to fit max_size (never upscaled); the finest level.
    scale1: the factor that maps the input to `real_shape` (1 when the input already fits).
    scale_factor: the real ratio between consecutive levels (the config holds only the initial one).
    shapes: (height, width) of every level, coarsest first; the last is `real_shape`.
    """

    real_shape: tuple[int, int]
    scale1: float
    scale_factor: float
    shapes: tuple[tuple[int, int], ...]

    @property
    def num_scales(self) -> int:
        """Number of levels (the reference's stop_scale + 1)."""
        return len(self.shapes)

    @property
    def stop_scale(self) -> int:
        """Index of the finest level (the reference's stop_scale)."""
        return len(self.shapes) - 1

    def to_dict(self) -> dict:
        return {"real_shape": list(self.real_shape), "scale1": self.scale1,
                "scale_factor": self.scale_factor, "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, values: dict) -> PyramidPlan:
        return cls(real_shape=tuple(values["real_shape"]), scale1=float(values["scale1"]),
                   scale_factor=float(values["scale_factor"]),
                   shapes=tuple(tuple(s) for s in values["shapes"]))


def shrunk_shape(height: int, width: int, scale1: float, max_size: int) -> tuple[int, int]:
    """The size an image is shrunk to by `scale1` to fit `max_size`: the reference's resize gives
    the plain ceil of the float product, and float error can round a side shrunk to max_size up
    to max_size + 1 (1920 * 250/1920 > 250, 650 * 48/650 > 48); that side is kept at max_size."""
    return (min(math.ceil(height * scale1), max_size), min(math.ceil(width * scale1), max_size))


def first_not_shrinking(shapes: tuple[tuple[int, int], ...]) -> int | None:
    """The first level i whose next one (i + 1) is not larger on both sides, or None: a
    pyramid whose levels do not shrink would train two levels on the same image."""
    for i, (coarse, fine) in enumerate(zip(shapes, shapes[1:])):
        if coarse == fine or coarse[0] > fine[0] or coarse[1] > fine[1]:
            return i
    return None
