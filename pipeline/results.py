"""The job's results table: one row per manifest image, as Parquet beside the outputs."""

from __future__ import annotations

import io
from enum import Enum

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import RESULTS, Storage


class Status(str, Enum):
    """How an image (or an evaluation) of a job ended; compares equal to its name."""

    DONE = "done"  # trained (or evaluated) now
    SKIPPED = "skipped"  # already done with the same settings: left as it was
    FAILED = "failed"  # a bad image or a bug: the reason is in the row's error

    def __str__(self) -> str:
        return self.value


SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("task", pa.string()),  # pipeline.tasks: train | sr | animate
    ("status", pa.string()),  # Status: done | skipped | failed
    ("error", pa.string()),
    ("num_scales", pa.int32()),
    ("seconds", pa.float64()),
    ("sifid", pa.float64()),
    ("mlflow_run_id", pa.string()),
    ("output_url", pa.string()),
])


def to_table(results) -> pa.Table:
    """ImageResult records -> an Arrow table with SCHEMA."""
    rows = [r.to_dict() for r in results]
    return pa.table({field.name: pa.array([row[field.name] for row in rows], field.type)
                     for field in SCHEMA}, schema=SCHEMA)


def write(results, output: Storage) -> str:
    """Write {output}/_results.parquet (whole or absent) and return its URL."""
    buffer = io.BytesIO()
    pq.write_table(to_table(results), buffer)
    output.put(RESULTS, buffer.getvalue())
    return output.url_of(RESULTS)


def read(output: Storage) -> pa.Table | None:
    data = output.get(RESULTS)
    return None if data is None else pq.read_table(io.BytesIO(data))
