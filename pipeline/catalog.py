"""Making a manifest: the images of a collection (a folder, a bucket prefix, a glob), each with a
path-safe id, written as a Parquet manifest that `pipeline.manifest` reads back."""

from __future__ import annotations

import logging
import re
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.manifest import COLUMN_KINDS, MAX_ID_LENGTH, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from pipeline.storage import full_url, glob_files, kind, list_files, redact, write_url
from singan.data.image import IMAGE_SUFFIXES
from singan.errors import InputError, one_line

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # what `singan` reads from a folder too
# Rows per Parquet row group: readers stream a manifest one group at a time.
ROW_GROUP_ROWS = 65_536


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
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS)
    write_url(url, sink.getvalue().to_pybytes())  # whole or absent: readers never see half


def manifest_rows_from(source: str, recursive: bool = False) -> list[dict]:
    """Manifest rows (`image_id`, `uri`) for the images at `source`, sorted by path.

    `source` is a local folder, an fsspec folder URL (s3://bucket/prefix) or a glob
    (photos/*.jpg, s3://b/p/**/*.png; `recursive` is then ignored, the glob says). Images are
    files with an extension in IMAGE_EXTENSIONS, in any case. Hidden files and folders (names
    starting with '.', such as macOS's ._photo.jpg) are skipped. The id is the file stem made
    path-safe (see `safe_image_id`); stems that collide get '-2', '-3', ... in path order.
    The uri is the full URL, with its protocol.
    """
    if any(char in source for char in "*?["):
        uris = glob_files(source)
        relative_parts = [(PurePosixPath(uri).name,) for uri in uris]
    else:
        found = kind(source)
        if found != "directory":
            what = "is not a folder" if found else "does not exist"
            raise InputError(f"{redact(source)} {what}; give a folder or a glob such as "
                             "photos/*.jpg")
        uris = list_files(source, recursive=recursive)
        folder = full_url(source)
        relative_parts = [PurePosixPath(uri[len(folder):].lstrip("/")).parts for uri in uris]

    images = sorted(
        uri for uri, parts in zip(uris, relative_parts, strict=True)
        if PurePosixPath(uri).suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in parts)
    )
    rows, used = [], set()
    for uri in images:
        image_id = _unique(safe_image_id(PurePosixPath(uri).stem), used)
        used.add(image_id)
        rows.append({"image_id": image_id, "uri": uri})
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
