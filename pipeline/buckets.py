"""Buckets: the manifest rows that train together in one Ray task (singan.train_many).

Rows train together when their training plans are equal: the same training config (the row's
config with its task's changes, pipeline.tasks, at the image's size) and the same pyramid. Each
image's size comes from the manifest's `height` and `width` columns (jobs/make_manifest.py
writes them) or else from the image's header, read through fsspec: a few KiB per image, many at
once. A row whose size cannot be read, or whose recipe trains one image at a time (ConSinGAN),
gets a bucket of its own; its worker then reports what is wrong. The worker groups a bucket again
by the sizes it reads itself (pipeline.train_image.train_bucket), so a wrong size column costs
speed, never correctness.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pipeline import tasks as task_registry
from pipeline.manifest import ImageTask
from pipeline.storage import read_url, redact
from singan.api import plan
from singan.errors import InputError
from singan.image import image_size
from singan.recipe import recipe_named

logger = logging.getLogger(__name__)

# Images per Ray task when the job is not told (--images-per-task): on a CPU the best K of
# `bench/train_speed.py --images K` on a 2-core machine (bench/NOTES.md); on a GPU a guess until
# bench/gpu_check.py has measured memory and speed per image there.
IMAGES_PER_TASK = {"cpu": 4, "gpu": 16}
HEADER_BLOCK = 2**16  # bytes fetched per header read: enough for PNG, JPEG (with EXIF), WebP
THREADS = 16  # header reads in flight (network round trips on object stores)


def image_sizes(rows: Sequence[ImageTask]) -> list[tuple[int, int] | None]:
    """(height, width) of each row's image as training will see it (EXIF orientation applied):
    from the row's height and width when it has them, else from the image's header; None where
    the header cannot be read (the worker will say why)."""
    unknown = [task for task in rows if task.height is None or task.width is None]
    read = iter(header_sizes([task.uri for task in unknown]))
    return [(task.height, task.width) if task.height is not None and task.width is not None
            else next(read) for task in rows]


def header_sizes(uris: Sequence[str]) -> list[tuple[int, int] | None]:
    """(height, width) of each image from its header, read through fsspec, many at once; None
    where it cannot be read."""
    def size(uri: str) -> tuple[int, int] | None:
        try:
            return _header_size(uri)
        except Exception as err:  # noqa: BLE001 - a bad image fails in its own bucket
            logger.info("%s: size unknown (%s)", redact(uri), err)
            return None

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(size, uris))


def _header_size(uri: str) -> tuple[int, int]:
    return image_size(io.BytesIO(read_url(uri, end=HEADER_BLOCK)), redact(uri))


def bucket_key(task: ImageTask, size: tuple[int, int] | None) -> tuple | None:
    """What rows that train together share (training config and plan), or None when this row
    trains alone (unknown size, a recipe that does not batch, settings that fail)."""
    if size is None or not recipe_named(task.config.recipe).batches:
        return None
    try:
        config = task_registry.task_named(task.task).training_config(task.config, task.params,
                                                                     *size)
        return config, plan(*size, config)
    except InputError:
        return None  # the worker fails the row with this error


def make_buckets(rows: Sequence[ImageTask], per_task: int,
                 sizes: Sequence[tuple[int, int] | None] | None = None) -> list[list[ImageTask]]:
    """The rows in buckets of at most `per_task` rows of one plan, in manifest order of each
    bucket's first row; `sizes` as image_sizes gives them (read when not given)."""
    if per_task < 1:
        raise InputError(f"images per task must be at least 1, got {per_task}")
    sizes = image_sizes(rows) if sizes is None else sizes
    open_buckets: dict[tuple, list[ImageTask]] = {}
    buckets: list[list[ImageTask]] = []
    for task, size in zip(rows, sizes, strict=True):
        key = bucket_key(task, size)
        if key is None:
            buckets.append([task])
            continue
        bucket = open_buckets.get(key)
        if bucket is None or len(bucket) == per_task:
            bucket = open_buckets[key] = []
            buckets.append(bucket)
        bucket.append(task)
    return buckets
