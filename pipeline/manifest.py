"""The Parquet manifest: which images a job trains, and with which per-image config changes.

A manifest has one row per image. Required columns: `image_id` (a safe path component, it names
the image's output folder) and `uri` (any fsspec URL of the image). Optional columns, one per
`Config` field except `log_every`, plus `seed`, override the job's config for that row; a null
keeps the job's value. Number fields take number columns, text fields (`padding`, `loss`) string
columns, true/false fields (`noise_padding`) boolean columns or the strings "true" / "false".

Optional `height` and `width` columns give the image's size (as training sees it, EXIF
orientation applied), so that the job can bucket rows of one plan without reading headers.

The optional `task` column says what a row does with its trained model (pipeline.tasks: `train`,
the default, `sr` with an `sr_factor`, `animate` with optional `frames` and `fps`). A task's
parameter columns are null on the rows of other tasks. `read_manifest` checks everything before
a job starts and reports every problem at once, so that a 10,000-row manifest is fixed in one
round, not one error at a time.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import tasks
from pipeline.storage import limits, read_url, redact
from singan.config import Config, config
from singan.errors import InputError, one_line

logger = logging.getLogger(__name__)

# The kind of value of a column (and of a Config field): "int", "float", "str" or "bool".
_KINDS = {int: "int", float: "float", str: "str", bool: "bool"}


def _config_field_kinds() -> tuple[dict[str, str], frozenset[str]]:
    """Every Config field's kind, and the fields that also take None (`int | None`)."""
    kinds, nullable = {}, set()
    for name, hint in typing.get_type_hints(Config).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = typing.get_args(hint) if union else (hint,)
        if type(None) in options:
            nullable.add(name)
        options = [option for option in options if option is not type(None)]
        if len(options) == 1 and typing.get_origin(options[0]) is typing.Literal:
            options = list({type(value) for value in typing.get_args(options[0])})  # a choice
        if len(options) != 1 or options[0] not in _KINDS:
            # A new kind of field needs a column kind here and in the checks below.
            raise TypeError(f"Config.{name}: a manifest column cannot hold {hint}")
        kinds[name] = _KINDS[options[0]]
    return kinds, frozenset(nullable)


# FIELD -> kind for every Config field, and those that take None (`--set num_scales=none`).
CONFIG_FIELD_KINDS, NULLABLE_FIELDS = _config_field_kinds()
# Config fields a row may override. `log_every` only changes logging, which is the job's business.
_CONFIG_COLUMNS = {name: kind for name, kind in CONFIG_FIELD_KINDS.items() if name != "log_every"}
OVERRIDE_COLUMNS: tuple[str, ...] = (*_CONFIG_COLUMNS, "seed")

# What a row does with its trained model (pipeline.tasks), and the tasks' parameter columns.
TASK_COLUMNS: tuple[str, ...] = ("task", *tasks.PARAM_KINDS)
# The image's size as training sees it (EXIF orientation applied), when known: the job buckets
# rows of one plan without reading every image's header (jobs/make_manifest.py writes them).
SIZE_COLUMNS = ("height", "width")

COLUMN_KINDS = {**_CONFIG_COLUMNS, "seed": "int", "task": "str", **tasks.PARAM_KINDS,
                 "height": "int", "width": "int"}
OPTIONAL_COLUMNS: tuple[str, ...] = (*OVERRIDE_COLUMNS, *TASK_COLUMNS, *SIZE_COLUMNS)
REQUIRED_COLUMNS = ("image_id", "uri")

MAX_ID_LENGTH = 128
# A row's seed must suit every generator it may reach (numpy's legacy seeding stops at 2**32).
MAX_SEED = 2**32
MAX_LISTED_PROBLEMS = 50
NOMINAL_SIZE = 250  # px: the image size a task's config is checked with before images are read
# Existence checks are network round trips on object stores: overlap them.
CHECK_THREADS = 16


@dataclass(frozen=True)
class ImageTask:
    """One row of a manifest, resolved: what one training needs."""

    image_id: str
    uri: str  # any fsspec URL, with its protocol (e.g. file:///abs/path.png or s3://b/k.png)
    config: Config  # the job's preset with this row's overrides applied
    seed: int  # the row's `seed`, else derived from image_id (seed_for)
    task: str = tasks.DEFAULT  # a name in pipeline.tasks.TASKS: what to make of the model
    # The task's parameters; filled in with their defaults and typed here (part of the
    # training's identity: an sr_factor of 4 and of 4.0 are the same row).
    params: Mapping[str, float] = field(default_factory=dict)
    height: int | None = None  # the image's size, when the manifest says it (SIZE_COLUMNS)
    width: int | None = None

    def __post_init__(self) -> None:
        _, params, problems = tasks.row_task({**self.params, "task": self.task})
        if problems:
            raise InputError(f"{self.image_id}: " + "; ".join(problems))
        object.__setattr__(self, "params", params)


class ManifestError(InputError):
    """Every problem of a manifest at once; str() names the manifest URL and lists one problem per
    line (the first MAX_LISTED_PROBLEMS of them; `.problems` keeps them all)."""

    def __init__(self, url: str, problems: list[str]):
        self.url = url
        self.problems = list(problems)
        count = f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")
        lines = [f"manifest {url}: {count}"]
        lines += [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):
        # Exceptions pickle through their args; keep url and problems across processes (Ray).
        return type(self), (self.url, self.problems)


def check_image_id(image_id: Any) -> str | None:
    """Why `image_id` cannot name an output folder, or None when it can.

    A usable id is 1 to 128 ASCII letters, digits, '.', '_' or '-', starting with a letter or
    digit. That excludes '', '.', '..', hidden names, separators, absolute paths, spaces and
    control characters, so `os.path.join(output, image_id)` is always one folder inside `output`.
    The text completes "image_id ...", e.g. "contains '/'".
    """
    if image_id is None:
        return "is missing (null)"
    if not isinstance(image_id, str):
        return f"must be a string, got {type(image_id).__name__}"
    if image_id == "":
        return "is empty"
    if image_id in (".", ".."):
        return f"is {image_id!r}"
    if len(image_id) > MAX_ID_LENGTH:
        return f"is too long ({len(image_id)} characters, at most {MAX_ID_LENGTH})"
    if image_id[0] in "/\\" or re.match(r"[A-Za-z]:[/\\\\]", image_id):
        return "is an absolute path"
    for char in image_id:
        if char.isascii() and (char.isalnum() or char in "._-"):
            continue
        if char in "/\\":
            return f"contains {char!r}"
        if ord(char) < 32 or 127 <= ord(char) < 160:
            return f"contains a control character (U+{ord(char):04X})"
        if char == " ":
            return "contains a space"
        if char.isspace():
            return f"contains whitespace (U+{ord(char):04X})"
        return (f"contains {char!r} (U+{ord(char):04X}); allowed are ASCII letters, digits, "
                "'.', '_' and '-'")
    if image_id[0] == ".":
        return "starts with '.' (a hidden name)"
    if not image_id[0].isalnum():
        return f"starts with {image_id[0]!r}; it must start with a letter or digit"
    return None


def seed_for(image_id: str) -> int:
    """The seed of an image without a `seed` column value: stable across runs, machines and
    Python versions (unlike hash()), in [0, 2**31 - 1)."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


def read_manifest(url: str, *, preset: str = "paper", overrides: dict | None = None,
                  limit: int | None = None, check_files: bool = True) -> list[ImageTask]:
    """Read and check the manifest at `url` (any fsspec URL of one Parquet file).

    Each row becomes an `ImageTask` whose config is `config(preset, **overrides)` with the row's
    non-null override columns applied on top, and whose task and parameters are the row's task
    columns (see `row_task`). `limit` keeps the first N rows: the schema of the
    whole file is checked, the rows only for those kept. With `check_files`, every kept row's
    image must exist (and be a file), checked concurrently.

    A `uri` with a protocol (s3://, file://, gs://, ...) is kept as given. A plain path is a local
    file: relative paths are resolved against the current directory (not the manifest's folder)
    and stored as an absolute file:// URL, so on a cluster it must be on storage every worker
    mounts at the same place.

    Raises InputError for a bad preset, override or limit, and one ManifestError listing every
    problem of the manifest (schema, rows, missing files) before any work starts.
    """
    overrides = dict(overrides or {})
    config(preset, **overrides)  # a bad job config is one error, not one per row
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")

    table = _read_table(url)
    problems = _schema_problems(table)
    if problems:
        raise ManifestError(url, problems)
    if limit is not None:
        table = table.slice(0, limit)
    rows = table.to_pylist()

    # (row number, rank, text): problems found by different checks list in row order, a row's
    # own problems (rank 0) before a duplicate id first seen in that row (rank 1).
    found: list[tuple[int, int, str]] = []
    image_tasks: list[ImageTask] = []  # complete when nothing was found
    uris: dict[int, str] = {}
    rows_of_id: dict[str, list[int]] = {}
    for number, row in enumerate(rows):
        image_id, uri = row["image_id"], row["uri"]
        row_problems = []

        id_problem = check_image_id(image_id)
        if id_problem:
            row_problems.append(f"image_id {id_problem}")
        elif image_id is not None:
            rows_of_id.setdefault(image_id, []).append(number)

        if uri is None:
            row_problems.append("uri is missing (null)")
        elif uri.strip() == "":
            row_problems.append("uri is empty")
        else:
            uris[number] = _absolute_uri(uri)

        row_config, seed, config_problems = _row_config(row, preset, overrides)
        row_problems += config_problems
        task, params, task_problems = tasks.row_task(row)
        row_problems += task_problems
        size = {name: row.get(name) for name in SIZE_COLUMNS}
        row_problems += [f"{name} must be a positive integer, got {value}"
                         for name, value in size.items() if value is not None and value < 1]

        if not row_problems:
            image_task = ImageTask(image_id, uris[number], row_config,
                                   seed if seed is not None else seed_for(image_id),
                                   task=task, params=params, **size)
            task_config_problem = _task_config_problem(image_task)
            if task_config_problem:
                row_problems.append(task_config_problem)
            else:
                image_tasks.append(image_task)
        found += [(number, 0, _in_row(number, image_id, problem)) for problem in row_problems]

    for image_id, numbers in rows_of_id.items():
        if len(numbers) > 1:
            listed = ", ".join(str(n) for n in numbers)
            found.append((numbers[0], 1, f"image_id {image_id!r} appears in rows {listed}"))

    if check_files:
        for number, problem in _missing_files(uris).items():
            found.append((number, 0, _in_row(number, rows[number]["image_id"], problem)))

    if found:
        found.sort(key=lambda problem: problem[:2])  # stable: a row's problems keep their order
        raise ManifestError(url, [text for _, _, text in found])
    logger.info("read %d rows from manifest %s", len(image_tasks), redact(url))
    return image_tasks


def _read_table(url: str) -> pa.Table:
    """The whole manifest as an Arrow table, or a ManifestError saying why it cannot be read."""
    try:
        return pq.read_table(io.BytesIO(read_url(url)))
    except FileNotFoundError:
        reason = "the file does not exist"
    except IsADirectoryError:
        reason = "it is a folder; give the URL of one Parquet file"
    except pa.ArrowInvalid as error:
        reason = f"not a Parquet file ({one_line(error)})"
    except Exception as error:  # noqa: BLE001 - credentials, network, unknown protocol
        reason = f"cannot read it: {one_line(error)}"
    raise ManifestError(url, [reason])


def _schema_problems(table: pa.Table) -> list[str]:
    """Problems with the columns and their types, plus an empty table."""
    problems = []
    names = table.schema.names
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        problems.append(f"duplicate columns: {', '.join(duplicated)}")
    for name in REQUIRED_COLUMNS:
        if name not in names:
            problems.append(f"missing required column {name!r}")
    for column in table.schema:
        if column.name in REQUIRED_COLUMNS:
            if not _is_string(column.type):
                problems.append(f"column {column.name!r} must be a string column, "
                                f"got {column.type}")
        elif column.name in COLUMN_KINDS:
            problem = _type_problem(column.name, column.type)
            if problem:
                problems.append(problem)
    unknown = [name for name in names if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        problems.append(f"unknown columns: {', '.join(map(repr, unknown))}; allowed besides "
                        f"image_id and uri: {', '.join(OPTIONAL_COLUMNS)}")
    if table.num_rows == 0:
        problems.append("the manifest has no rows")
    return problems


def _is_string(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_string_view(arrow_type))


def _type_problem(name: str, arrow_type: pa.DataType) -> str | None:
    """Why an optional column of this Arrow type cannot hold its values, or None."""
    if pa.types.is_null(arrow_type):
        return None  # an all-null column keeps the job's values
    kind = COLUMN_KINDS[name]
    if kind == "int":
        ok, wanted = pa.types.is_integer(arrow_type), "an integer column"
    elif kind == "float":
        ok = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
        wanted = "a number column"
    elif kind == "str":
        ok, wanted = _is_string(arrow_type), "a string column"
    else:
        ok = pa.types.is_boolean(arrow_type) or _is_string(arrow_type)
        wanted = "a boolean column (or strings 'true' / 'false')"
    return None if ok else f"column {name!r} must be {wanted}, got {arrow_type}"


def parse_bool(text: str) -> bool | None:
    """True for "true", False for "false" (any case, spaces around allowed), else None."""
    return {"true": True, "false": False}.get(text.strip().lower())


def _row_config(row: dict, preset: str, overrides: dict) -> tuple[Config | None, int | None,
                                                                   list[str]]:
    """The row's config and seed, or the problems of its override columns."""
    row_overrides, problems = {}, []
    for name, kind in _CONFIG_COLUMNS.items():
        value = row.get(name)
        if value is None:
            continue
        if kind == "float":
            value = float(value)
            if not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value}")
        elif kind == "bool" and isinstance(value, str):
            parsed = parse_bool(value)
            if parsed is None:
                problems.append(f"{name} must be true or false, got {value!r}")
            value = parsed
        row_overrides[name] = value
    seed = row.get("seed")
    if seed is not None and not 0 <= seed < MAX_SEED:
        problems.append(f"seed must be in [0, 2**32), got {seed}")
    if problems:
        return None, None, problems
    try:
        # Only the keys actually set, so that config() can derive lr_milestone from niter
        # where the recipe does.
        return config(preset, **{**overrides, **row_overrides}), seed, []
    except InputError as error:
        return None, None, [str(error)]


def _task_config_problem(task: ImageTask) -> str | None:
    """Why the row's task cannot train with the row's config (animation's noise padding with a
    recipe that has none, say), or None. Checked for a nominal image size: what depends on the
    image's own size is checked when a worker reads it."""
    try:
        tasks.task_named(task.task).training_config(task.config, task.params, NOMINAL_SIZE,
                                                    NOMINAL_SIZE)
    except InputError as error:
        return f"task {task.task!r}: {error}"
    return None


def _absolute_uri(uri: str) -> str:
    """`uri` if it names its protocol, else the absolute file:// URL of a local path."""
    protocol, _ = fsspec.core.split_protocol(uri)
    if protocol is not None:
        return uri
    return fsspec.filesystem("file").unstrip_protocol(os.path.abspath(uri))


def _missing_files(uris: dict[int, str]) -> dict[int, str]:
    """Problems by row number for uris that do not name an existing file."""
    problems, checks = {}, {}
    for number, uri in uris.items():
        try:
            checks[number] = (uri, *fsspec.core.url_to_fs(uri))
        except Exception as error:  # noqa: BLE001 - unknown protocol, missing driver, bad URL
            problems[number] = f"cannot check {uri}: {one_line(error)}"

    def check(uri: str, fs: fsspec.AbstractFileSystem, path: str) -> str | None:
        try:
            info = fs.info(path, **limits(fs))
        except FileNotFoundError:
            return f"{uri} does not exist"
        except Exception as error:  # noqa: BLE001 - no credentials, access denied, network
            return f"cannot check {uri}: {one_line(error)}"
        if info["type"] == "directory":
            return f"{uri} is a folder, not an image file"
        return None

    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        results = dict(zip(checks, pool.map(lambda args: check(*args), checks.values()),
                           strict=True))
    problems.update({number: text for number, text in results.items() if text})
    return problems


def _in_row(number: int, image_id: Any, problem: str) -> str:
    """A row's problem as listed: `row 3 (image_id 'a/b'): image_id contains '/'`."""
    shown = repr(image_id)  # repr() shows control characters; long ids are shortened
    if len(shown) > 60:
        shown = shown[:50] + "...'"
    return f"row {number} (image_id {shown}): {problem}"
