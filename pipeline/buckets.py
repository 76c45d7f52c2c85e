"""Buckets: the manifest rows that train together in one Ray task (singan.train_many), made as the
rows stream by.

Rows train together when their training plans are equal: the same training config (the row's
config with its task's changes, pipeline.tasks, at the image's size) and the same pyramid. Each
image's size comes from the manifest's `height` and `width` columns (jobs/make_manifest.py
writes them) or else from the image's header, read through storage a few KiB at a time, a
bounded number at once, ahead of the rows the job is about to submit (so beside the trainings
already running, never all before the first). A row whose size cannot be read, or whose recipe
trains one image at a time (ConSinGAN), gets a bucket of its own; its worker then reports what
is wrong. The worker groups a bucket again by the sizes it reads itself
(pipeline.train_image.train_bucket), so a wrong size column costs speed, never correctness.
"""

from __future__ import annotations

import functools
import io
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline.manifest import ManifestRow
from pipeline.storage import read_url, redact
from singan.api import plan
from singan.data.decode import image_size
from singan.errors import InputError
from singan.recipes import recipe_named
from singan.settings import Config

logger = logging.getLogger(__name__)

# Images per Ray task when the job is not told (--images-per-task): on a CPU the best K of
# `bench/train_speed.py --images K` on a 2-core machine (bench/NOTES.md); on a GPU a guess until
# bench/gpu_check.py has measured memory and speed per image there.
IMAGES_PER_TASK = {"cpu": 4, "gpu": 16}
HEADER_BLOCK = 2**16  # bytes fetched per header read: enough for PNG, JPEG (with EXIF), WebP
THREADS = 16  # header reads in flight (network round trips on object stores)
READ_AHEAD = 256  # rows whose headers are read ahead of the row the job takes next
# Partial buckets kept open, waiting for rows of their plan; past this many, the oldest goes
# out as it is, so that a collection of many different sizes keeps the driver's memory flat.
MAX_OPEN_BUCKETS = 1024

Size = tuple[int, int]


def with_sizes(rows: Iterable[ManifestRow]) -> Iterator[tuple[ManifestRow, Size | None]]:
    """Each row with its image's (height, width) as training will see it (EXIF orientation
    applied): the row's own columns when it has them, else the image's header, read in a pool
    of THREADS, at most READ_AHEAD rows ahead; None where the header cannot be read (the worker
    will say why). In manifest order; no storage call for a row that gives its size."""
    with ThreadPoolExecutor(THREADS) as pool:
        ahead: deque[tuple[ManifestRow, Size | Future | None]] = deque()
        for row in rows:
            known = row.height is not None and row.width is not None
            ahead.append((row, (row.height, row.width) if known
                          else pool.submit(_header_size, row.uri)))
            while ahead and (len(ahead) > READ_AHEAD or _done(ahead[0][1])):
                yield _ready(ahead.popleft())
        while ahead:
            yield _ready(ahead.popleft())


def _done(size: Size | Future) -> bool:
    return not isinstance(size, Future) or size.done()


def _ready(item: tuple[ManifestRow, Size | Future]) -> tuple[ManifestRow, Size | None]:
    row, size = item
    return row, size.result() if isinstance(size, Future) else size


def _header_size(uri: str) -> Size | None:
    try:
        return image_size(io.BytesIO(read_url(uri, end=HEADER_BLOCK)), redact(uri))
    except Exception as err:  # noqa: BLE001 - a bad image fails in its own bucket
        logger.info("%s: size unknown (%s)", redact(uri), err)
        return None


def header_sizes(uris: Iterable[str]) -> list[Size | None]:
    """(height, width) of each image from its header, many at once; None where it cannot be
    read (jobs/make_manifest.py writes them into the manifest)."""
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(_header_size, uris))


def bucket_key(row: ManifestRow, size: Size | None) -> tuple | None:
    """What rows that train together share (training config and plan), or None when this row
    trains alone (unknown size, a recipe that does not batch, settings that fail)."""
    if size is None or not recipe_named(row.config.recipe).batches:
        return None
    return _plan_key(row.config, row.task, tuple(sorted(row.params.items())), *size)


@functools.lru_cache(maxsize=65536)
def _plan_key(config: Config, task, params: tuple, height: int, width: int) -> tuple | None:
    try:
        training = task.training_config(config, dict(params), height, width)
        return training, plan(height, width, training)
    except InputError:
        return None  # the worker fails the row with this error


def buckets(rows: Iterable[ManifestRow], per_task: int) -> Iterator[list[ManifestRow]]:
    """The rows in buckets of at most `per_task` rows of one plan, each yielded as soon as it is
    full (a row that trains alone at once); the partial ones at the end, in the order of their
    first row, or earlier when more than MAX_OPEN_BUCKETS wait."""
    if per_task < 1:
        raise InputError(f"images per task must be at least 1, got {per_task}")
    open_buckets: dict[tuple, list[ManifestRow]] = {}  # insertion order: oldest first
    for row, size in with_sizes(rows):
        key = bucket_key(row, size)
        if key is None:
            yield [row]
            continue
        bucket = open_buckets.setdefault(key, [])
        bucket.append(row)
        if len(bucket) == per_task:
            yield open_buckets.pop(key)
        elif len(open_buckets) > MAX_OPEN_BUCKETS:
            yield open_buckets.pop(next(iter(open_buckets)))
    yield from open_buckets.values()
