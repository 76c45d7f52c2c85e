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
parameter columns are null on the rows of other tasks.

A manifest may hold a million rows, so it is read as a stream (`Manifest`): the file is fetched
once (one GET), then checked and read one record batch at a time; the checks run in Arrow where
they can, and one `Config` is made per distinct set of override values, not per row. Nothing
per row of the whole manifest stays in memory but the id column while duplicates are counted.
`Manifest.check` reports every problem at once (the first MAX_LISTED_PROBLEMS and a count), so
that a 10,000-row manifest is fixed in one round, not one error at a time. Whether each image
exists and is readable is not checked here: that costs a storage call per row, and a missing or
bad image fails its own row in its training.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import tasks
from pipeline.storage import TransientError, absolute_url, local_copy, redact
from singan.api import config
from singan.errors import InputError, one_line
from singan.settings import FIELD_KINDS, Config, field_value

logger = logging.getLogger(__name__)

# FIELD -> kind ("int", "float", "str", "bool") for every Config field: singan.settings.FIELD_KINDS.
# Config fields a row may override. `log_every` only changes logging, which is the job's business.
_CONFIG_COLUMNS = {name: kind for name, kind in FIELD_KINDS.items() if name != "log_every"}
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
# What check_image_id accepts, as one regular expression for Arrow (the reason for a refused id
# comes from check_image_id itself).
_GOOD_ID = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_LENGTH - 1}}}$"
# A row's seed must suit every generator it may reach (numpy's legacy seeding stops at 2**32).
MAX_SEED = 2**32
MAX_LISTED_PROBLEMS = 100  # problems kept and listed; the rest are counted
NOMINAL_SIZE = 250  # px: the image size a task's config is checked with before images are read
BATCH_ROWS = 65_536  # rows per record batch read


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest, resolved: what one image's training needs. Rows with the same
    override values share one config and one parameters mapping (the same objects)."""

    image_id: str
    uri: str  # any fsspec URL, with its protocol (e.g. file:///abs/path.png or s3://b/k.png)
    config: Config  # the job's preset with this row's overrides applied
    seed: int  # the row's `seed`, else derived from image_id (seed_for)
    task: tasks.Task = tasks.TASKS[tasks.DEFAULT]  # what to make of the model (pipeline.tasks)
    # The task's parameters, their defaults filled in and typed (part of the training's
    # identity: an sr_factor of 4 and of 4.0 are the same row).
    params: Mapping[str, float] = field(default_factory=dict)
    height: int | None = None  # the image's size, when the manifest says it (SIZE_COLUMNS)
    width: int | None = None


def manifest_row(image_id: str, uri: str, row_config: Config, seed: int,
                 task: str = tasks.DEFAULT, params: Mapping[str, float] | None = None, *,
                 height: int | None = None, width: int | None = None) -> ManifestRow:
    """A ManifestRow made in code rather than read from a file (tests, a library caller): the
    task looked up by name, its parameters checked, defaulted and typed as a manifest's are."""
    name, typed, problems = tasks.row_task({**(params or {}), "task": task})
    if problems:
        raise InputError(f"{image_id}: " + "; ".join(problems))
    return ManifestRow(image_id, uri, row_config, seed, tasks.task_named(name), typed,
                       height, width)


class ManifestError(InputError):
    """Every problem of a manifest at once; str() names the manifest URL, the number of problems,
    and lists the first MAX_LISTED_PROBLEMS of them one per line (`.problems` holds those,
    `.count` the number of all)."""

    def __init__(self, url: str, problems: list[str], count: int | None = None):
        self.url = url
        self.problems = list(problems)[:MAX_LISTED_PROBLEMS]
        self.count = len(problems) if count is None else count
        lines = [f"manifest {url}: {self.count} problem" + ("" if self.count == 1 else "s")]
        lines += [f"  {problem}" for problem in self.problems]
        if self.count > len(self.problems):
            lines.append(f"  ... and {self.count - len(self.problems)} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):
        # Exceptions pickle through their args; keep url, problems and count across processes.
        return type(self), (self.url, self.problems, self.count)


# The Config fields of the first stored trainings. A field added since is left out of the
# identity while it keeps its default, so that a package that gains fields does not retrain the
# images it already finished (their hash is unchanged); away from its default it counts.
FIRST_CONFIG_FIELDS = frozenset((
    "min_size", "max_size", "scale_factor", "num_scales", "nfc", "max_nfc", "nfc_double_every",
    "num_layer", "kernel_size", "leaky_slope", "init_std", "niter", "lr_g", "lr_d", "beta1",
    "beta2", "gamma", "lr_milestone", "d_steps", "g_steps", "lambda_grad", "alpha", "noise_amp",
    "log_every"))


def config_hash(row: ManifestRow) -> str:
    """Identifies a training: the settings, the seed, the source image's URL, and for a task
    other than `train` the task and its parameters (a plain training keeps the hash it had
    before tasks existed). The sha256 of the identity's JSON (sorted keys), assembled from the
    settings' part, which rows share, so that a million rows cost a million small hashes."""
    head, tail = _identity_parts(row.config, row.task, tuple(sorted(row.params.items())))
    text = f'{head}, "seed": {json.dumps(row.seed)}{tail}, "uri": {json.dumps(row.uri)}}}'
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _identity_parts(settings: Config, task: tasks.Task, params: tuple) -> tuple[str, str]:
    """The identity's JSON before "seed" and between "seed" and "uri" (keys sorted: config,
    params, seed, task, uri)."""
    defaults = _DEFAULT_CONFIG
    kept = {name: value for name, value in settings.to_dict().items()
            if name in FIRST_CONFIG_FIELDS or value != defaults[name]}
    head, tail = '{"config": ' + json.dumps(kept, sort_keys=True), ""
    added = task.identity(dict(params))
    if added:
        head += ', "params": ' + json.dumps(dict(params), sort_keys=True)
        tail = ', "task": ' + json.dumps(added["task"])
    return head, tail


_DEFAULT_CONFIG = Config().to_dict()


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
                  limit: int | None = None) -> list[ManifestRow]:
    """Every row of the manifest at `url`, checked (see `Manifest`): for small manifests and
    tests; a job streams them instead."""
    with Manifest(url, preset=preset, overrides=overrides, limit=limit) as manifest:
        manifest.check()
        return list(manifest.rows())


@dataclass(frozen=True)
class _Settings:
    """What rows with the same override values share: their config, task and parameters, or the
    problems that keep them from training, in the order a row lists them."""

    values: list[str]  # bad values (a non-finite number, a bad true/false), before the seed's
    config: list[str]  # the config's refusal (only when values and seed are good)
    task: list[str]  # the task's problems (an unknown task, a missing or foreign parameter)
    task_config: list[str]  # the task cannot train with the config (only for an otherwise good row)
    resolved: tuple[Config, tasks.Task, dict] | None  # None when any of the above


class Manifest:
    """A manifest opened for streaming. Opening fetches the file once (a local copy when it is
    remote) and checks its schema; `check()` checks every row and raises one ManifestError;
    `rows()` yields them as ManifestRow, a record batch at a time.

    `preset` and `overrides` are the job's settings, which the rows' columns override; `limit`
    keeps the first N rows (the schema of the whole file is checked, the rows only for those
    kept). A `uri` with a protocol (s3://, file://, gs://, ...) is kept as given. A plain path
    is a local file: relative paths are resolved against the current directory (not the
    manifest's folder) and become an absolute file:// URL, so on a cluster it must be on storage
    every worker mounts at the same place.

    Raises InputError for a bad preset, override or limit, and ManifestError when the file
    cannot be read or its schema is wrong.
    """

    def __init__(self, url: str, *, preset: str = "paper", overrides: dict | None = None,
                 limit: int | None = None):
        self.url, self.preset = url, preset
        self.overrides = dict(overrides or {})
        config(preset, **self.overrides)  # a bad job config is one error, not one per row
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InputError(f"limit must be a positive integer, got {limit!r}")
        self._files = contextlib.ExitStack()
        try:
            self._file = self._open()
            schema = self._file.schema_arrow
            problems = _schema_problems(schema, self._file.metadata.num_rows)
            if problems:
                raise ManifestError(url, problems)
        except BaseException:
            self.close()
            raise
        self.num_rows = min(self._file.metadata.num_rows, limit or math.inf)
        self.columns: tuple[str, ...] = tuple(schema.names)
        # The override and task columns present, in a fixed order: a row's values of these are
        # the key of its settings (one _Settings per distinct key).
        self._keyed = [name for name in (*_CONFIG_COLUMNS, *TASK_COLUMNS) if name in schema.names]
        self._size_columns = [name for name in SIZE_COLUMNS if name in schema.names]
        self._has_seed = "seed" in schema.names
        self._settings: dict[tuple, _Settings] = {}

    def _open(self) -> pq.ParquetFile:
        try:
            path = self._files.enter_context(local_copy(self.url))
            return pq.ParquetFile(path)
        except FileNotFoundError:
            reason = "the file does not exist"
        except IsADirectoryError:
            reason = "it is a folder; give the URL of one Parquet file"
        except pa.ArrowInvalid as error:
            reason = f"not a Parquet file ({one_line(error)})"
        except TransientError as error:  # one line: it names the URL and what sets the limit
            raise InputError(f"cannot read the manifest: {error}") from error
        except Exception as error:  # noqa: BLE001 - credentials, network, unknown protocol
            reason = f"cannot read it: {one_line(error)}"
        raise ManifestError(self.url, [reason])

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _batches(self, columns: list[str] | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(number of its first row, batch) for the kept rows."""
        first = 0
        for batch in self._file.iter_batches(batch_size=BATCH_ROWS, columns=columns,
                                             use_threads=False):
            if first >= self.num_rows:
                return
            batch = batch.slice(0, self.num_rows - first)
            yield first, batch
            first += batch.num_rows

    # --- checking ---------------------------------------------------------------------------
    def check(self) -> None:
        """Check every kept row; raise one ManifestError listing the problems in row order (a
        row's own problems before a duplicate id first seen in it)."""
        listed: list[tuple[int, int, str]] = []  # (row, rank, text): at most MAX_LISTED_PROBLEMS
        count = 0
        for first, batch in self._batches():
            for number, problems in self._batch_problems(first, batch):
                count += len(problems)
                room = MAX_LISTED_PROBLEMS - len(listed)
                listed += [(number, 0, text) for text in problems[:max(room, 0)]]
        duplicates, duplicate_count = self._duplicates()
        count += duplicate_count
        if count:
            merged = sorted(listed + duplicates, key=lambda problem: problem[:2])
            raise ManifestError(self.url, [text for _, _, text in merged][:MAX_LISTED_PROBLEMS],
                                count)
        logger.info("manifest %s: %d rows checked", redact(self.url), self.num_rows)

    def _batch_problems(self, first: int, batch: pa.RecordBatch) -> Iterator[tuple[int, list[str]]]:
        """(row number, its problems) for every row of `batch` that has any, in row order. The
        checks of single columns run in Arrow; settings are resolved once per distinct key."""
        ids, uris = batch.column("image_id"), batch.column("uri")
        bad_id = _mask(pc.invert(pc.match_substring_regex(ids, _GOOD_ID)), null=True)
        null_uri = _mask(pc.is_null(uris))
        empty_uri = _mask(pc.equal(pc.utf8_trim_whitespace(uris), ""))
        bad_seed = np.zeros(batch.num_rows, bool)
        if self._has_seed:
            seeds = batch.column("seed")
            bad_seed = _mask(pc.or_(pc.less(seeds, 0), pc.greater_equal(seeds, MAX_SEED)))
        bad_size = {name: _mask(pc.less(batch.column(name), 1)) for name in self._size_columns}
        keys = self._keys(batch)
        settings = ([self._settings_of(key) for key in keys] if keys is not None
                    else [self._settings_of(())] * batch.num_rows)
        bad_settings = np.fromiter((s.resolved is None for s in settings), bool, batch.num_rows)
        bad = bad_id | null_uri | empty_uri | bad_seed | bad_settings
        for mask in bad_size.values():
            bad |= mask
        for index in np.flatnonzero(bad).tolist():
            row_settings = settings[index]
            image_id = ids[index].as_py()
            problems = []
            if bad_id[index]:
                problems.append(f"image_id {check_image_id(image_id)}")
            if null_uri[index]:
                problems.append("uri is missing (null)")
            elif empty_uri[index]:
                problems.append("uri is empty")
            problems += row_settings.values
            if bad_seed[index]:
                problems.append(f"seed must be in [0, 2**32), got {seeds[index].as_py()}")
            elif not row_settings.values:
                problems += row_settings.config
            problems += row_settings.task
            problems += [f"{name} must be a positive integer, got {batch.column(name)[index]}"
                         for name, mask in bad_size.items() if mask[index]]
            if not problems:
                problems += row_settings.task_config
            yield first + index, [_in_row(first + index, image_id, p) for p in problems]

    def _duplicates(self) -> tuple[list[tuple[int, int, str]], int]:
        """(row, 1, text) for the first MAX_LISTED_PROBLEMS ids that appear in several kept rows,
        in the order of their first row, and the number of such ids. Reads the id column alone
        and counts in Arrow and numpy: a million ids take a fraction of a second and about 30
        bytes each at the peak (a code per row, a count and the text per distinct id)."""
        # One dictionary for every chunk (Arrow's hash kernel keeps its table across chunks),
        # so that the chunks of text can go as soon as they are encoded.
        encoded = pc.dictionary_encode(pa.chunked_array(
            (batch.column(0) for _, batch in self._batches(["image_id"])),
            self._file.schema_arrow.field("image_id").type))
        if encoded.num_chunks == 0:
            return [], 0
        codes = np.concatenate([pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False)
                                for chunk in encoded.chunks])  # -1: a null id
        values = encoded.chunk(0).dictionary
        del encoded
        counts = np.bincount(codes[codes >= 0], minlength=len(values))
        if counts.max(initial=0) < 2:
            return [], 0
        rows = np.flatnonzero((codes >= 0) & (counts[np.maximum(codes, 0)] > 1))
        # The rows of each repeated id, grouped, in row order within a group; groups ordered by
        # their first row.
        order = np.argsort(codes[rows], kind="stable")
        grouped = rows[order]
        starts = np.flatnonzero(np.r_[True, np.diff(codes[grouped]) != 0])
        groups = sorted(np.split(grouped, starts[1:]), key=lambda group: group[0])
        found = [(int(group[0]), 1, f"image_id {values[int(codes[group[0]])].as_py()!r} appears "
                                    f"in rows {', '.join(map(str, group.tolist()))}")
                 for group in groups[:MAX_LISTED_PROBLEMS]]
        return found, len(groups)

    # --- reading ----------------------------------------------------------------------------
    def rows(self) -> Iterator[ManifestRow]:
        """The kept rows, resolved, in order (the manifest must have passed `check`)."""
        for _, batch in self._batches():
            keys = self._keys(batch)
            columns = {name: batch.column(name).to_pylist()
                       for name in ("image_id", "uri", *self._size_columns,
                                    *(("seed",) if self._has_seed else ()))}
            plain = self._settings_of(()) if keys is None else None
            for index, image_id in enumerate(columns["image_id"]):
                settings = plain if keys is None else self._settings_of(keys[index])
                if settings.resolved is None:
                    raise ManifestError(self.url, ["rows() of a manifest that fails check()"])
                row_config, task, params = settings.resolved
                seed = columns["seed"][index] if self._has_seed else None
                size = {name: columns[name][index] for name in self._size_columns}
                yield ManifestRow(image_id, absolute_url(columns["uri"][index]), row_config,
                                  seed_for(image_id) if seed is None else seed, task, params,
                                  **size)

    def _keys(self, batch: pa.RecordBatch) -> list[tuple] | None:
        """Each row's values of the override and task columns; None without such columns."""
        if not self._keyed:
            return None
        return list(zip(*(batch.column(name).to_pylist() for name in self._keyed), strict=True))

    def _settings_of(self, key: tuple) -> _Settings:
        settings = self._settings.get(key)
        if settings is None:
            settings = self._settings[key] = self._resolve(dict(zip(self._keyed, key)))
        return settings

    def _resolve(self, values: dict[str, Any]) -> _Settings:
        """The settings of rows with these override and task column values."""
        row_overrides, value_problems = {}, []
        for name in _CONFIG_COLUMNS:
            value = values.get(name)
            if value is None:
                continue
            try:
                row_overrides[name] = field_value(name, value)
            except InputError as err:
                value_problems.append(str(err))
        row_config, config_problems = None, []
        if not value_problems:
            try:
                # Only the keys actually set, so that config() can derive lr_milestone from
                # niter where the recipe does.
                row_config = config(self.preset, **{**self.overrides, **row_overrides})
            except InputError as error:
                config_problems.append(str(error))
        task_name, params, task_problems = tasks.row_task(values)
        task_config_problems, resolved = [], None
        if row_config is not None and not task_problems:
            task = tasks.task_named(task_name)
            try:
                task.training_config(row_config, params, NOMINAL_SIZE, NOMINAL_SIZE)
                resolved = (row_config, task, params)
            except InputError as error:
                # Checked for a nominal image size: what depends on the image's own size is
                # checked when a worker reads it.
                task_config_problems.append(f"task {task.name!r}: {error}")
        return _Settings(value_problems, config_problems, task_problems, task_config_problems,
                         resolved)


def _mask(values: pa.Array, null: bool = False) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as `null`."""
    return pc.fill_null(values, null).to_numpy(zero_copy_only=False)


def _schema_problems(schema: pa.Schema, num_rows: int) -> list[str]:
    """Problems with the columns and their types, plus an empty manifest."""
    problems = []
    names = schema.names
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        problems.append(f"duplicate columns: {', '.join(duplicated)}")
    for name in REQUIRED_COLUMNS:
        if name not in names:
            problems.append(f"missing required column {name!r}")
    for column in schema:
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
    if num_rows == 0:
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


def _in_row(number: int, image_id: Any, problem: str) -> str:
    """A row's problem as listed: `row 3 (image_id 'a/b'): image_id contains '/'`."""
    shown = repr(image_id)  # repr() shows control characters; long ids are shortened
    if len(shown) > 60:
        shown = shown[:50] + "...'"
    return f"row {number} (image_id {shown}): {problem}"
