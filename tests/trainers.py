"""Trainers the tests give a job in code (pipeline.train_image.Trainer): real trainings whose
judged quality the test decides."""

from __future__ import annotations

from pipeline.storage import TransientError
from pipeline.train_image import Trainer


class JudgedBySeed(Trainer):
    """Real trainings whose summary says what the test wants of each seed: a swd_ratio, suspect
    above singan.metrics.verdict's limit of 6. Counts the trainings, and can fail one (a dying
    worker)."""

    def __init__(self, ratios: dict[int, float], fail_seed: int | None = None):
        self.ratios, self.fail_seed, self.seeds = ratios, fail_seed, []

    def train(self, images, config, *, seeds, **kw):
        self.seeds += list(seeds)
        if seeds[0] == self.fail_seed:
            raise TransientError("the node went away")
        return super().train(images, config, seeds=seeds, **kw)

    def summary(self, model):
        ratio = self.ratios[model.seed]
        return {"patch_swd": 0.001 * ratio, "blur_swd": 0.001, "diversity": 0.2,
                "min_sample_std": 0.2, "real_std": 0.2, "swd_ratio": ratio}
