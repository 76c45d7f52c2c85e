"""A trained model's summary (what its samples look like, in numbers) and a verdict on it: ok or
suspect, with the reason, from a rule that needs only that model and its own real image.

SinGAN sometimes fails quietly: black or one-colour samples, samples that are all the same
picture, or samples whose patches are nothing like the image's. At 100,000 images that is
hundreds of models nobody should use, found without looking at each. The rule (`judge`):

- any value not finite (NaN, inf): suspect;
- a blank sample (its pixels vary less than BLANK_STD, in [0, 1] units) of an image that is not
  blank itself: suspect;
- collapsed diversity (the paper's measure below MIN_DIVERSITY: the samples are near copies of
  each other): suspect;
- a runaway patch SWD: the samples' patch SWD against the real image more than MAX_SWD_RATIO
  times that of the real image's blurred copy (the previous scale's real image, upsampled),
  the yardstick a working model's samples stay within.

bench/quality_rule.py measures the rule on the fidelity runs' recorded metrics (README, "Quality
verdict").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from singan.api import reconstruct, sample
from singan.base import Pyramid
from singan.errors import InputError
from singan.metrics.patches import nn_patch_distance, patch_swd
from singan.resize import imresize

BLANK_STD = 0.01  # [0, 1] units: a sample whose pixels vary less is blank (black or one colour)
MIN_DIVERSITY = 0.05  # the paper's diversity below this: the samples are near copies
MAX_SWD_RATIO = 6.0  # samples' patch SWD over the blurred real image's (bench/quality_rule.py)
SUMMARY_SAMPLES = 8  # samples drawn for the summary
OK, SUSPECT = "ok", "suspect"


@dataclass(frozen=True)
class Summary:
    """Numbers about one trained model at full size (images in [0, 1] units)."""

    patch_swd: float  # samples vs the real image, mean over samples
    nn_patch_distance: float  # mean over samples: near 0 copies the image, larger invents
    diversity: float  # the paper's: std over samples per pixel, mean, over the real image's std
    reconstruction_rmse: float  # the reconstruction vs the real image
    blur_swd: float  # the real image's blurred copy vs the real image: patch_swd's yardstick
    min_sample_std: float  # the pixel std of the flattest sample (a blank one is ~0)
    real_std: float  # the real image's pixel std (a blank image makes blank samples)

    @property
    def swd_ratio(self) -> float:
        return self.patch_swd / self.blur_swd if self.blur_swd > 0 else math.inf

    def metrics(self) -> dict[str, float]:
        """The values as named metrics, swd_ratio included."""
        return {**asdict(self), "swd_ratio": self.swd_ratio}


@dataclass(frozen=True)
class Verdict:
    quality: str  # OK or SUSPECT
    reason: str | None = None  # why it is suspect

    @property
    def ok(self) -> bool:
        return self.quality == OK


def summarize(model: Pyramid, *, num: int = SUMMARY_SAMPLES, seed: int = 0) -> Summary:
    """Draw `num` (at least 2) samples of the finished model, seeded, and measure them."""
    if num < 2:
        raise InputError(f"a summary needs at least 2 samples (diversity), got {num}")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        samples = sample(model, num, generator=generator)
        rebuilt = reconstruct(model)
    real = model.reals[-1]
    return Summary(
        patch_swd=_mean(patch_swd(real, x) for x in samples.split(1)),
        nn_patch_distance=_mean(nn_patch_distance(real, x) for x in samples.split(1)),
        diversity=float(samples.std(dim=0).mean() / real.std()),
        reconstruction_rmse=float(((rebuilt - real) / 2).pow(2).mean().sqrt()),
        blur_swd=blur_swd(model.reals),
        min_sample_std=float((samples / 2).flatten(1).std(dim=1).min()),
        real_std=float((real / 2).std()))


def blur_swd(reals: list[Tensor]) -> float:
    """The patch SWD between the finest real image and the next coarser one upsampled to its
    size: how far a blurred copy of the image is from it."""
    if len(reals) < 2:
        return math.nan
    real = reals[-1]
    return patch_swd(real, imresize(reals[-2], shape=tuple(real.shape[-2:])))


def judge(summary: Summary | dict) -> Verdict:
    """The verdict on a model from its summary, or from its metrics() as stored (a rule whose
    values are missing is left out: bench/quality_rule.py judges recorded runs that way)."""
    values = summary.metrics() if isinstance(summary, Summary) else dict(summary)
    bad = sorted(k for k, v in values.items() if k != "swd_ratio" and not _finite(v))
    if bad:
        return Verdict(SUSPECT, f"not a number: {', '.join(bad)}")
    flattest, real_std = values.get("min_sample_std"), values.get("real_std")
    if flattest is not None and real_std is not None and flattest < BLANK_STD <= real_std:
        return Verdict(SUSPECT, f"a blank sample (pixel std {flattest:.4f} < {BLANK_STD})")
    diversity = values.get("diversity")
    if diversity is not None and diversity < MIN_DIVERSITY:
        return Verdict(SUSPECT, f"collapsed diversity ({diversity:.3f} < {MIN_DIVERSITY}: the "
                                "samples are near copies)")
    swd, yardstick = values.get("patch_swd"), values.get("blur_swd")
    if swd is not None and yardstick and swd / yardstick > MAX_SWD_RATIO:
        return Verdict(SUSPECT, f"runaway patch SWD ({swd:.4f}, {swd / yardstick:.1f}x the "
                                f"blurred image's {yardstick:.4f}; limit {MAX_SWD_RATIO:g}x)")
    return Verdict(OK)


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
