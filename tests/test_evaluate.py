"""The SIFID evaluation job end to end: two tiny trained models (and a broken one) evaluated by
`ray job submit` of jobs/evaluate_sifid.py on a local Ray, with the random-weights Inception
fixture and a real mlflow server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from PIL import Image

from pipeline.evaluate import parse_starts, trained_image_ids
from pipeline.ledger import Entry, Ledger, Status
from pipeline.manifest import manifest_row
from pipeline.storage import ImageStore
from pipeline.tracking import start_job_run
from pipeline.train_image import JobSettings, train_image
from singan.data.examples import pebbles
from singan.data.image import save_image
from singan.errors import InputError
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "tests" / "fixtures" / "sifid_random_weights.pth"


def test_start_scales_use_the_papers_names():
    assert parse_starts("N,N-1") == [("N", 0), ("N-1", 1)]
    assert parse_starts("N-2") == [("N-2", 2)]
    for bad in ("N+1", "1", "N,N", ""):
        with pytest.raises(InputError):
            parse_starts(bad)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_server):
    """Two tiny models trained with tracking, and their results table."""
    root = tmp_path_factory.mktemp("trained")
    experiment_id, parent = start_job_run(mlflow_server.url, "eval-e2e", None,
                                          {"output": str(root / "out")})
    job = JobSettings(output=str(root / "out"), tracking_uri=mlflow_server.url,
                      experiment_id=experiment_id, parent_run_id=parent, num_samples=1,
                      device="cpu")
    for i in range(2):
        save_image(pebbles(28, 36, seed=i), root / f"img{i}.png")
        task = manifest_row(f"img{i}", (root / f"img{i}.png").as_uri(), tiny_config(niter=6), i)
        assert train_image(task, job).status == "done"
    Ledger(str(root / "out")).compact()
    return root


@pytest.mark.slow
def test_evaluation_job(trained, ray_cluster, mlflow_server):
    out = trained / "eval"
    assert sorted(i for i, _ in trained_image_ids(str(trained / "out"))) == ["img0", "img1"]
    assert [i for i, _ in trained_image_ids(str(trained / "out" / "_results.parquet"))] == [
        "img0", "img1"]
    # A third model whose files are broken fails its own row.
    shutil.copytree(trained / "out" / "img1", trained / "out" / "broken")
    (trained / "out" / "broken" / "model" / "scale_01.pt").write_bytes(b"torn")
    Ledger(str(trained / "out")).record(Entry(
        "broken", Status.DONE, None, 4, 1.0, None, None,
        ImageStore(str(trained / "out"), "broken").url, config_hash="0", job_id="0"))

    def submit(submission_id: str) -> tuple[int, str]:
        command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
                   ray_cluster.dashboard_url, "--submission-id", submission_id, "--working-dir",
                   str(ROOT), "--", "python", "jobs/evaluate_sifid.py", "--models",
                   str(trained / "out"), "--out", str(out), "--samples", "3",
                   "--inception-weights", str(WEIGHTS), "--tracking-uri", mlflow_server.url,
                   "--experiment", "eval-e2e", "--gpus-per-task", "0", "--models-per-task", "2"]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600,
                              cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        return done.returncode, done.stdout + done.stderr

    code, logs = submit("eval-first")
    assert code != 0, logs  # the broken model
    assert "failed broken: " in logs and "scale_01.pt cannot be loaded" in logs

    rows = pq.read_table(out / "sifid.parquet").to_pylist()
    assert len(rows) == 2 * 2 * 3  # images x start scales x samples
    assert {(r["image_id"], r["start"]) for r in rows} == {
        (i, s) for i in ("img0", "img1") for s in ("N", "N-1")}
    assert all(r["sifid"] >= 0 and r["patch_swd"] > 0 and r["nn_patch_distance"] >= 0
               for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["overall"]) == {"N", "N-1"} and summary["overall"]["N"]["images"] == 2
    assert summary["overall"]["N"]["patch_swd_mean"] > 0
    assert set(summary["failed"]) == {"broken"} and summary["failed_count"] == 1
    images = {(r["image_id"], r["start"]): r
              for r in pq.read_table(out / "images.parquet").to_pylist()}
    assert set(images) == {(i, s) for i in ("img0", "img1") for s in ("N", "N-1")}
    mean_n = sum(r["sifid"] for r in rows if r["image_id"] == "img0" and r["start"] == "N") / 3
    assert images["img0", "N"]["sifid_mean"] == pytest.approx(mean_n)
    assert 0 < images["img0", "N"]["diversity"] and 0 < images["img0", "N-1"]["diversity"]
    assert summary["overall"]["N"]["sifid_mean"] == pytest.approx(
        (images["img0", "N"]["sifid_mean"] + images["img1", "N"]["sifid_mean"]) / 2)

    page = (out / "report.html").read_text()
    for name in ("img0/real.png", "img0/N/sample_02.png", "img1/N-1/sample_00.png"):
        assert name in page and (out / name).is_file()
    assert "sifid_histogram.png" in page and "broken failed: " in page
    assert Image.open(out / "sifid_histogram.png").size == (640, 320)

    # MLflow: an evaluation run nested under each image's training run.
    client = MlflowClient(mlflow_server.url)
    for image_id in ("img0", "img1"):
        training = json.loads((trained / "out" / image_id / "_SUCCESS").read_text())["run_id"]
        [run] = client.search_runs(
            [client.get_run(training).info.experiment_id],
            filter_string=f"tags.kind = 'eval' and tags.image_id = '{image_id}'")
        assert run.data.tags["mlflow.parentRunId"] == training
        assert run.data.metrics["eval/sifid_N"] == pytest.approx(
            images[image_id, "N"]["sifid_mean"])
        assert {"eval/sifid_N-1", "eval/diversity_N", "eval/diversity_N-1", "eval/patch_swd_N",
                "eval/nn_patch_distance_N-1"} <= set(run.data.metrics)

    # The evaluation's own run, nested under the training job's run: its numbers, the
    # histogram (log_figure), every image's means (log_table), the report.
    [job_run] = client.search_runs([client.get_run(training).info.experiment_id],
                                   filter_string="tags.kind = 'evaluation'")
    parent = client.get_run(training).data.tags["mlflow.parentRunId"]
    assert job_run.data.tags["mlflow.parentRunId"] == parent
    assert job_run.info.status == "FAILED"  # the broken model
    numbers = job_run.data.metrics
    assert numbers["eval/sifid_N"] == pytest.approx(summary["overall"]["N"]["sifid_mean"])
    assert numbers["models_evaluated"] == 2 and numbers["models_failed"] == 1
    assert job_run.data.params["samples"] == "3" and job_run.data.tags["mlflow.user"]
    logged = {f.path for f in client.list_artifacts(job_run.info.run_id)}
    assert {"sifid_histogram.png", "images.json", "report.html", "summary.json"} <= logged
    saved = json.loads(Path(client.download_artifacts(job_run.info.run_id, "images.json",
                                                      str(trained))).read_text())
    column = {name: i for i, name in enumerate(saved["columns"])}
    assert sorted((row[column["image_id"]], row[column["start"]]) for row in saved["data"]) == \
        sorted(images)
    assert job_run.data.tags["mlflow.loggedArtifacts"]  # MLflow's mark of a table

    # Again: the two good models are skipped, with the same numbers.
    code, logs = submit("eval-again")
    assert "skipped img0" in logs and "skipped img1" in logs
    again = pq.read_table(out / "images.parquet").to_pylist()
    assert {(r["image_id"], r["start"]): r for r in again} == images


def test_missing_results_table_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="_results.parquet: no such results table"):
        list(trained_image_ids(str(tmp_path / "_results.parquet")))


def test_the_report_streams_a_row_group_per_10000_rows_and_shows_the_ends_of_the_ranking(
        tmp_path):
    from pipeline.evaluate import EvalResult
    from pipeline.report import REPORT_IMAGES, Report
    from pipeline.storage import Storage

    report = Report(["N"], 64)
    for n in range(3 * REPORT_IMAGES):
        rows = [{"image_id": f"m{n}", "start": "N", "start_scale": 0, "sample": k,
                 "sifid": n + k / 10, "patch_swd": 0.1, "nn_patch_distance": 0.2,
                 "recipe": "singan"} for k in range(2)]
        summary = {"N": {"sifid_mean": n + 0.05, "sifid_std": 0.05, "diversity": 0.5,
                         "patch_swd_mean": 0.1, "nn_patch_distance_mean": 0.2}}
        report.add(EvalResult(f"m{n}", Status.DONE, None, rows, summary))
    report.add(EvalResult("bad", Status.FAILED, "InputError: torn"))
    summary = report.write(Storage(str(tmp_path)))
    assert summary["evaluated"] == 150 and summary["failed"] == {"bad": "InputError: torn"}
    assert summary["overall"]["N"]["sifid_mean"] == pytest.approx(74.55)
    table = pq.ParquetFile(tmp_path / "sifid.parquet")
    assert table.metadata.num_rows == 300 and table.metadata.num_row_groups == 1
    page = (tmp_path / "report.html").read_text()
    shown = [f"m{n}" for n in range(150) if f"<h2>m{n}</h2>" in page]
    assert shown == [f"m{n}" for n in range(REPORT_IMAGES)] + [
        f"m{n}" for n in range(150 - REPORT_IMAGES, 150)]
    assert page.index("<h2>m149</h2>") < page.index("<h2>m0</h2>")  # the highest SIFID first
