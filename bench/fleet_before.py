"""The sleeping stand-in for `train_bucket` that bench/fleet_scale.py gives the driver of an older
commit (`start --before PATH`, the code before the fleet work: 8791515), which has no trainer
seam: a sleep, and every row of the bucket done, without storage or tracking. Imports only what
that commit has (its train_image.ImageResult and results.Status, both gone since)."""

from __future__ import annotations

import os
import time

from bench import simstore  # noqa: F401 - registers simstore:// in the workers too

# Seconds each task sleeps (the harness sets it in the environment of the cluster).
BUCKET_SECONDS_ENV = "FLEET_SIM_BUCKET_SECONDS"


def bucket_seconds() -> float:
    return float(os.environ.get(BUCKET_SECONDS_ENV) or 0.2)


def sleeping_bucket(rows, settings, inception=None, **where) -> list:
    from pipeline import results, train_image

    seconds = bucket_seconds()
    time.sleep(seconds)
    return [train_image.ImageResult(row.image_id, results.Status.DONE, None, 11, seconds, None, None,
                        f"{settings.output}/{row.image_id}", True) for row in rows]
