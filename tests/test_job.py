"""End to end, as a user runs it: `ray start --head` on 127.0.0.1, `ray job submit --working-dir .`
of jobs/train_manifest.py, manifest and outputs on moto's S3 server, tracking to a real
`mlflow server`. Then a second submit with a corrupt image added (the others skipped, the bad one
reported, the job fails), and a worker SIGKILLed mid-training (the Ray retry resumes at the last
finished scale)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline.catalog import write_manifest
from pipeline.storage import ImageStore
from pipeline.tracking import logged_images, stored_points
from singan.data.examples import pebbles
from singan.data.image import to_pil

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "tests" / "fixtures" / "sifid_random_weights.pth"  # the Inception stem's keys
RAY = str(Path(sys.executable).parent / "ray")
BUCKET = "singan-e2e"
# Tiny trainings: 4 scales up to 28 px with narrow networks, a few seconds per image.
# The shared test cluster has no GPU and no autoscaler: tasks ask for none.
TINY = ["--preset", "quick", "--set", "max_size=28", "--set", "min_size=12", "--set", "nfc=8",
        "--set", "max_nfc=16", "--set", "niter=8", "--num-samples", "2", "--sifid-samples", "0",
        "--gpus-per-task", "0"]


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    to_pil(pebbles(28, 36, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(ray_cluster, env: dict, *args: str, submission_id: str,
           entrypoint: tuple[str, ...] = ("jobs/train_manifest.py",)) -> tuple[int, str]:
    """`ray job submit` of the training job (or of `entrypoint`, a script that runs it); returns
    (exit code of the job, its logs)."""
    command = [RAY, "job", "submit", "--address", ray_cluster.dashboard_url,
               "--submission-id", submission_id, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps({"env_vars": env}),
               "--", "python", *entrypoint, *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def s3(s3_server, monkeypatch_module):
    """An S3 bucket with three good images and one corrupt one, and this process pointed at it."""
    import s3fs

    for name, value in s3_server.env.items():
        monkeypatch_module.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    for seed in range(3):
        fs.pipe_file(f"{BUCKET}/images/stones_{seed}.png", png(seed))
    fs.pipe_file(f"{BUCKET}/corrupt/broken.png", png(9)[:300])  # a truncated PNG
    fs.pipe_file(f"{BUCKET}/weights/inception.pth", WEIGHTS.read_bytes())
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def child_runs(client: MlflowClient, parent_id: str):
    return client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_train_manifest_on_a_real_cluster(s3, s3_server, mlflow_server, ray_cluster):
    output = f"s3://{BUCKET}/outputs"
    good = [{"image_id": f"stones_{i}", "uri": f"s3://{BUCKET}/images/stones_{i}.png"}
            for i in range(3)]
    good[2]["seed"] = 42  # a per-row override
    write_manifest(good, f"s3://{BUCKET}/manifest.parquet")
    args = ["--manifest", f"s3://{BUCKET}/manifest.parquet", "--output", output,
            "--tracking-uri", mlflow_server.url, "--experiment", "e2e", *TINY]

    # 1. First submit: three images trained, with per-scale SIFID (weights from S3).
    code, logs = submit(ray_cluster, s3_server.env, *args, "--sifid-samples", "2",
                        "--inception-weights", f"s3://{BUCKET}/weights/inception.pth",
                        submission_id="e2e-first")
    assert code == 0, logs
    assert "3 images" in logs and "3 trained" in logs
    for i in range(3):
        root = f"{BUCKET}/outputs/stones_{i}"
        success = json.loads(s3.cat_file(f"{root}/_SUCCESS"))
        files = set(s3.find(root))
        assert {f"{root}/model/scale_{k:02d}.pt" for k in range(4)} <= files
        assert {f"{root}/reals/scale_03.png", f"{root}/samples/scale_03.png",
                f"{root}/samples/sample_01.png", f"{root}/metrics/scale_03.jsonl"} <= files
        assert success["num_scales"] == 4
    table = pq.read_table(io.BytesIO(s3.cat_file(f"{BUCKET}/outputs/_results.parquet")))
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["stones_0", "stones_1", "stones_2"]
    assert {r["status"] for r in rows.values()} == {"done"}
    assert all(r["num_scales"] == 4 and r["mlflow_run_id"] for r in rows.values())
    assert all(r["sifid"] is not None and r["sifid"] >= 0 for r in rows.values())
    assert rows["stones_0"]["output_url"] == f"{output}/stones_0"

    # MLflow: one parent, three children with per-scale histories and pictures.
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("e2e")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'job'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["images_done"] == 3
    children = child_runs(client, parents[0].info.run_id)
    assert sorted(r.info.run_name for r in children) == ["stones_0", "stones_1", "stones_2"]
    # Who ran it, from what, in which Ray job (the submission id names its logs).
    context = parents[0].data.tags
    assert context["ray.submission_id"] == "e2e-first" and context["ray.job_id"]
    assert context["ray.dashboard"].endswith("/#/jobs/e2e-first")
    assert context["mlflow.source.name"] == "jobs/train_manifest.py" and context["mlflow.user"]
    assert context["singan_fleet.version"] == metadata.version("singan-fleet")
    (manifest_input,) = parents[0].inputs.dataset_inputs  # the manifest: the job's input
    assert manifest_input.dataset.source_type == "s3"
    assert json.loads(manifest_input.dataset.profile) == {"num_rows": 3}
    assert {"image_id", "uri"} <= set(json.loads(manifest_input.dataset.schema)["columns"])
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.inputs.dataset_inputs[0].dataset.name == run.info.run_name  # its image
        assert {k: run.data.tags[k] for k in ("ray.submission_id", "ray.job_id", "mlflow.user",
                                               "singan_fleet.version")} == {
            k: context[k] for k in ("ray.submission_id", "ray.job_id", "mlflow.user",
                                    "singan_fleet.version")}
        assert run.data.tags["pyramid_url"] == f"{output}/{run.info.run_name}/model"
        history = client.get_metric_history(run.info.run_id, "s03/g_loss")
        assert [m.step for m in history] == [8]
        assert len(client.get_metric_history(run.info.run_id, "noise_amp")) == 4
        sifids = client.get_metric_history(run.info.run_id, "sifid")
        assert sorted(m.step for m in sifids) == [0, 1, 2, 3]
        final = next(m.value for m in sifids if m.step == 3)
        assert final == pytest.approx(rows[run.info.run_name]["sifid"])
        stored = {path.removeprefix(f"{BUCKET}/outputs/{run.info.run_name}/")
                  for path in s3.glob(f"{BUCKET}/outputs/{run.info.run_name}/samples/*.png")}
        assert {f"samples/scale_{k:02d}.png" for k in range(4)} < stored  # and the final ones
        # MLflow's image views: each scale's picture (step = the scale) and the final one (the
        # real image, the reconstruction and samples side by side); the single samples stay
        # in storage.
        shown = logged_images(f.path for f in client.list_artifacts(run.info.run_id, "images"))
        assert set(shown) == {("samples", k) for k in range(4)} | {("final", 0)}
    seed_param = {r.info.run_name: r.data.params["seed"] for r in children}
    assert seed_param["stones_2"] == "42"

    # 2. Second submit, of the same images and a corrupt one: the three are skipped (nothing
    #    written, no new child runs), the bad one fails its own row, and the job exits non-zero.
    stamp = s3.info(f"{BUCKET}/outputs/stones_0/_SUCCESS")["LastModified"]
    write_manifest([*good, {"image_id": "broken", "uri": f"s3://{BUCKET}/corrupt/broken.png"}],
                   f"s3://{BUCKET}/with-broken.parquet")
    args[1] = f"s3://{BUCKET}/with-broken.parquet"
    code, logs = submit(ray_cluster, s3_server.env, *args, submission_id="e2e-again")
    assert code != 0
    assert "ledger: 3 images done before" in logs and "3 already done" in logs
    assert "1 Ray tasks of up to 1 images" in logs  # the done ones never left the driver
    assert "failed broken: s3://singan-e2e/corrupt/broken.png:" in logs
    assert s3.info(f"{BUCKET}/outputs/stones_0/_SUCCESS")["LastModified"] == stamp
    table = pq.read_table(io.BytesIO(s3.cat_file(f"{BUCKET}/outputs/_results.parquet")))
    status = dict(zip(table.column("image_id").to_pylist(), table.column("status").to_pylist()))
    assert status == {"stones_0": "done", "stones_1": "done", "stones_2": "done",
                      "broken": "failed"}
    jobs = dict(zip(table.column("image_id").to_pylist(), table.column("job_id").to_pylist()))
    assert jobs["stones_0"] == jobs["stones_1"] != jobs["broken"]  # done by the first job
    assert not s3.exists(f"{BUCKET}/outputs/broken/_SUCCESS")
    total = client.search_runs([experiment.experiment_id], filter_string="tags.image_id != ''")
    assert sorted(r.info.run_name for r in total) == ["broken", "stones_0", "stones_1",
                                                      "stones_2"]
    assert next(r for r in total if r.info.run_name == "broken").info.status == "FAILED"


def test_bad_manifest_is_refused_before_any_training(s3, s3_server, ray_cluster):
    write_manifest([{"image_id": "../escape", "uri": f"s3://{BUCKET}/images/stones_0.png"},
                    {"image_id": "missing", "uri": f"s3://{BUCKET}/images/nope.png"}],
                   f"s3://{BUCKET}/bad.parquet")
    code, logs = submit(ray_cluster, s3_server.env, "--manifest", f"s3://{BUCKET}/bad.parquet",
                        "--output", f"s3://{BUCKET}/bad-out", "--no-tracking", *TINY,
                        submission_id="e2e-bad-manifest")
    assert code != 0
    assert "row 0 (image_id '../escape')" in logs
    assert "row 1" not in logs  # a missing image fails its own row in its training
    assert not s3.exists(f"{BUCKET}/bad-out")


def bucket_manifest(tmp_path: Path) -> tuple[Path, list[str]]:
    """5 images of 28 x 36 (one of them a truncated PNG whose header still reads) and 2 of
    40 x 48: with 4 images per task, buckets of 4 and 1 of the first size and 1 of 2."""
    rows = []
    for i in range(5):
        path = tmp_path / f"small_{i}.png"
        data = png(i)
        path.write_bytes(data[:300] if i == 2 else data)
        rows.append({"image_id": f"small_{i}", "uri": path.as_uri()})
    for i in range(2):
        path = tmp_path / f"large_{i}.png"
        buffer = io.BytesIO()
        to_pil(pebbles(40, 48, seed=20 + i)).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
        rows.append({"image_id": f"large_{i}", "uri": path.as_uri()})
    manifest = tmp_path / "manifest.parquet"
    write_manifest(rows, str(manifest))
    return manifest, [row["image_id"] for row in rows]


def test_buckets_of_one_size_train_together_and_a_bad_image_fails_alone(
        tmp_path, mlflow_server, ray_cluster):
    manifest, ids = bucket_manifest(tmp_path)
    output = tmp_path / "out"
    code, logs = submit(ray_cluster, {}, "--manifest", str(manifest), "--output", str(output),
                        "--tracking-uri", mlflow_server.url, "--experiment", "e2e-buckets",
                        "--images-per-task", "4", *TINY, submission_id="e2e-buckets")
    assert code == 1, logs  # the truncated image failed
    assert "3 Ray tasks of up to 4 images" in logs, logs
    assert "6 trained, 0 already done, 1 failed" in logs, logs
    assert "failed small_2: " in logs and "truncated or corrupt image data" in logs
    table = pq.read_table(output / "_results.parquet").to_pylist()
    assert [r["image_id"] for r in table] == sorted(ids)
    rows = {r["image_id"]: r for r in table}
    assert {i: r["status"] for i, r in rows.items()} == {
        i: "failed" if i == "small_2" else "done" for i in ids}
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("e2e-buckets")
    assert (f"MLflow: {mlflow_server.url}/#/experiments/{experiment.experiment_id}"
            "?workflowType=machine_learning") in logs
    (parent,) = client.search_runs([experiment.experiment_id], "tags.kind = 'job'")
    assert parent.data.params["gpus_per_task_used"] == "0"  # what was used: no GPU here
    assert parent.data.params["images_per_task"] == "4"
    assert parent.data.params["ray_tasks"] == "3"
    for image_id in ids:  # each image: its own folder, scales, _SUCCESS and MLflow run
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.image_id = '{image_id}'")
        assert len(runs) == 1, image_id
        if image_id == "small_2":
            assert runs[0].info.status == "FAILED" and not (output / image_id / "_SUCCESS").exists()
            continue
        assert runs[0].info.status == "FINISHED"
        assert len(client.get_metric_history(runs[0].info.run_id, "noise_amp")) == 4
        assert sorted(p.name for p in (output / image_id / "model").glob("scale_*.pt")) == [
            f"scale_{k:02d}.pt" for k in range(4)]


def test_killed_workers_resume_every_image_at_its_last_scale(tmp_path, mlflow_server,
                                                            ray_cluster):
    """tests/faults.py kills the worker once per image, right after it stores scale 1 (the job
    with a test callback, submitted as users submit the job). large_0 (a size
    of its own) trains alone in its task; small_0 and small_1 share a bucket, which the first
    kill leaves at different scales, so retries resume them in sub-buckets. Every image keeps
    the scales stored before its kill, a retry trains the rest, and its one MLflow run is reused
    with each point once."""
    manifest, _ = bucket_manifest(tmp_path)
    trained = ["small_0", "small_1", "large_0"]
    write_manifest([{"image_id": i, "uri": (tmp_path / f"{i}.png").as_uri()} for i in trained],
                   str(manifest))
    output = tmp_path / "out"
    code, logs = submit(ray_cluster, {}, "--manifest", str(manifest),
                        "--output", str(output), "--tracking-uri", mlflow_server.url,
                        "--experiment", "e2e-kill", "--images-per-task", "4",
                        "--max-retries", "3", *TINY, submission_id="e2e-kill",
                        entrypoint=("tests/faults.py", "1"))
    assert code == 0, logs
    assert "2 Ray tasks of up to 4 images" in logs, logs
    assert "3 trained, 0 already done, 0 failed" in logs, logs
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("e2e-kill")
    for image_id in trained:
        root = output / image_id
        fired = (root / ".fault-fired").stat().st_mtime_ns  # written just before its kill
        mtimes = [(root / "model" / f"scale_{k:02d}.pt").stat().st_mtime_ns for k in range(4)]
        assert mtimes[0] < fired and mtimes[1] < fired, image_id  # kept from before the kill
        assert mtimes[2] > fired and mtimes[3] > fired, image_id  # trained by a retry
        points = stored_points(ImageStore(str(output), image_id))
        assert [p["step"] for p in points if p["key"] == "noise_amp"] == [0, 1, 2, 3], image_id
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.image_id = '{image_id}'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED", image_id
        assert [m.step for m in sorted(client.get_metric_history(runs[0].info.run_id,
                                                                 "noise_amp"),
                                       key=lambda m: m.step)] == [0, 1, 2, 3], image_id
