"""What an image's training leaves behind as it goes: every scale's files in the image's folder and
its points, pictures and values in the image's MLflow run.

    {output}/{image_id}/model/scale_XX.pt, model/config.json   the scale's level (resume point)
    {output}/{image_id}/reals/scale_XX.png, samples/scale_XX.png
    {output}/{image_id}/metrics/scale_XX.jsonl                  the scale's points, written once

The files come from the job's trainer (pipeline.train_image.Trainer: SinGAN's pictures, or a
simulation's); this module stores and tracks them the same way for every trainer, so that a
simulated job makes the real job's storage and MLflow requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from pipeline.storage import ImageStore
from pipeline.tracking import ImageRun, is_artifact, picture_of, point, points_bytes, points_file
from singan.base import Callback, IterationLog, Pyramid

LOSSES = ("d_real", "d_fake", "gradient_penalty", "g_adv", "reconstruction")


class TrackedFolder:
    """The image's folder as singan.data.outputs writes it: every file goes to the store; the sample
    grids to the run's image views as well (tracking.picture_of), the task's outputs to its
    artifacts (tracking.ARTIFACTS)."""

    def __init__(self, store: ImageStore, run: ImageRun):
        self.store, self.run = store, run

    def put(self, name: str, data: bytes) -> None:
        self.store.put(name, data)
        picture = picture_of(name)
        if picture is not None:
            self.run.log_picture(*picture, data)
        elif is_artifact(name):
            self.run.log_artifact(name, data)

    def put_all(self, files: Mapping[str, bytes]) -> None:
        """Write `files` in their order (a scale's model file and config.json come last)."""
        for name, data in files.items():
            self.put(name, data)


class ImageRecorder(Callback):
    """Stores every finished scale of one image (its files and points) and tracks it.

    `level_files(model, scale)` and `scale_metrics(model)` are the trainer's: the files of a
    finished scale, in the order they must be written, and the values measured on it (SIFID,
    patch metrics). `mlflow_every`: the iterations between the loss points MLflow gets (all
    that the training reports stay in the folder). `on_stored(store, scale)` runs once a scale is
    stored (tests kill the worker there).
    """

    def __init__(self, store: ImageStore, run: ImageRun, *,
                 level_files: Callable[[Pyramid, int], Mapping[str, bytes]],
                 scale_metrics: Callable[[Pyramid], dict[str, float]],
                 mlflow_every: int,
                 on_stored: Callable[[ImageStore, int], None] | None = None):
        self.store, self.run = store, run
        self.level_files, self.scale_metrics = level_files, scale_metrics
        self.mlflow_every, self.on_stored = mlflow_every, on_stored
        self.points: list[dict] = []  # the scale being trained
        self.scale_start = 0.0
        self.noise_amp = 0.0
        # The values of the latest scale; after training, the finest scale's (the final ones).
        self.last: dict[str, float] = {}

    @property
    def sifid(self) -> float | None:
        return self.last.get("sifid")

    def on_scale_start(self, model: Pyramid, scale: int, noise_amp: float) -> None:
        self.scale_start = time.perf_counter()
        self.noise_amp = noise_amp
        self.points = []

    def on_iteration(self, log: IterationLog) -> None:
        values = {name: getattr(log, name) for name in LOSSES}
        values["d_loss"] = log.d_loss
        values["g_loss"] = log.g_adv + log.reconstruction
        sent = self.run.enabled and (log.iteration % self.mlflow_every == 0
                                     or log.iteration == log.niter)
        # Without a critic (a patch loss in its place) the D terms are None: nothing to log.
        points = [point(f"s{log.scale:02d}/{name}", value, log.iteration, log.scale, mlflow=sent)
                  for name, value in values.items() if value is not None]
        self.points += points
        self.run.log_points(points)

    def on_scale_end(self, model: Pyramid, scale: int) -> None:
        # The points, then the scale's files, its model file last (the resume point): a worker
        # dying in between leaves points of an unfinished scale, which the retry writes again.
        values = {"noise_amp": self.noise_amp,
                  "scale_seconds": time.perf_counter() - self.scale_start,
                  **self.scale_metrics(model)}
        self.last = values
        points = [point(key, value, scale, scale, mlflow=self.run.enabled)
                  for key, value in values.items()]
        self.points += points
        self.store.put(points_file(scale), points_bytes(self.points))
        TrackedFolder(self.store, self.run).put_all(self.level_files(model, scale))
        self.run.log_points(points)
        self.run.flush()
        if self.on_stored is not None:
            self.on_stored(self.store, scale)
