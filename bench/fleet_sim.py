"""The simulated trainer of bench/fleet_scale.py: the computing half of a training task
(pipeline.train_image.Trainer) replaced by sleeps and placeholder bytes, so that the job's own
storing and tracking half (pipeline.train_image, pipeline.recording, pipeline.tracking) makes the
real job's storage and MLflow requests at any scale on this machine.

    SimulatedTrainer    read_image: a zero tensor of the row's size (the GET happened already);
                        train: per scale, on_scale_start, a sleep, on_iteration every log_every
                        iterations and at niter, on_scale_end (singan.train's order and counts);
                        level_files / final_files: placeholder bytes under singan.data.outputs'
                        names; resume_point: model/config.json and the scale files read back
                        through the store (real GETs), as ImageStore.load_model does
    sleeping_bucket     train_bucket without storage or tracking (fleet_scale.py --driver-only)
    simulated_evaluation
                        pipeline.evaluate.evaluate_models' reads of each model's _SUCCESS
                        files, and made-up numbers (fleet_scale.py evaluate --job)

Given to the job in code only (jobs/train_manifest.main(trainer=...)); no option of the product
reaches it. Importing this module registers the simulated store (bench/simstore.py): Ray workers
import it when they unpickle the trainer. Each process appends its trainings' starts and ends
to `{events}/{pid}.events` (time, images: +K at a start, -K at an end), from which the harness
counts the trainings running at once.
"""

from __future__ import annotations

import functools
import io
import json
import os
import time
from collections.abc import Sequence

import torch

from bench import simstore  # noqa: F401 - registers simstore:// in every process that trains
from bench.fleet_before import bucket_seconds
from pipeline.evaluate import EvalResult, EvalSettings
from pipeline.ledger import Entry, Status, now_iso
from pipeline.manifest import ManifestRow, config_hash
from pipeline.storage import SUCCESS, ImageStore
from pipeline.train_image import JobSettings, Trainer
from singan.api import plan as plan_of
from singan.base import FORMAT_VERSION, IterationLog, is_log_step, scale_file_name
from singan.data.decode import image_size
from singan.data.image import png_bytes
from singan.plans import PyramidPlan
from singan.settings import Config


class SimulatedModel:
    """What pipeline/train_image.py and pipeline/recording.py read of a model: its finished
    `scales`, the planned `num_scales`, `failure`; and what config.json holds."""

    def __init__(self, config: Config, plan, seed: int, finished: int = 0):
        self.config, self.plan, self.seed = config, plan, seed
        self.scales: list[int] = list(range(finished))
        self.failure: str | None = None

    @property
    def num_scales(self) -> int:
        return self.plan.num_scales

    def metadata_bytes(self) -> bytes:
        """config.json as singan.base.Pyramid.metadata writes it."""
        return json.dumps({"format_version": FORMAT_VERSION, "package_version": "simulated",
                           "config": self.config.to_dict(), "plan": self.plan.to_dict(),
                           "seed": self.seed, "finished_scales": len(self.scales)},
                          indent=2, sort_keys=True).encode()


class SimulatedTrainer(Trainer):
    """Sleeps `seconds_per_scale` per scale of a bucket (its images train together, as
    singan.train_many); pictures of `picture_bytes` and scale files of `level_bytes` bytes."""

    def __init__(self, seconds_per_scale: float = 1.0, picture_bytes: int = 4096,
                 level_bytes: int = 16384, events: str | None = None):
        self.seconds_per_scale = seconds_per_scale
        self.picture_bytes, self.level_bytes = picture_bytes, level_bytes
        self.events = events

    def read_image(self, data: bytes, name: str, height: int | None,
                   width: int | None) -> torch.Tensor:
        if height is None or width is None:
            height, width = image_size(io.BytesIO(data), name)
        return torch.zeros(1, 3, height, width)

    def resume_point(self, store: ImageStore, row: ManifestRow, config: Config,
                     device: torch.device) -> SimulatedModel | None:
        meta = store.get("model/config.json")
        if meta is None:
            return None
        values = json.loads(meta)
        finished = 0
        for index in range(int(values.get("finished_scales", 0))):
            if store.get(f"model/{scale_file_name(index)}") is None:
                break
            finished += 1
        if Config.from_dict(values["config"]) != config or values["seed"] != row.seed:
            return None
        if not finished:
            return None
        return SimulatedModel(config, PyramidPlan.from_dict(values["plan"]), row.seed, finished)

    def train(self, images: Sequence[torch.Tensor], config: Config, *, seeds: Sequence[int],
              device: torch.device, callbacks, resume) -> list[SimulatedModel]:
        plan = plan_of(*images[0].shape[-2:], config)
        models = (list(resume) if resume is not None else
                  [SimulatedModel(config, plan, seed) for seed in seeds])
        self._event(len(images))
        try:
            for scale in range(len(models[0].scales), plan.num_scales):
                # 1. The scale starts (singan.train: after the noise amplitude is known).
                for index, (model, hooks) in enumerate(zip(models, callbacks, strict=True)):
                    amp = 1.0 if scale == 0 else 0.1 / (1 + scale + index % 7)
                    for callback in hooks:
                        callback.on_scale_start(model, scale, amp)
                # 2. Its iterations: the time, then the losses every log_every iterations.
                time.sleep(self.seconds_per_scale)
                for iteration in range(1, config.niter + 1):
                    if not is_log_step(iteration, config):
                        continue
                    for index, hooks in enumerate(callbacks):
                        shrink = 1.0 / (1 + iteration / 100 + index % 5)
                        log = IterationLog(scale, iteration, config.niter, -1.0 * shrink,
                                           0.9 * shrink, 0.01 * shrink, -0.8 * shrink,
                                           0.05 * shrink)
                        for callback in hooks:
                            callback.on_iteration(log)
                # 3. The scale is frozen into each model, then its callbacks store it.
                for model, hooks in zip(models, callbacks, strict=True):
                    model.scales.append(scale)
                    for callback in hooks:
                        callback.on_scale_end(model, scale)
        finally:
            self._event(-len(images))
        return models

    def _event(self, images: int) -> None:
        if self.events:
            os.makedirs(self.events, exist_ok=True)
            with open(os.path.join(self.events, f"{os.getpid()}.events"), "a") as file:
                file.write(f"{time.time():.3f} {images}\n")

    def load_stem(self, inception: dict | None, device: torch.device) -> None:
        return None

    def level_files(self, model: SimulatedModel, scale: int) -> dict[str, bytes]:
        """singan.data.outputs.write_level's files, in its order."""
        return {f"reals/scale_{scale:02d}.png": _picture(self.picture_bytes // 2),
                f"samples/scale_{scale:02d}.png": _picture(self.picture_bytes),
                f"model/{scale_file_name(scale)}": _placeholder(self.level_bytes),
                "model/config.json": model.metadata_bytes()}

    def final_files(self, model: SimulatedModel, row: ManifestRow,
                    num_samples: int) -> dict[str, bytes]:
        """singan.data.outputs.write_final's files, in its order (a plain training's task adds
        none)."""
        files = {f"samples/sample_{index:02d}.png": _picture(self.picture_bytes // 2)
                 for index in range(num_samples)}
        files["samples/reconstruction.png"] = _picture(self.picture_bytes // 2)
        files["samples/final.png"] = _picture(self.picture_bytes * 2)
        return files

    def summary(self, model: SimulatedModel) -> dict[str, float]:
        """A working model's summary (the verdict's inputs), without computing anything."""
        return dict(patch_swd=0.03, nn_patch_distance=0.11, diversity=0.33,
                    reconstruction_rmse=0.02, blur_swd=0.011, min_sample_std=0.2, real_std=0.21,
                    swd_ratio=0.03 / 0.011)

    def scale_metrics(self, model: SimulatedModel, job: JobSettings,
                      stem) -> dict[str, float]:
        """The keys Trainer.scale_metrics gives (SIFID only with a stem, which this has not)."""
        if not job.quality_samples:
            return {}
        scale = len(model.scales) - 1
        return {"patch_swd": 0.05 + 0.01 * scale, "nn_patch_distance": 0.2 + 0.01 * scale}


def _placeholder(size: int) -> bytes:
    return b"\x89SIM" + bytes(max(0, size - 4))


@functools.cache
def _picture(size: int) -> bytes:
    """A real PNG of about `size` bytes (noise does not compress: 3 bytes a pixel), since the
    tracking decodes the sample grids to make the WebP MLflow's image views load."""
    side = max(1, round((size / 3) ** 0.5))
    noise = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(size))
    return png_bytes(noise * 2 - 1)


def sleeping_bucket(rows: Sequence[ManifestRow], job: JobSettings, inception: dict | None = None,
                    *, device: str | None = None, node: str | None = None) -> list[Entry]:
    """train_bucket without storage nor tracking: a sleep (FLEET_SIM_BUCKET_SECONDS), and every
    row done (measures the driver alone; no ledger file is written)."""
    seconds = bucket_seconds()
    time.sleep(seconds)
    return [Entry(row.image_id, Status.DONE, None, 9, seconds, None, None,
                  f"{job.output}/{row.image_id}", config_hash=config_hash(row), job_id=job.job_id,
                  node=node, device=device, finished_at=now_iso()) for row in rows]


def simulated_evaluation(items: list[tuple[str, str]], settings: EvalSettings, inception: dict,
                         *, device: str | None = None, node: str | None = None) -> list[EvalResult]:
    """pipeline.evaluate.evaluate_models' first reads of each model (the evaluation's _SUCCESS,
    the training's _SUCCESS: two GETs), then made-up numbers instead of samples and SIFID; no
    writes (the evaluation's LIST count is what fleet_scale.py measures)."""
    results = []
    for image_id, models in items:
        ImageStore(settings.out, image_id).get_json(SUCCESS)
        ImageStore(models, image_id).success()
        value = (hash(image_id) % 1000) / 1000
        rows = [{"image_id": image_id, "start": name, "start_scale": index, "sample": k,
                 "sifid": value + k / 100, "patch_swd": 0.1, "nn_patch_distance": 0.2,
                 "recipe": "singan"}
                for name, index in settings.starts for k in range(settings.samples)]
        summary = {name: {"sifid_mean": value, "sifid_std": 0.01, "diversity": 0.5,
                          "patch_swd_mean": 0.1, "nn_patch_distance_mean": 0.2}
                   for name, _ in settings.starts}
        results.append(EvalResult(image_id, Status.DONE, None, rows, summary, 0.0))
    return results

