"""The outline of one level's training, the same for every recipe: the callbacks hear that the
level starts, the recipe's step runs `niter` times, the losses are reported every `log_every`
iterations (the loop's only host sync), an image whose losses stop being finite stops there,
and at the end each image's level is frozen into its model and announced. What a step does, the
paper's algorithm, stays in the recipe's training.py and reads top to bottom there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from singan.base import Callback, IterationLog, Pyramid, is_log_step

if TYPE_CHECKING:
    from singan.settings import Config

logger = logging.getLogger(__name__)

# One iteration of a recipe: iteration (1 .. niter) -> its five loss terms (d_real, d_fake,
# gradient_penalty, g_adv, reconstruction; None where a term does not exist), one value per
# image each (a 0-d tensor for a recipe that trains one image).
Step = Callable[[int], Sequence[Tensor | None]]


def run_level(models: Sequence[Pyramid], level: int, noise_amps: Sequence[float],
              callbacks: Sequence[Sequence[Callback]], config: Config, step: Step,
              *, unit: str = "scale") -> dict[int, str]:
    """Announce level `level` of each model (with its noise amplitude), run `step` for
    config.niter iterations and report its losses; returns the images whose losses became
    non-finite, with the reason (`unit` names a level in it: scale, stage). The loop ends early
    when no image is left."""
    for model, hooks, amp in zip(models, callbacks, noise_amps, strict=True):
        for callback in hooks:
            callback.on_scale_start(model, level, amp)
    failed: dict[int, str] = {}
    for iteration in range(1, config.niter + 1):
        terms = step(iteration)
        if not is_log_step(iteration, config):
            continue
        for index, entry in enumerate(IterationLog.each(level, iteration, config.niter, *terms)):
            if index in failed:
                continue
            if not entry.finite:
                failed[index] = (f"losses became non-finite at {unit} {level}, iteration "
                                 f"{iteration}")
                logger.warning("image %d (seed %d): %s", index, models[index].seed,
                               failed[index])
                continue
            for callback in callbacks[index]:
                callback.on_iteration(entry)
        if len(failed) == len(models):
            break
    return failed


def end_level(models: Sequence[Pyramid], level: int, failed: dict[int, str],
              callbacks: Sequence[Sequence[Callback]], freeze: Callable[[int], None]) -> None:
    """Each model that finished the level gets it (`freeze(index)` appends it) and its
    callbacks hear so; one that failed gets `failure` (the reason) instead."""
    for index, model in enumerate(models):
        if index in failed:
            model.failure = failed[index]
            continue
        freeze(index)
        for callback in callbacks[index]:
            callback.on_scale_end(model, level)
