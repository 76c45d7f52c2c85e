"""The per-image pipeline in one process: storage layout, whole-or-absent writes, skip, resume,
failure isolation and the results table. Ray and MLflow servers are in test_job.py."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import torch

import singan
from pipeline import retrain, storage
from pipeline import train_image as train_image_module
from pipeline.ledger import Ledger, Spool
from pipeline.manifest import config_hash, manifest_row
from pipeline.recording import ImageRecorder
from pipeline.storage import ImageStore, Storage, TransientError, is_transient, with_retries
from pipeline.tracking import stored_points
from pipeline.train_image import JobSettings, Trainer, train_image
from singan.data import outputs
from singan.data.examples import pebbles
from singan.data.image import save_image
from singan.errors import InputError
from tests.conftest import tiny_config
from tests.trainers import JudgedBySeed


def tiny_task(tmp_path, image_id="wall", seed=1, **overrides):
    path = tmp_path / "images" / f"{image_id}.png"
    if not path.exists():
        save_image(pebbles(28, 36, seed=3), path)
    return manifest_row(image_id, path.as_uri(), tiny_config(niter=6, **overrides), seed)


def job(tmp_path, **kw) -> JobSettings:
    return JobSettings(output=str(tmp_path / "out"), num_samples=2, device="cpu", **kw)


# --- storage --------------------------------------------------------------------------------

def test_put_is_whole_or_absent(tmp_path):
    store = Storage(str(tmp_path / "root"))
    store.put("a/b.bin", b"first")
    assert store.get("a/b.bin") == b"first" and store.get("missing") is None
    # A failing local write leaves the old file and no temporary file behind.
    with pytest.raises(TypeError):
        store.put("a/b.bin", "not bytes")  # type: ignore[arg-type]
    assert store.get("a/b.bin") == b"first"
    assert os.listdir(tmp_path / "root" / "a") == ["b.bin"]


def test_retries_transient_errors_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    assert with_retries("op", flaky, delays=(0, 0, 0)) == "ok" and len(calls) == 3
    with pytest.raises(TransientError, match="op: ConnectionError"):
        with_retries("op", lambda: (_ for _ in ()).throw(ConnectionError("down")), delays=(0,))
    missing = []
    with pytest.raises(FileNotFoundError):  # not transient: no retry
        with_retries("op", lambda: missing.append(1) or os.stat("/nonexistent/x"), delays=(0, 0))
    assert len(missing) == 1


def test_retry_schedule_and_time_limit_from_the_environment(monkeypatch):
    delays, timeout = storage.RETRY_DELAYS_ENV, storage.TIMEOUT_ENV
    monkeypatch.delenv(delays, raising=False)
    monkeypatch.delenv(timeout, raising=False)
    assert storage.retry_delays() == storage.RETRY_DELAYS == (0.5, 1, 2, 4, 8)
    assert storage.operation_timeout() == storage.OPERATION_TIMEOUT == 60
    monkeypatch.setenv(delays, "0, 0.25,30")
    monkeypatch.setenv(timeout, "2.5")
    assert storage.retry_delays() == (0, 0.25, 30) and storage.operation_timeout() == 2.5
    attempts = []
    monkeypatch.setenv(delays, "0,0")  # with_retries reads it at each operation
    with pytest.raises(TransientError):
        with_retries("op", lambda: attempts.append(1) or (_ for _ in ()).throw(TimeoutError()))
    assert len(attempts) == 3
    for name, text, problem in [(delays, "1,,2", "'' is not seconds"),
                                (delays, "1, -2", "'-2' must be 0 or more and finite"),
                                (delays, "inf", "'inf' must be 0 or more and finite"),
                                (timeout, "0", "'0' must be above 0 and finite"),
                                (timeout, "soon", "'soon' is not seconds"),
                                (timeout, "1,2", "expected one number of seconds")]:
        monkeypatch.setenv(name, text)
        with pytest.raises(InputError, match=re.escape(f"{name}={text!r}: {problem}")):
            storage.retry_delays() if name == delays else storage.operation_timeout()
        monkeypatch.delenv(name)


def test_which_storage_errors_are_transient():
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    url = "http://127.0.0.1:1"
    assert is_transient(ConnectionResetError("reset"))
    assert is_transient(TimeoutError("slow"))
    assert is_transient(OSError(5, "500 Internal Server Error"))  # how s3fs reports a 5xx
    assert is_transient(EndpointConnectionError(endpoint_url=url))
    assert is_transient(ConnectionClosedError(endpoint_url=url))  # hung up without an answer
    for permanent in (FileNotFoundError("gone"), PermissionError("denied"),
                      IsADirectoryError("folder"), ValueError("bad")):
        assert not is_transient(permanent)


def test_scale_files_round_trip_and_partial_models(tmp_path, tiny_model):
    store = ImageStore(str(tmp_path), "img")
    assert store.load_model() is None
    two_scales = copy.deepcopy(tiny_model)
    del two_scales.scales[2:]
    for index in range(2):
        outputs.write_level(two_scales, index, store)
    partial = store.load_model()
    assert len(partial.scales) == 2 and partial.num_scales == tiny_model.num_scales
    for a, b in zip(partial.scales, tiny_model.scales):
        assert torch.equal(a.real, b.real)
    # A scale file whose config.json update never happened (worker died in between) is ignored.
    store.put("model/scale_02.pt", b"torn")
    assert len(store.load_model().scales) == 2


# --- the per-image function -----------------------------------------------------------------

def test_train_image_writes_the_layout_then_skips(tmp_path):
    task = tiny_task(tmp_path)
    result = train_image(task, job(tmp_path))
    assert result.status == "done" and result.error is None and result.num_scales == 4
    root = tmp_path / "out" / "wall"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    n = result.num_scales
    assert files == {"_SUCCESS", "model/config.json",
                     *(f"model/scale_{i:02d}.pt" for i in range(n)),
                     *(f"reals/scale_{i:02d}.png" for i in range(n)),
                     *(f"samples/scale_{i:02d}.png" for i in range(n)),
                     *(f"metrics/scale_{i:02d}.jsonl" for i in range(n)),
                     "samples/sample_00.png", "samples/sample_01.png", "samples/reconstruction.png",
                     "samples/final.png"}
    success = json.loads((root / "_SUCCESS").read_text())
    assert success["config_hash"] == config_hash(task) and success["num_scales"] == n
    # The summary and the verdict (singan.metrics.verdict), kept for the results and for a replay.
    summary = success["summary"]
    assert {"final/patch_swd", "final/diversity", "final/swd_ratio", "final/reconstruction_rmse",
            "final/seconds", "final/num_scales", "final/peak_memory_mib"} <= set(summary)
    assert summary["final/num_scales"] == n and summary["final/peak_memory_mib"] > 50
    assert success["quality"] in ("ok", "suspect") and result.quality == success["quality"]
    assert (success.get("quality_reason") is None) == (success["quality"] == "ok")
    model = singan.load(root / "model")
    assert model.is_complete and model.seed == task.seed and model.config == task.config

    points = stored_points(ImageStore(str(tmp_path / "out"), "wall"))
    keys = {p["key"] for p in points}
    assert {"s00/d_loss", "s02/reconstruction", "noise_amp", "scale_seconds"} <= keys
    # Each scale's file holds that scale's points, and is written once.
    scale_2 = (root / "metrics" / "scale_02.jsonl").read_text().splitlines()
    assert {json.loads(line)["scale"] for line in scale_2} == {2}
    steps = [p["step"] for p in points if p["key"] == "s01/g_loss"]
    assert steps == [5, 6]  # log_every 5, and the last iteration
    assert [p["step"] for p in points if p["key"] == "noise_amp"] == [0, 1, 2, 3]

    stamp = (root / "_SUCCESS").stat().st_mtime_ns
    again = train_image(task, job(tmp_path))
    assert again.status == "skipped" and again.num_scales == n
    assert again.quality == result.quality
    assert (root / "_SUCCESS").stat().st_mtime_ns == stamp
    # The ledger: one file, named so that a listing says the image is done with these settings.
    ledger = os.listdir(tmp_path / "out" / "_results")
    assert ledger == [f"wall@{config_hash(task)}@done@-.json"]
    assert (f"wall@{config_hash(task)}" in Ledger(str(tmp_path / "out")).done()
            and f"wall@{config_hash(tiny_task(tmp_path, seed=9))}" not in Ledger(
                str(tmp_path / "out")).done())


def test_changed_settings_retrain(tmp_path):
    task = tiny_task(tmp_path)
    train_image(task, job(tmp_path))
    other = tiny_task(tmp_path, seed=2)
    assert config_hash(other) != config_hash(task)
    result = train_image(other, job(tmp_path))
    assert result.status == "done"
    assert singan.load(tmp_path / "out" / "wall").seed == 2


def test_bad_image_fails_its_row_with_one_line(tmp_path):
    bad = tmp_path / "images" / "bad.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a png")
    task = manifest_row("bad", bad.as_uri(), tiny_config(niter=2), 0)
    result = train_image(task, job(tmp_path))
    assert result.status == "failed" and "\n" not in result.error
    assert bad.as_uri() in result.error and "not" in result.error.lower()
    assert not (tmp_path / "out" / "bad" / "_SUCCESS").exists()


def test_transient_failure_resumes_at_the_last_finished_scale(tmp_path, monkeypatch):
    task = tiny_task(tmp_path)
    original = ImageRecorder.on_scale_end

    def fail_after_scale_1(self, model, scale):
        original(self, model, scale)
        if scale == 1:
            raise TransientError("storage throttled")

    monkeypatch.setattr(ImageRecorder, "on_scale_end", fail_after_scale_1)
    with pytest.raises(TransientError):  # raised, so that Ray retries the task
        train_image(task, job(tmp_path))
    root = tmp_path / "out" / "wall"
    assert not (root / "_SUCCESS").exists()
    kept = {i: (root / "model" / f"scale_{i:02d}.pt").stat().st_mtime_ns for i in (0, 1)}

    monkeypatch.setattr(ImageRecorder, "on_scale_end", original)
    result = train_image(task, job(tmp_path))  # the retry
    assert result.status == "done"
    assert {i: (root / "model" / f"scale_{i:02d}.pt").stat().st_mtime_ns for i in (0, 1)} == kept
    # Each metric point once: the resumed run logs scales 2 and 3 only.
    points = stored_points(ImageStore(str(tmp_path / "out"), "wall"))
    assert [p["step"] for p in points if p["key"] == "noise_amp"] == [0, 1, 2, 3]
    assert sum(p["key"] == "s00/d_loss" for p in points) == 2
    # Same model as an uninterrupted run: resuming is exact.
    fresh = train_image(tiny_task(tmp_path, image_id="fresh"), job(tmp_path))
    assert fresh.status == "done"
    a, b = singan.load(root), singan.load(tmp_path / "out" / "fresh")
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6)


def test_the_results_table_compacts_the_ledger(tmp_path):
    import io

    import pyarrow.parquet as pq

    task = tiny_task(tmp_path)
    done = train_image(task, job(tmp_path, job_id="j1"))
    bad = train_image(manifest_row("gone", (tmp_path / "nope.png").as_uri(), task.config, 0),
                      job(tmp_path, job_id="j1"))
    assert "no such file" in bad.error
    ledger = Ledger(str(tmp_path / "out"))
    # What a driver saw comes from its spool; the rest from the ledger's files (here: both).
    spool = Spool()
    spool.add(done)
    url = ledger.compact(spool.batches())
    spool.close()
    assert url.endswith("/_results.parquet")
    rows = pq.read_table(io.BytesIO(Storage(str(tmp_path / "out")).get("_results.parquet")))
    rows = rows.to_pylist()
    assert [(r["image_id"], r["status"]) for r in rows] == [("gone", "failed"), ("wall", "done")]
    assert rows[1]["num_scales"] == 4 and rows[1]["output_url"].endswith("/out/wall")
    assert rows[0]["error"] == bad.error and rows[0]["sifid"] is None
    assert [r["task"] for r in rows] == ["train", "train"]
    assert [r["job_id"] for r in rows] == ["j1", "j1"] and rows[1]["device"] == "cpu"
    # A later success of the failed image wins over its failure, which keeps its own file.
    (tmp_path / "nope.png").write_bytes((tmp_path / "images" / "wall.png").read_bytes())
    again = train_image(manifest_row("gone", (tmp_path / "nope.png").as_uri(), task.config, 0),
                        job(tmp_path, job_id="j2"))
    assert again.status == "done"
    ledger.compact()
    rows = pq.read_table(io.BytesIO(Storage(str(tmp_path / "out")).get("_results.parquet")))
    assert [(r["image_id"], r["status"], r["job_id"]) for r in rows.to_pylist()] == [
        ("gone", "done", "j2"), ("wall", "done", "j1")]
    assert len(os.listdir(tmp_path / "out" / "_results")) == 3


def test_per_scale_sifid(tmp_path):
    from pipeline.inception import stem_weights

    weights = Path(__file__).parent / "fixtures" / "sifid_random_weights.pth"
    inception = stem_weights(str(weights), required=True)
    result = train_image(tiny_task(tmp_path), job(tmp_path, sifid_samples=2), inception)
    root = tmp_path / "out" / "wall"
    points = stored_points(ImageStore(str(tmp_path / "out"), "wall"))
    sifids = [p for p in points if p["key"] == "sifid"]
    assert [p["step"] for p in sifids] == [0, 1, 2, 3]
    assert all(p["value"] >= 0 for p in sifids)
    for key in ("patch_swd", "nn_patch_distance"):  # weight-free, always there
        values = [p for p in points if p["key"] == key]
        assert [p["step"] for p in values] == [0, 1, 2, 3] and all(p["value"] > 0 for p in values)
    assert result.sifid == sifids[-1]["value"]
    assert json.loads((root / "_SUCCESS").read_text())["sifid"] == result.sifid
    # Without weights (or with sifid_samples 0) there is no SIFID.
    other = train_image(tiny_task(tmp_path, image_id="plain"),
                        job(tmp_path, sifid_samples=0, quality_samples=0), inception)
    assert other.sifid is None
    keys = {p["key"] for p in stored_points(ImageStore(str(tmp_path / "out"), "plain"))}
    assert not keys & {"sifid", "patch_swd", "nn_patch_distance"}


def test_inception_weights_resolution(tmp_path, monkeypatch, capsys):
    from pipeline.inception import stem_weights
    from singan.errors import InputError

    with pytest.raises(InputError, match="nope.pth: no such file"):
        stem_weights(str(tmp_path / "nope.pth"), required=True)
    (tmp_path / "bad.pth").write_text("junk")
    with pytest.raises(InputError, match="bad.pth: .*not a PyTorch checkpoint"):
        stem_weights(str(tmp_path / "bad.pth"), required=True)
    # Not asked for and not found: None, and one line saying SIFID is skipped.
    monkeypatch.delenv("SINGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert stem_weights(None, required=False) is None
    assert "SIFID skipped for this job" in capsys.readouterr().out


def test_force_retrains_in_the_task_and_a_retry_of_the_same_job_goes_on(tmp_path, monkeypatch):
    """--force clears an image's folder in its own task (no storage call per row on the
    driver), once per job: a Ray retry of the forcing job's task resumes what it started."""
    task = tiny_task(tmp_path)
    root = tmp_path / "out" / "wall"
    assert train_image(task, job(tmp_path, job_id="j1")).status == "done"
    first = (root / "model" / "scale_00.pt").stat().st_mtime_ns
    assert train_image(task, job(tmp_path, job_id="j2")).status == "skipped"

    original = ImageRecorder.on_scale_end

    def fail_after_scale_1(self, model, scale):
        original(self, model, scale)
        if scale == 1:
            raise TransientError("storage throttled")

    monkeypatch.setattr(ImageRecorder, "on_scale_end", fail_after_scale_1)
    with pytest.raises(TransientError):
        train_image(task, job(tmp_path, job_id="j3", force=True))
    assert not (root / "_SUCCESS").exists()  # cleared, and retraining
    kept = (root / "model" / "scale_00.pt").stat().st_mtime_ns
    assert kept > first
    monkeypatch.setattr(ImageRecorder, "on_scale_end", original)
    again = train_image(task, job(tmp_path, job_id="j3", force=True))  # Ray's retry
    assert again.status == "done"
    assert (root / "model" / "scale_00.pt").stat().st_mtime_ns == kept  # resumed, not cleared
    assert train_image(task, job(tmp_path, job_id="j3", force=True)).status == "done"  # ours


# --- --retrain-suspect (pipeline.retrain) ---------------------------------------------------

def test_retrain_suspect_keeps_the_best_seed_and_says_so(tmp_path):
    task = tiny_task(tmp_path, seed=1)
    root = tmp_path / "out" / "wall"
    trainer = JudgedBySeed({1: 9.0, 2: 12.0, 3: 7.0, 4: 3.0, 5: 2.0})
    result = train_image(task, job(tmp_path, retrain_suspect=2, trainer=trainer))
    # Seed 2 is worse than seed 1 (kept out), seed 3 better though still suspect (kept).
    assert trainer.seeds == [1, 2, 3]
    assert result.status == "done" and result.quality == "suspect"
    assert "runaway patch SWD" in result.quality_reason and "7.0x" in result.quality_reason
    assert result.retrained == ("seed 1 suspect; tried seeds 2, 3; kept seed 3 (suspect)")
    model = singan.load(root / "model")
    assert model.is_complete and model.seed == 3
    success = json.loads((root / "_SUCCESS").read_text())
    assert success["retrained"] == result.retrained and success["summary"]["final/swd_ratio"] == 7
    # The image's time includes its retrainings (the kept attempt was judged after them).
    assert success["summary"]["final/seconds"] <= result.seconds
    record = json.loads((root / "retrain.json").read_text())
    assert [a["seed"] for a in record["attempts"]] == [1, 2, 3] and record["kept"] == 3
    assert record["committing"] is None
    # The folder is the kept attempt's throughout: its pictures are those of seed 3's model.
    assert (root / "samples" / "final.png").read_bytes() == _final_png(model, task)
    # Its points stay out of any replay to MLflow (whose curves are the first training's).
    assert not any(p.get("mlflow", True)
                   for p in stored_points(ImageStore(str(tmp_path / "out"), "wall")))
    # Done: the next run skips it, and the results table has the column.
    again = train_image(task, job(tmp_path, retrain_suspect=2, trainer=trainer))
    assert again.status == "skipped" and again.retrained == result.retrained
    assert trainer.seeds == [1, 2, 3]

    # Stops at the first ok seed.
    other = tiny_task(tmp_path, image_id="other", seed=1)
    trainer = JudgedBySeed({1: 9.0, 2: 3.0, 3: 2.0})
    result = train_image(other, job(tmp_path, retrain_suspect=5, trainer=trainer))
    assert trainer.seeds == [1, 2] and result.quality == "ok" and result.quality_reason is None
    assert result.retrained == "seed 1 suspect; tried seed 2; kept seed 2 (ok)"
    # An ok image is never retrained, and without the option nothing is.
    for image_id, times in (("fine", 3), ("plain", 0)):
        trainer = JudgedBySeed({1: 2.0} if times else {1: 9.0})
        result = train_image(tiny_task(tmp_path, image_id=image_id, seed=1),
                             job(tmp_path, retrain_suspect=times, trainer=trainer))
        assert trainer.seeds == [1] and result.retrained is None
        assert not (tmp_path / "out" / image_id / "retrain.json").exists()


def _final_png(model, task) -> bytes:
    files = Trainer().final_files(model, task, 2)
    return files["samples/final.png"]


def test_retrain_suspect_goes_on_after_a_worker_dies(tmp_path):
    """A task that dies during a retraining is retried by Ray: the retry resumes the kept model
    (another seed than the row's), skips the seeds already tried and goes on with the next."""
    task = tiny_task(tmp_path, seed=1)
    root = tmp_path / "out" / "wall"
    ratios = {1: 9.0, 2: 8.0, 3: 7.5, 4: 3.0}
    trainer = JudgedBySeed(ratios, fail_seed=3)
    with pytest.raises(TransientError):
        train_image(task, job(tmp_path, retrain_suspect=3, trainer=trainer))
    assert trainer.seeds == [1, 2, 3] and not (root / "_SUCCESS").exists()
    assert singan.load(root / "model").seed == 2  # committed before the worker died

    trainer = JudgedBySeed(ratios)
    result = train_image(task, job(tmp_path, retrain_suspect=3, trainer=trainer))
    # Seed 2's model resumed (finished: nothing to train), seed 3 from the start, then seed 4.
    assert trainer.seeds == [2, 3, 4]
    assert result.quality == "ok" and singan.load(root / "model").seed == 4
    assert result.retrained == "seed 1 suspect; tried seeds 2, 3, 4; kept seed 4 (ok)"


def test_a_folder_left_half_written_by_a_retraining_is_trained_again(tmp_path, monkeypatch):
    task = tiny_task(tmp_path, seed=1)
    root = tmp_path / "out" / "wall"
    trainer = JudgedBySeed({1: 9.0, 2: 3.0})

    def dies_while_writing(store, files, record, seed):
        record.committing = seed
        record.write(store)
        store.put("model/scale_00.pt", files["model/scale_00.pt"])
        raise TransientError("the node went away")

    with monkeypatch.context() as patch:
        patch.setattr(train_image_module, "commit", dies_while_writing)
        with pytest.raises(TransientError):
            train_image(task, job(tmp_path, retrain_suspect=1, trainer=trainer))
    assert retrain.expected_seed(ImageStore(str(tmp_path / "out"), "wall"), 1) is None
    # The mixed folder (scale 0 of seed 2, the rest of seed 1) is never resumed nor served.
    trainer = JudgedBySeed({1: 9.0, 2: 3.0})
    result = train_image(task, job(tmp_path, retrain_suspect=1, trainer=trainer))
    assert trainer.seeds == [1, 2] and result.quality == "ok"
    assert singan.load(root / "model").seed == 2
