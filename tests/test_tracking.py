"""The tracking adapter against a real `mlflow server` on 127.0.0.1: the child-run layout, and
that a server that is down costs nothing but a replay, which never duplicates a point."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
import torch
from mlflow import MlflowClient
from PIL import Image

import pipeline.tracking as tracking
from pipeline.manifest import manifest_row
from pipeline.storage import ImageStore
from pipeline.tracking import (
    ImageRun,
    experiment_id_for,
    logged_images,
    point,
    start_job_run,
    stored_points,
    sync_image,
)
from pipeline.train_image import JobSettings, train_image
from singan.base import package_version
from singan.cli.commands import main as singan_command
from singan.data.examples import pebbles
from singan.data.image import png_bytes, save_image
from tests.conftest import tiny_config
from tests.trainers import JudgedBySeed

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_image_run_layout(tmp_path, mlflow_server):
    uri = mlflow_server.url
    experiment_id, parent = start_job_run(uri, "adapter", None, {"manifest": "m.parquet"})
    path = tmp_path / "wall.png"
    save_image(pebbles(28, 36, seed=3), path)
    task = manifest_row("wall", path.as_uri(), tiny_config(niter=6), 1)
    job = JobSettings(output=str(tmp_path / "out"), tracking_uri=uri, experiment_id=experiment_id,
                      parent_run_id=parent, num_samples=1, device="cpu",
                      run_tags={"mlflow.user": "tester", "ray.job_id": "01000000"})
    result = train_image(task, job)
    assert result.status == "done" and result.tracking_complete

    client = MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "wall"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["pyramid_url"].endswith("/out/wall/model")
    assert run.data.tags["mlflow.user"] == "tester" and run.data.tags["ray.job_id"] == "01000000"
    # The image is the run's input: the Dataset column of the runs table.
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "wall" and given.dataset.source_type == "local"
    assert json.loads(given.dataset.source) == {"uri": path.as_uri()}
    assert json.loads(given.dataset.profile) == {"height": 28, "width": 36}
    assert run.data.params["config.niter"] == "6" and run.data.params["height"] == "28"
    # The iteration is the step; MLflow gets every MLFLOW_EVERY-th and the last, the image's
    # folder every one the training reports (log_every 5 here).
    losses = client.get_metric_history(run.info.run_id, "s01/d_loss")
    assert [m.step for m in losses] == [6]
    kept = stored_points(ImageStore(str(tmp_path / "out"), "wall"))
    assert [p["step"] for p in kept if p["key"] == "s01/d_loss"] == [5, 6]
    amps = client.get_metric_history(run.info.run_id, "noise_amp")
    assert sorted(m.step for m in amps) == list(range(result.num_scales))  # the scale is the step
    assert amps[0].value == 1.0
    # Each scale's grid under key "samples" (the scale is the step of the image slider) and
    # the final grid under "final", each a PNG (the image's file) and the WebP the views load.
    assert run.data.tags[tracking.LOGGED_IMAGES_TAG] == "True"
    pictures = logged_images(f.path for f in client.list_artifacts(run.info.run_id, "images"))
    assert set(pictures) == {("samples", i) for i in range(result.num_scales)} | {("final", 0)}
    assert all(set(files) == {"png", "webp"} for files in pictures.values())
    stored = ImageStore(str(tmp_path / "out"), "wall")
    sent = client.download_artifacts(run.info.run_id, pictures["samples", 1]["png"], str(tmp_path))
    assert Path(sent).read_bytes() == stored.get("samples/scale_01.png")
    # The summary metrics and the verdict, to sort and filter the experiment's runs by.
    assert run.data.tags["quality"] == result.quality in ("ok", "suspect")
    assert run.data.metrics["final/num_scales"] == result.num_scales
    assert {"final/patch_swd", "final/diversity", "final/swd_ratio",
            "final/seconds"} <= set(run.data.metrics)

    # A failing image ends its run FAILED, with the reason.
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    failed = train_image(manifest_row("bad", bad.as_uri(), task.config, 0), job)
    assert failed.status == "failed" and failed.mlflow_run_id
    run = client.get_run(failed.mlflow_run_id)
    assert run.info.status == "FAILED" and "bad.png" in run.data.tags["error"]


def test_retrained_image_in_mlflow(tmp_path, mlflow_server, monkeypatch):
    """--retrain-suspect: each attempt's final grid on the final picture's slider, its ratio
    as retrain/swd_ratio, and the kept attempt's summary, verdict and model."""
    uri = mlflow_server.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    experiment_id = experiment_id_for(uri, "retrained")
    path = tmp_path / "wall.png"
    save_image(pebbles(28, 36, seed=3), path)
    task = manifest_row("wall", path.as_uri(), tiny_config(niter=6), 1)
    job = JobSettings(output=str(tmp_path / "out"), tracking_uri=uri, experiment_id=experiment_id,
                      num_samples=1, device="cpu", retrain_suspect=2,
                      trainer=JudgedBySeed({1: 9.0, 2: 3.0}))
    result = train_image(task, job)
    assert result.status == "done" and result.tracking_complete and result.quality == "ok"
    client = MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["retrained"] == "seed 1 suspect; tried seed 2; kept seed 2 (ok)"
    assert run.data.tags["quality"] == "ok" and "quality_reason" not in run.data.tags
    assert run.data.metrics["final/swd_ratio"] == 3.0
    assert [(m.step, m.value) for m in
            client.get_metric_history(run.info.run_id, "retrain/swd_ratio")] == [(1, 3.0)]
    pictures = logged_images(f.path for f in client.list_artifacts(run.info.run_id, "images"))
    assert {step for key, step in pictures if key == "final"} == {0, 1}
    sent = client.download_artifacts(run.info.run_id, pictures["final", 1]["png"], str(tmp_path))
    assert Path(sent).read_bytes() == ImageStore(str(tmp_path / "out"), "wall").get(
        "samples/final.png")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.unwrap_python_model().pyramid.seed == 2


def test_server_down_then_replay_without_duplicates(tmp_path, mlflow_server):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = ImageStore(str(tmp_path), "img")
    run = ImageRun(store, dead, "0", None, log_model=True)  # must not raise, nor wait minutes
    run.log_params({"image_id": "img", "seed": 3})
    points = [point("s00/d_loss", 0.5 * i, i, 0) for i in range(1, 1201)]  # more than one batch
    points += [point("noise_amp", 1.0, 0, 0)]
    run.log_points(points)
    run.flush()
    picture = png_bytes(torch.rand(1, 3, 12, 20) * 2 - 1)
    store.put("samples/scale_00.png", picture)
    run.log_picture("samples", 0, picture)
    run.finish("FINISHED")
    assert tracking.sender().drain(60)
    assert run.run_id is None and not run.complete
    # What the worker keeps: the points (written by the training) and tracking.json.
    store.put(tracking.points_file(0), tracking.points_bytes(points))
    store.mark_success({"config_hash": "x", "summary": {"final/diversity": 0.01},
                        "quality": "suspect", "quality_reason": "collapsed diversity"})

    # The server is back (here: another address, as after a move): the replay creates the run
    # and sends every point once; a second replay sends nothing.
    report = sync_image(store, mlflow_server.url)
    assert report.created_run and report.points_sent == len(points) and report.artifacts_sent == 2
    client = MlflowClient(mlflow_server.url)
    assert len(client.get_metric_history(report.run_id, "s00/d_loss")) == 1200
    again = sync_image(store, mlflow_server.url)
    assert again.run_id == report.run_id and not again.created_run
    assert again.points_sent == 0 and again.artifacts_sent == 0
    assert len(client.get_metric_history(report.run_id, "s00/d_loss")) == 1200
    finished = client.get_run(report.run_id)
    assert finished.info.status == "FINISHED" and finished.data.params["seed"] == "3"
    assert finished.data.metrics["final/diversity"] == 0.01  # the summary, replayed
    assert finished.inputs.dataset_inputs[0].dataset.name == "img"  # and the input
    assert finished.data.tags["quality"] == "suspect"
    shown = logged_images(f.path for f in client.list_artifacts(report.run_id, "images"))
    assert set(shown) == {("samples", 0)} and finished.data.tags[tracking.LOGGED_IMAGES_TAG]
    (output,) = finished.outputs.model_outputs  # the model, logged once by the first replay
    model = client.get_logged_model(output.model_id)
    assert [(m.key, m.value) for m in model.metrics] == [("final/diversity", 0.01)]


def test_pictures_are_named_as_mlflow_log_image_names_them(tmp_path):
    """MLflow's image views find a picture by its file name: ours parse as MLflow's own
    log_image writes them, and theirs as ours (a change of MLflow's convention fails here)."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("names", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment).info.run_id
    grid = torch.rand(1, 3, 30, 500) * 2 - 1
    client.log_image(run_id, Image.open(io.BytesIO(png_bytes(grid))), key="s/grid", step=7)
    for name, data in tracking.image_files("s/grid", 8, png_bytes(grid)).items():
        (tmp_path / name.rpartition("/")[2]).write_bytes(data)
        client.log_artifact(run_id, str(tmp_path / name.rpartition("/")[2]), "images")
    theirs = [f.path for f in client.list_artifacts(run_id, "images")]
    found = logged_images(theirs)
    assert set(found) == {("s/grid", 7), ("s/grid", 8)}
    assert all(set(files) == {"png", "webp"} for files in found.values())
    ours = found["s/grid", 8]
    assert ours["webp"] == ours["png"].removesuffix(".png") + "+compressed.webp"
    small = Image.open(client.download_artifacts(run_id, ours["webp"], str(tmp_path / "d")))
    assert small.format == "WEBP" and small.size == (256, 15)  # MLflow's compressed side


def test_replay_sends_the_missing_half_of_a_picture_under_its_name(tmp_path):
    """A worker killed between a picture's two uploads: the replay sends the other file with
    the same name, so the views pair them."""
    picture = png_bytes(torch.rand(1, 3, 8, 8) * 2 - 1)
    png, webp = tracking.image_files("samples", 2, picture)
    store = ImageStore(str(tmp_path), "img")
    store.put("samples/scale_02.png", picture)

    class Client:  # the two calls the replay of pictures makes
        def __init__(self):
            self.sent = []

        def list_artifacts(self, run_id, folder):
            return [type("File", (), {"path": png})()]

        def log_artifact(self, run_id, local_path, folder):
            self.sent.append(f"{folder}/{Path(local_path).name}")

    names = ["samples/scale_02.png"]
    client = Client()
    assert tracking._replay_pictures(client, "r", store, names, tagged=True) == 1
    assert client.sent == [webp]


def test_experiment_is_created_once(mlflow_server):
    first = experiment_id_for(mlflow_server.url, "created-once")
    assert experiment_id_for(mlflow_server.url, "created-once") == first


def test_run_finds_its_experiment_by_name_when_the_driver_could_not(tmp_path, mlflow_server):
    # The driver found MLflow down (no experiment id); the worker, later, gets there by name.
    store = ImageStore(str(tmp_path), "img")
    run = ImageRun(store, mlflow_server.url, None, None, experiment="late-experiment")
    run.log_points([point("noise_amp", 1.0, 0, 0)])
    run.finish("FINISHED")
    assert tracking.sender().drain(60) and run.complete
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("late-experiment")
    assert client.get_run(run.run_id).info.experiment_id == experiment.experiment_id


class Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` in the tracking code stops it."""


@pytest.mark.parametrize("opener", ["worker", "sync"])
def test_a_worker_killed_between_creating_and_recording_its_run_gets_no_second_run(
        tmp_path, mlflow_server, monkeypatch, opener):
    experiment = f"claimed-{opener}"
    experiment_id = experiment_id_for(mlflow_server.url, experiment)
    store = ImageStore(str(tmp_path), "img")
    real_create = tracking.create_image_run

    def create_then_die(*args):
        real_create(*args)
        raise Killed  # the run exists on the server; tracking.json does not name it yet

    monkeypatch.setattr(tracking, "create_image_run", create_then_die)
    with pytest.raises(Killed):
        ImageRun(store, mlflow_server.url, experiment_id, None, experiment=experiment)
    monkeypatch.setattr(tracking, "create_image_run", real_create)
    assert store.get_json("tracking.json")["run_id"] is None

    if opener == "worker":  # the Ray retry
        run = ImageRun(store, mlflow_server.url, experiment_id, None, experiment=experiment)
        run.finish("FINISHED")
        assert tracking.sender().drain(60)
        run_id = run.run_id
    else:  # the job's replay, or sync_tracking.py
        report = sync_image(store)
        assert not report.created_run
        run_id = report.run_id
    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs([experiment_id], "tags.image_id = 'img'")
    assert [r.info.run_id for r in runs] == [run_id]
    assert store.get_json("tracking.json")["run_id"] == run_id


def test_a_new_job_ends_earlier_job_runs_whose_driver_is_gone(mlflow_server, monkeypatch):
    """Gone: a driver on this machine whose process is not running, or one elsewhere whose
    heartbeat is older than tracking.STALE_SECONDS. Other outputs and live drivers are left."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment = client.create_experiment("abandoned")

    def job_run(output: str, host: str, pid: str) -> str:
        run = client.create_run(experiment, tags={"kind": "job", "driver_host": host,
                                                  "driver_pid": pid})
        client.log_param(run.info.run_id, "output", output)
        tracking.heartbeat(client, run.info.run_id, 0.0)
        return run.info.run_id

    dead_here = job_run("out", socket.gethostname(), str(2**22 + 1))
    other_output = job_run("other", socket.gethostname(), str(2**22 + 1))
    stale_elsewhere = job_run("out", "far", "1")
    time.sleep(1.5)
    live_elsewhere = job_run("out", "elsewhere", "1")  # its heartbeat: just now
    monkeypatch.setattr(tracking, "STALE_SECONDS", 1.0)
    _, new = tracking.start_job_run(mlflow_server.url, "abandoned", None, {"output": "out"})
    status = {run_id: client.get_run(run_id).info.status
              for run_id in (dead_here, other_output, stale_elsewhere, live_elsewhere)}
    assert status == {dead_here: "KILLED", other_output: "RUNNING", stale_elsewhere: "KILLED",
                      live_elsewhere: "RUNNING"}
    assert client.get_run(dead_here).data.tags["superseded_by"] == new


def test_the_experiment_opens_as_model_training_in_the_ui(mlflow_server):
    """MLflow's UI shows an untagged experiment as GenAI (traces, evaluations); ours says it
    holds model training, also when it was made before (a user's own note is kept)."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    made = client.get_experiment(experiment_id_for(mlflow_server.url, "kind-new"))
    assert made.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "one child run per image" in made.tags["mlflow.note.content"]
    old = client.create_experiment("kind-old", tags={"mlflow.note.content": "mine"})
    assert experiment_id_for(mlflow_server.url, "kind-old") == old
    tags = client.get_experiment(old).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "mine"


def test_context_tags_name_the_user_the_entry_point_and_the_code(tmp_path):
    tags = tracking.context_tags("jobs/train_manifest.py")
    assert tags["mlflow.source.name"] == "jobs/train_manifest.py"
    assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.user"]
    assert tags["singan_fleet.version"] == package_version()
    # The commit of a checkout; none for a folder without .git (an uploaded working dir).
    import subprocess

    assert tracking._git_commit(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert tracking._git_commit(tmp_path) == head and len(head) == 40


def test_every_pyramid_is_an_mlflow_model_loaded_and_served(tmp_path, mlflow_server,
                                                             monkeypatch):
    """The finished image's pyramid is its run's model: mlflow.pyfunc.load_model samples from
    it, `mlflow models serve --env-manager local` answers over REST, its summary metrics are
    the model's, and --register-model makes it a version of the registered model."""
    uri = mlflow_server.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    experiment_id, parent = start_job_run(uri, "models", None, {"manifest": "m.parquet"})
    path = tmp_path / "wall.png"
    save_image(pebbles(28, 36, seed=3), path)
    job = JobSettings(output=str(tmp_path / "out"), tracking_uri=uri, experiment_id=experiment_id,
                      parent_run_id=parent, num_samples=1, device="cpu",
                      register_model="walls")
    result = train_image(manifest_row("wall", path.as_uri(), tiny_config(niter=6), 1), job)
    assert result.status == "done" and result.tracking_complete
    client = MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.source_run_id == run.info.run_id
    assert str(model.status) in ("READY", "LoggedModelStatus.READY")
    linked = {m.key for m in model.metrics}
    assert {"final/patch_swd", "final/diversity", "final/seconds"} <= linked
    (version,) = client.search_model_versions("name = 'walls'")
    assert version.source == f"models:/{model.model_id}" and version.tags["image_id"] == "wall"

    # The model references the stored pyramid: a few small files, no tensor, no pickle.
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{model.model_id}",
                                                     dst_path=str(tmp_path / "model")))
    stored = sorted(f.path for f in client.list_logged_model_artifacts(model.model_id))
    assert stored == ["MLmodel", "conda.yaml", "mlflow_model_code.py", "python_env.yaml",
                      "requirements.txt"]
    assert "pyramid_url" in (files / "MLmodel").read_text()

    loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    table = loaded.predict(pd.DataFrame([{"num": 2, "seed": 5}, {"scale_h": 1.5, "seed": 5}]))
    assert list(table["row"]) == [0, 0, 1] and list(table["sample"]) == [0, 1, 0]
    first = Image.open(io.BytesIO(base64.b64decode(table["png"][0])))
    assert first.size == (28, 22)  # the finest scale: 28 x 36 shrunk to max_size 28
    assert (table["width"][2], table["height"][2]) == (42, 22)
    again = loaded.predict(pd.DataFrame([{"num": 2, "seed": 5}]))
    assert list(again["png"]) == list(table["png"][:2])  # a seed gives the same samples
    with pytest.raises(Exception, match="at most 64 samples"):
        loaded.predict(pd.DataFrame([{"num": 65}]))
    with pytest.raises(Exception, match="unknown column.*seeds"):
        loaded.predict(pd.DataFrame([{"seeds": 1}]))

    # The singan command reads it from MLflow too: the run's model and the registry's version.
    for name, uri in (("runs", f"runs:/{run.info.run_id}/model"), ("models", "models:/walls/1")):
        out = tmp_path / name
        assert singan_command(["sample", uri, "--out", str(out), "--num", "2", "--seed", "5",
                               "--device", "cpu"]) == 0
        assert (out / "sample_000.png").read_bytes() == base64.b64decode(table["png"][0])

    port = free_port()
    # As from an activated environment: the server execs `uvicorn` from PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/walls/1",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
            time.sleep(0.5)
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                               json={"dataframe_records": [{"num": 2, "seed": 5}]})
        assert answer.ok, answer.text
        served = answer.json()["predictions"]
        assert [s["png"] for s in served] == list(table["png"][:2])
        assert served[0]["width"] == 28 and served[0]["height"] == 22
    finally:
        server.terminate()
        server.wait(30)
