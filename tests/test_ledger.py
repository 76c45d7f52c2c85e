"""The ledger of finished images (pipeline.ledger): names a listing can be read from, the set of
done images the driver keeps (8 bytes each), the compaction into the results table, and the
rebuild command for outputs whose driver died or that predate the ledger."""

from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest

from pipeline.ledger import (
    Entry,
    KeySet,
    Ledger,
    Spool,
    Status,
    done_key,
    file_name,
    parse_name,
)
from pipeline.storage import ImageStore, Storage


def entry(image_id: str, status: str = "done", job: str = "j1", at: str = "2026-12-01T10:00:00Z",
          digest: str = "abc", **values) -> Entry:
    return Entry(image_id, Status(status), values.pop("error", None), 4, 1.0, None, "run",
                 f"file:///out/{image_id}", config_hash=digest, job_id=job, finished_at=at,
                 **values)


def test_a_ledger_files_name_says_what_is_done_and_reads_back():
    name = file_name("photo-1.jpg", "0123456789abcdef", Status.DONE, "f" * 32)
    assert name == f"photo-1.jpg@0123456789abcdef@done@{'f' * 32}.json"
    assert parse_name(name) == ("photo-1.jpg", "0123456789abcdef", Status.DONE, "f" * 32)
    for other in ("notes.txt", "a@b@running@j.json", "a@b@done.json", "_results.parquet"):
        assert parse_name(other) is None


def test_the_done_set_costs_8_bytes_an_image_and_answers_exactly():
    keys = KeySet(done_key(f"img{n}", "h1") for n in range(100_000))
    assert len(keys) == 100_000 and keys.keys.nbytes == 800_000
    assert done_key("img5", "h1") in keys and done_key("img99999", "h1") in keys
    assert done_key("img5", "h2") not in keys  # other settings: not done
    assert done_key("img100000", "h1") not in keys
    assert done_key("x", "h") not in KeySet()


def test_record_and_list_one_file_per_image_and_job(tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    ledger.record(entry("a"))
    ledger.record(entry("b", "failed", error="ValueError: bad"))
    ledger.record(entry("b", "failed", job="j2", error="ValueError: still bad"))
    # An image found done (skipped) goes in as done, by the job that did it.
    ledger.record(entry("c", "skipped", job="j0"))
    assert sorted(os.listdir(tmp_path / "out" / "_results")) == [
        "a@abc@done@j1.json", "b@abc@failed@j1.json", "b@abc@failed@j2.json",
        "c@abc@done@j0.json"]
    assert sorted(ledger.done_ids()) == ["a", "c"]
    assert done_key("a", "abc") in ledger.done() and done_key("b", "abc") not in ledger.done()
    stored = json.loads((tmp_path / "out" / "_results" / "b@abc@failed@j2.json").read_text())
    assert stored["error"] == "ValueError: still bad" and stored["status"] == "failed"


def test_the_table_keeps_each_images_last_entry_a_success_over_a_failure_of_the_same_second(
        tmp_path, monkeypatch):
    from pipeline import ledger

    monkeypatch.setattr(ledger, "RUN_ROWS", 2)  # several sorted runs, merged
    spool = Spool()
    for item in (entry("b", "failed", at="2026-12-01T10:00:00Z"),
                 entry("a", at="2026-12-01T09:00:00Z"),
                 entry("b", at="2026-12-01T10:00:00Z"),
                 entry("c", "failed", at="2026-12-01T11:00:00Z", error="late"),
                 entry("d", at=None),
                 entry("c", at="2026-12-01T10:30:00Z"),
                 entry("d", "failed", at="2026-12-01T08:00:00Z")):
        spool.add(item)
    batches = [batch.slice(start, 2) for batch in spool.batches() for start in range(0, 7, 2)]
    Ledger(str(tmp_path / "out")).compact(batches)
    spool.close()
    table = pq.read_table(tmp_path / "out" / "_results.parquet")
    assert [(r["image_id"], r["status"]) for r in table.to_pylist()] == [
        ("a", "done"), ("b", "done"), ("c", "failed"), ("d", "failed")]


def test_compaction_reads_only_what_the_last_table_and_the_driver_lack(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    ledger = Ledger(output)
    for image_id in ("a", "b", "c"):
        ledger.record(entry(image_id))
    reads = []
    get = Storage.get

    def counted(self, name):
        reads.append(name)
        return get(self, name)

    monkeypatch.setattr(Storage, "get", counted)
    spool = Spool()
    spool.add(entry("a"))  # what the driver received: not read again
    ledger.compact(spool.batches())
    spool.close()
    assert sorted(reads) == ["b@abc@done@j1.json", "c@abc@done@j1.json"]
    reads.clear()
    ledger.record(entry("d", "failed", job="j2", error="gone"))
    ledger.compact()  # the last table holds a, b and c
    assert sorted(reads) == ["d@abc@failed@j2.json"]
    table = pq.read_table(io.BytesIO(Storage(output).get("_results.parquet"))).to_pylist()
    assert [(r["image_id"], r["status"], r["error"]) for r in table] == [
        ("a", "done", None), ("b", "done", None), ("c", "done", None), ("d", "failed", "gone")]


def test_the_rebuild_command_and_outputs_from_before_the_ledger(tmp_path, capsys):
    from jobs.compact_results import main

    output = str(tmp_path / "out")
    for image_id in ("old1", "old2"):  # trained before the ledger: a _SUCCESS and no ledger file
        ImageStore(output, image_id).mark_success({"run_id": "r", "config_hash": "h1",
                                                   "num_scales": 5, "seconds": 3.0,
                                                   "job_id": "j0"})
    Ledger(output).record(entry("new"))
    assert main(["--output", output]) == 0
    table = pq.read_table(tmp_path / "out" / "_results.parquet")
    assert table.column("image_id").to_pylist() == ["new"]
    assert main(["--output", output, "--from-folders"]) == 0
    assert "2 finished images added to the ledger" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "out" / "_results.parquet").to_pylist()
    assert [(r["image_id"], r["config_hash"], r["num_scales"]) for r in table] == [
        ("new", "abc", 4), ("old1", "h1", 5), ("old2", "h1", 5)]
    assert main(["--output", output, "--from-folders"]) == 0  # nothing twice
    assert "0 finished images added" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_compacting_an_output_without_a_ledger_gives_an_empty_table(tmp_path, kind):
    output = tmp_path / "out"
    if kind == "empty":
        (output / "_results").mkdir(parents=True)
    url = Ledger(str(output)).compact()
    assert url.endswith("/_results.parquet") and pq.read_table(output / "_results.parquet"
                                                               ).num_rows == 0
