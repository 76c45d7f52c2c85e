"""The `sr` and `animate` tasks of a manifest row: the config they train with, and what they
make of the trained model, beside the files every training writes:

    {image}/sr/sr_x{f}.png                        the image super-resolved by f (singan.apps.sr)
    {image}/sr/bicubic_x{f}.png                   bicubic resizing to the same size, to compare
    {image}/animate/start_scale_{s}/beta_{b}.gif  one GIF per momentum b and start scale s of
                                                  singan.apps.animate's grid (b as 0.80 ... 0.95)

Each file is also an artifact of the image's MLflow run, under the same name. The files are
written before _SUCCESS, so an image whose worker died in between makes them again on its retry
(from the finished model, which the retry resumes without training).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.storage import ImageStore
from pipeline.tracking import ImageRun
from singan.apps.animate import ALPHA, BETAS, START_SCALES, animate, animation_config
from singan.apps.gif import save_gif
from singan.apps.sr import sr_config, super_resolve
from singan.config import Config
from singan.models import SinGAN
from singan.resize import imresize

if TYPE_CHECKING:  # pipeline.manifest checks rows with training_config: no import at run time
    from pipeline.manifest import ImageTask

logger = logging.getLogger(__name__)


def training_config(task: ImageTask, height: int, width: int) -> Config:
    """The config `task` trains with, for its image of `height` x `width`: the row's config, with
    what the task needs on top (sr: full size, alpha 100, min_size 18, the per-step factor;
    animate: noise padding, min_size 20)."""
    if task.task == "sr":
        return sr_config(height, width, task.params["sr_factor"], base=task.config)
    if task.task == "animate":
        return animation_config(task.config)
    return task.config


def write_outputs(task: ImageTask, model: SinGAN, store: ImageStore, run: ImageRun) -> list[str]:
    """Write the task's files into the image's folder and log each as an artifact of `run`;
    their names (none for `train`)."""
    if task.task == "sr":
        return _super_resolve(model, task.params["sr_factor"], store, run)
    if task.task == "animate":
        return _animate(model, task.params["frames"], task.params["fps"], store, run)
    return []


def _super_resolve(model: SinGAN, factor: float, store: ImageStore, run: ImageRun) -> list[str]:
    generator = torch.Generator(device=model.device).manual_seed(model.seed)
    result = super_resolve(model, factor, generator=generator)
    bicubic = imresize(model.reals[-1], shape=tuple(result.shape[-2:]))
    names = [f"sr/sr_x{factor:g}.png", f"sr/bicubic_x{factor:g}.png"]
    for name, picture in zip(names, (result, bicubic), strict=True):
        run.log_artifact(name, store.put_png(name, picture))
    logger.info("%s: super-resolved x%g to %dx%d", store.image_id, factor, *result.shape[-2:])
    return names


def _animate(model: SinGAN, frames: int, fps: float, store: ImageStore,
             run: ImageRun) -> list[str]:
    # One generator for the whole grid, drawn in a fixed order: every rerun makes the same GIFs.
    generator = torch.Generator(device=model.device).manual_seed(model.seed)
    names = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.gif"  # save_gif writes files; the store takes bytes
        for start_scale in (s for s in START_SCALES if s < model.num_scales):
            for beta in BETAS:
                clip = animate(model, alpha=ALPHA, beta=beta, start_scale=start_scale,
                               frames=frames, generator=generator)
                save_gif(clip, path, fps=fps)
                name = f"animate/start_scale_{start_scale}/beta_{beta:.2f}.gif"
                data = path.read_bytes()
                store.put(name, data)
                run.log_artifact(name, data)
                names.append(name)
    logger.info("%s: %d animations of %d frames", store.image_id, len(names), frames)
    return names
