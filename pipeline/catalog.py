"""Making a manifest: the images of a collection (a folder, a bucket prefix, a glob), each with a
path-safe id, written as a Parquet manifest that `pipeline.manifest` reads back."""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.manifest import COLUMN_KINDS, MAX_ID_LENGTH, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from pipeline.storage import redact
from singan.errors import InputError, one_line
from singan.image import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # what `singan` reads from a folder too


def write_manifest(rows: list[dict], url: str) -> None:
    """Write rows (dicts of `image_id`, `uri` and optional OPTIONAL_COLUMNS) as a Parquet manifest
    at `url` (any fsspec URL). A missing or None value is written as null (the job's value).
    Integer columns are int64, float columns float64, text columns string, true/false columns
    bool, so `read_manifest` accepts what this writes.
    """
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    unknown = sorted({key for row in rows for key in row} - set(allowed))
    if unknown:
        raise InputError(f"unknown manifest columns: {', '.join(unknown)}; "
                         f"allowed: {', '.join(allowed)}")
    columns = [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if any(c in row for row in rows))]
    arrow_types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(),
                   "bool": pa.bool_()}
    arrays = {}
    for column in columns:
        kind = COLUMN_KINDS.get(column)
        arrow_type = pa.string() if kind is None else arrow_types[kind]
        try:
            arrays[column] = pa.array([row.get(column) for row in rows], type=arrow_type)
        except (pa.ArrowException, TypeError, ValueError) as error:
            raise InputError(f"manifest column {column!r}: {one_line(error)}") from error
    table = pa.table(arrays)

    fs, path = fsspec.core.url_to_fs(url)
    if _is_local(fs):
        # Whole or absent: a reader never sees a half-written local file.
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open(temporary, "wb") as file:
            pq.write_table(table, file)
        os.replace(temporary, path)
    else:
        # Object stores publish an object only when its upload completes.
        with fs.open(path, "wb") as file:
            pq.write_table(table, file)


def manifest_rows_from(source: str, recursive: bool = False) -> list[dict]:
    """Manifest rows (`image_id`, `uri`) for the images at `source`, sorted by path.

    `source` is a local folder, an fsspec folder URL (s3://bucket/prefix) or a glob
    (photos/*.jpg, s3://b/p/**/*.png; `recursive` is then ignored, the glob says). Images are
    files with an extension in IMAGE_EXTENSIONS, in any case. Hidden files and folders (names
    starting with '.', such as macOS's ._photo.jpg) are skipped. The id is the file stem made
    path-safe (see `safe_image_id`); stems that collide get '-2', '-3', ... in path order.
    The uri is the full URL, with its protocol.
    """
    fs, path = fsspec.core.url_to_fs(source)
    if _is_local(fs):
        path = os.path.normpath(path)  # fsspec keeps '..' in local paths; URIs should not
    if any(char in path for char in "*?["):
        paths = [p for p, info in fs.glob(path, detail=True).items() if info["type"] == "file"]
        relative_parts = [(PurePosixPath(p).name,) for p in paths]
    else:
        try:
            is_folder = fs.isdir(path)
        except Exception as error:  # credentials, network, bad URL: say so in one line
            raise InputError(f"cannot list {source}: {one_line(error)}") from error
        if not is_folder:
            what = "is not a folder" if fs.exists(path) else "does not exist"
            raise InputError(f"{source} {what}; give a folder or a glob such as photos/*.jpg")
        if recursive:
            paths = fs.find(path)
        else:
            paths = [info["name"] for info in fs.ls(path, detail=True) if info["type"] == "file"]
        root = PurePosixPath(path)
        relative_parts = [PurePosixPath(p).relative_to(root).parts for p in paths]

    images = sorted(
        p for p, parts in zip(paths, relative_parts, strict=True)
        if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in parts)
    )
    rows, used = [], set()
    for image_path in images:
        image_id = _unique(safe_image_id(PurePosixPath(image_path).stem), used)
        used.add(image_id)
        rows.append({"image_id": image_id, "uri": fs.unstrip_protocol(image_path)})
    logger.info("found %d images at %s", len(rows), redact(source))
    return rows


def safe_image_id(stem: str) -> str:
    """An id that passes `check_image_id`, made from a file stem: characters outside
    [A-Za-z0-9._-] become '_', leading characters other than letters and digits go, the rest is
    cut to 128 characters, and an empty result becomes 'image'."""
    image_id = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    image_id = re.sub(r"^[^A-Za-z0-9]+", "", image_id)[:MAX_ID_LENGTH]
    return image_id or "image"


def _unique(image_id: str, used: set[str]) -> str:
    """`image_id`, or the first of image_id-2, image_id-3, ... not in `used` (cut to fit)."""
    candidate, number = image_id, 1
    while candidate in used:
        number += 1
        suffix = f"-{number}"
        candidate = image_id[: MAX_ID_LENGTH - len(suffix)] + suffix
    return candidate


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols
