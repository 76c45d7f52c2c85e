"""The ledger: one small file per finished image under `{output}/_results/`, written by the Ray
task that trained it as the image ends, and named so that a listing alone says what is done:

    {output}/_results/{image_id}@{config_hash}@{status}@{job_id}.json

`status` is done or failed; the file holds the image's result (`Entry`: status, error, seconds,
scales, final SIFID, MLflow run, the Ray node, ...). A resubmitted job lists the folder (one LIST
per 1,000 files on S3), and sends no image that is done with the same config hash; the
evaluation and the tracking sync take the finished images from it too. Nothing globs the image
folders. Every failure keeps its own file (one per job), so its reason lasts.

`{output}/_results.parquet` is the compaction of the ledger: one row per image, its latest entry.
The job writes it at its end from what it saw (spooled to a local file as results came, so the
driver's memory stays flat) plus the files it did not see (`compact`), and
`python jobs/compact_results.py --output URL` rebuilds it after a driver died.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from enum import Enum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage import Storage, join, local_copy

logger = logging.getLogger(__name__)

LEDGER = "_results"  # beside the image folders; ids cannot start with "_"
RESULTS = "_results.parquet"
SEPARATOR = "@"  # in no image id ([A-Za-z0-9._-]), config hash (hex) or job id (hex)
THREADS = 32  # ledger files read at once by a compaction


class Status(str, Enum):
    """How an image (or an evaluation) of a job ended; compares equal to its name."""

    DONE = "done"  # trained (or evaluated) now
    SKIPPED = "skipped"  # already done with the same settings: left as it was
    FAILED = "failed"  # a bad image or a bug: the reason is in the row's error

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Entry:
    """One image's result: a ledger file, a row of the results table, what a job's task
    returns to the driver."""

    image_id: str
    status: Status  # done, skipped (already done with the same settings) or failed
    error: str | None
    num_scales: int | None
    seconds: float
    sifid: float | None  # final SIFID, when the SIFID metric is available
    mlflow_run_id: str | None
    output_url: str
    tracking_complete: bool = True  # False: some points or pictures still wait for a sync
    task: str = "train"  # the row's task (pipeline.tasks)
    config_hash: str | None = None  # the training's identity (pipeline.manifest.config_hash)
    job_id: str | None = None  # the job whose task ended the image
    node: str | None = None  # the Ray node it ran on
    device: str | None = None  # what it trained on: cpu or cuda
    finished_at: str | None = None  # UTC, ISO 8601
    quality: str | None = None  # a done image's verdict (singan.metrics.verdict): ok or suspect
    quality_reason: str | None = None  # why it is suspect
    retrained: str | None = None  # --retrain-suspect: the seeds tried, and the one kept

    def to_dict(self) -> dict:
        return {**asdict(self), "status": str(self.status)}

    @classmethod
    def from_dict(cls, values: dict) -> Entry:
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        return cls(**{**kept, "status": Status(kept["status"])})


SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("task", pa.string()),  # pipeline.tasks: train | sr | animate
    ("status", pa.string()),  # Status: done | failed
    ("error", pa.string()),
    ("num_scales", pa.int32()),
    ("seconds", pa.float64()),
    ("sifid", pa.float64()),
    ("mlflow_run_id", pa.string()),
    ("output_url", pa.string()),
    ("tracking_complete", pa.bool_()),
    ("config_hash", pa.string()),
    ("job_id", pa.string()),
    ("node", pa.string()),
    ("device", pa.string()),
    ("finished_at", pa.string()),
    ("quality", pa.string()),
    ("quality_reason", pa.string()),
    ("retrained", pa.string()),
])


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def file_name(image_id: str, config_hash: str, status: Status, job_id: str) -> str:
    return f"{SEPARATOR.join((image_id, config_hash, str(status), job_id))}.json"


def parse_name(name: str) -> tuple[str, str, Status, str] | None:
    """(image_id, config_hash, status, job_id) of a ledger file's name; None for another file."""
    if not name.endswith(".json"):
        return None
    parts = name[:-len(".json")].split(SEPARATOR)
    if len(parts) != 4 or parts[2] not in (Status.DONE, Status.FAILED):
        return None
    return parts[0], parts[1], Status(parts[2]), parts[3]


def _key(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class KeySet:
    """A set of strings kept as a sorted array of 8-byte digests: a million cost 8 MB (two
    strings share a digest with odds of about 1 in 10^7 at a million, which would make one
    image count as done that is not)."""

    def __init__(self, texts: Iterable[str] = ()):
        self.keys = np.unique(np.fromiter((_key(text) for text in texts), np.uint64))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, text: str) -> bool:
        key = np.uint64(_key(text))
        at = int(np.searchsorted(self.keys, key))
        return at < len(self.keys) and self.keys[at] == key


def done_key(image_id: str, config_hash: str) -> str:
    """What a DoneSet holds for an image done with these settings."""
    return f"{image_id}{SEPARATOR}{config_hash}"


class Ledger:
    """The `_results/` folder of an output root."""

    def __init__(self, output: str):
        self.output = output
        self.store = Storage(join(output, LEDGER))

    def record(self, entry: Entry) -> None:
        """Write the image's ledger file (whole or absent; a retry writes the same name). An
        image found done (skipped) is recorded as done by the job that did it, so that images
        finished before the ledger existed join it."""
        if entry.status == Status.SKIPPED:
            entry = Entry(**{**entry.__dict__, "status": Status.DONE})
        name = file_name(entry.image_id, entry.config_hash or "-", entry.status,
                         entry.job_id or "-")
        self.store.put(name, json.dumps(entry.to_dict(), sort_keys=True).encode())

    def names(self) -> Iterator[tuple[str, tuple[str, str, Status, str]]]:
        """(file name, its parts) of every ledger file, a LIST page at a time."""
        for page in self.store.iter_names():
            for name in page:
                parts = parse_name(name)
                if parts is not None:
                    yield name, parts

    def done(self) -> KeySet:
        """The images done, as done_key(image_id, config_hash), from the listing alone."""
        return KeySet(done_key(image_id, digest)
                      for _, (image_id, digest, status, _) in self.names() if status == Status.DONE)

    def done_ids(self) -> Iterator[str]:
        """The ids of the images done with any settings, each once, from the listing alone."""
        seen: set[str] = set()
        for _, (image_id, _, status, _) in self.names():
            if status == Status.DONE and image_id not in seen:
                seen.add(image_id)
                yield image_id

    def compact(self, seen: Iterable[pa.RecordBatch] = ()) -> str:
        """Write `{output}/_results.parquet`: one row per image, its latest entry, sorted by id,
        from the last table, the entries `seen` (batches of SCHEMA: what this job's driver
        received), and the ledger files neither holds (read THREADS at a time). Returns its URL.

        A million entries must not sit in the driver's memory: they are sorted RUN_ROWS at a time
        into local files, then merged a few rows per file at a time (an external merge sort), and
        the table is uploaded from its local file."""
        output = Storage(self.output)
        with tempfile.TemporaryDirectory(prefix="singan-ledger-") as folder:
            runs = _Runs(folder)
            for batch in seen:
                runs.add(batch)
            try:
                with local_copy(output.url_of(RESULTS)) as previous:
                    for batch in pq.ParquetFile(previous).iter_batches(RUN_ROWS):
                        for part in _conform(pa.Table.from_batches([batch])).to_batches():
                            runs.add(part)
            except FileNotFoundError:
                pass  # the first compaction of this output
            known = runs.known()
            missing = (name for name, _ in self.names() if name not in known)
            with ThreadPoolExecutor(THREADS) as pool:
                while chunk := list(itertools.islice(missing, RUN_ROWS)):
                    logger.info("compacting %d ledger files not in the results yet", len(chunk))
                    found = pool.map(lambda name: json.loads(self.store.get(name) or b"null"),
                                     chunk)
                    rows = [Entry.from_dict(values).to_dict() for values in found if values]
                    runs.add(pa.RecordBatch.from_pylist(rows, schema=SCHEMA))
            output.put_file(RESULTS, runs.merge(f"{folder}/{RESULTS}"))
        return output.url_of(RESULTS)


RUN_ROWS = 10_000  # entries sorted in memory at once by a compaction
MERGE_ROWS = 256  # entries read at a time from each sorted run while merging


class _Runs:
    """Sorted runs of entries in local Parquet files, and their merge into one row per image."""

    def __init__(self, folder: str):
        self.folder = folder
        self.files: list[str] = []
        self.keys: list[np.ndarray] = []  # of the ledger file names already held

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.keys.append(np.fromiter((_key(name) for name in _file_names(batch)), np.uint64,
                                     batch.num_rows))
        table = pa.Table.from_batches([batch])
        # Unknown finishing times (entries of older versions) first, as _order has them.
        order = pc.sort_indices(table, sort_keys=[("image_id", "ascending"),
                                                  ("finished_at", "ascending", "at_start"),
                                                  ("status", "descending")])
        path = f"{self.folder}/run_{len(self.files):06d}.parquet"
        pq.write_table(table.take(order), path, row_group_size=MERGE_ROWS)
        self.files.append(path)

    def known(self) -> KeySet:
        """The ledger file names of the entries held."""
        known = KeySet()
        if self.keys:
            known.keys = np.unique(np.concatenate(self.keys))
        return known

    def merge(self, path: str) -> str:
        """Write every image's latest entry (the last to finish; of one second, a done one over
        a failed one) to `path`, sorted by id; `path`."""
        streams = [_rows(file) for file in self.files]
        writer = pq.ParquetWriter(path, SCHEMA)
        chosen: list[dict] = []
        last = None
        for row in heapq.merge(*streams, key=_order):
            if last is not None and row["image_id"] != last["image_id"]:
                chosen.append(last)
                if len(chosen) == RUN_ROWS:
                    writer.write_batch(pa.RecordBatch.from_pylist(chosen, schema=SCHEMA))
                    chosen = []
            last = row
        if last is not None:
            chosen.append(last)
        if chosen or not self.files:
            writer.write_batch(pa.RecordBatch.from_pylist(chosen, schema=SCHEMA))
        writer.close()
        return path


def _order(row: dict) -> tuple:
    """An entry's place: by id, then by when it finished (unknown first), a done one last."""
    return row["image_id"], row["finished_at"] or "", row["status"] == Status.DONE


def _rows(path: str) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(MERGE_ROWS):
        yield from batch.to_pylist()


def _file_names(batch: pa.RecordBatch) -> Iterator[str]:
    """The ledger file name of each entry of `batch`."""
    columns = (batch.column(c).to_pylist() for c in ("image_id", "config_hash", "status", "job_id"))
    for image_id, digest, status, job_id in zip(*columns, strict=True):
        yield file_name(image_id, digest or "-", Status(status), job_id or "-")


def _conform(table: pa.Table) -> pa.Table:
    """A results table of an older version with SCHEMA's columns (missing ones null)."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in SCHEMA]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


class Spool:
    """The entries a driver receives, written to a local Parquet file as they come (a row group
    per SPOOL_ROWS), so that a million results do not stay in memory."""

    SPOOL_ROWS = 10_000

    def __init__(self):
        self._file = tempfile.NamedTemporaryFile(suffix=".parquet")
        self._writer = pq.ParquetWriter(self._file.name, SCHEMA)
        self._rows: list[dict] = []

    def add(self, entry: Entry) -> None:
        self._rows.append(entry.to_dict())
        if len(self._rows) >= self.SPOOL_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_batch(pa.RecordBatch.from_pylist(self._rows, schema=SCHEMA))
            self._rows = []

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Everything added so far (closes the writer: call once, at the end)."""
        self._flush()
        self._writer.close()
        yield from pq.ParquetFile(self._file.name).iter_batches()

    def close(self) -> None:
        self._file.close()
