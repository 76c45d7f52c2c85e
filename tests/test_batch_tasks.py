"""The batch tasks of a manifest (super-resolution, animation): the `task` column and its
parameters, their place in a training's identity, and rows trained end to end in one process
(outputs in the image's folder and in its MLflow run)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

import pipeline.tracking as tracking
import singan
from pipeline.catalog import write_manifest
from pipeline.manifest import ManifestError, manifest_row, read_manifest, seed_for
from pipeline.storage import ImageStore
from pipeline.tracking import ImageRun, start_job_run, sync_image
from pipeline.train_image import JobSettings, config_hash, train_image
from singan.api import config
from singan.apps.animation import BETAS
from singan.data.examples import pebbles
from singan.data.image import load_image, png_bytes, save_image
from singan.resize import imresize
from tests.conftest import tiny_config


def write_table(tmp_path: Path, columns: dict) -> str:
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


def problems(url: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        read_manifest(url)
    return info.value.problems


def image_uri(tmp_path: Path, name: str = "stones") -> str:
    """A 40 x 48 picture in tmp_path; its file:// URL."""
    path = tmp_path / f"{name}.png"
    if not path.exists():
        save_image(pebbles(40, 48, seed=3), path)
    return path.as_uri()


def settings(output: Path, **kw) -> JobSettings:
    return JobSettings(output=str(output), num_samples=1, quality_samples=0, sifid_samples=0,
                       device="cpu", **kw)


def tiny(**overrides) -> singan.Config:
    return tiny_config(**{"niter": 4, "nfc": 8, "max_nfc": 8, **overrides})


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --- The manifest ---------------------------------------------------------------------------

def test_task_rows_read_with_their_parameters(tmp_path):
    url = write_table(tmp_path, {
        "image_id": ["a", "b", "c", "d", "e"], "uri": ["x.png"] * 5,
        "task": [None, "train", "sr", "animate", "animate"],
        "sr_factor": pa.array([None, None, 4, None, None], pa.int64()),  # ints are fine
        "frames": pa.array([None, None, None, 5, None], pa.int32()),
        "fps": [None, None, None, 12.5, None],
    })
    tasks = read_manifest(url)
    uri, paper = tasks[0].uri, config()
    assert tasks == [
        manifest_row("a", uri, paper, seed_for("a")),
        manifest_row("b", uri, paper, seed_for("b")),
        manifest_row("c", uri, paper, seed_for("c"), task="sr", params={"sr_factor": 4.0}),
        manifest_row("d", uri, paper, seed_for("d"), task="animate", params={"frames": 5, "fps": 12.5}),
        manifest_row("e", uri, paper, seed_for("e"), task="animate"),
    ]
    assert isinstance(tasks[2].params["sr_factor"], float)
    assert [t.params for t in tasks] == [{}, {}, {"sr_factor": 4.0}, {"frames": 5, "fps": 12.5},
                                         {"frames": 100, "fps": 10.0}]


def test_bad_task_rows_are_all_reported_row_by_row(tmp_path):
    url = write_table(tmp_path, {
        "image_id": ["a", "b", "c", "d", "e", "f", "g", "h"], "uri": ["x.png"] * 8,
        "task": ["srr", "sr", "sr", "sr", None, "sr", "animate", "animate"],
        "sr_factor": [None, None, 1.0, 1.05, 2.0, 0.5, 4.0, None],
        "frames": pa.array([None, None, None, None, 10, 3, None, 0], pa.int64()),
        "fps": [None, None, None, None, None, None, None, -1.0],
        "niter": pa.array([None, None, 0, None, None, None, None, None], pa.int64()),
    })
    assert problems(url) == [
        "row 0 (image_id 'a'): task must be one of train, sr, animate, got 'srr'",
        "row 1 (image_id 'b'): task 'sr' needs an sr_factor (such as 2, 4 or 8)",
        "row 2 (image_id 'c'): invalid config: niter must be a positive integer, got 0",
        "row 2 (image_id 'c'): sr_factor must be a number above 1, got 1",
        ("row 3 (image_id 'd'): sr_factor: factor 1.05 is too close to 1: it gives no upscaling "
         "step; use a factor of at least 1.13"),
        "row 4 (image_id 'e'): sr_factor is a parameter of task 'sr', but the row's task is 'train'",
        ("row 4 (image_id 'e'): frames is a parameter of task 'animate', but the row's task is "
         "'train'"),
        ("row 5 (image_id 'f'): frames is a parameter of task 'animate', but the row's task is "
         "'sr'"),
        "row 5 (image_id 'f'): sr_factor must be a number above 1, got 0.5",
        ("row 6 (image_id 'g'): sr_factor is a parameter of task 'sr', but the row's task is "
         "'animate'"),
        "row 7 (image_id 'h'): frames must be at least 1, got 0",
        "row 7 (image_id 'h'): fps must be a number above 0, got -1",
    ]


def test_a_row_config_the_task_cannot_train_with_is_reported(tmp_path):
    # Animation trains from min_size 20: a row that keeps images at 15 px cannot animate.
    url = write_table(tmp_path, {"image_id": ["a", "b"], "uri": ["x.png"] * 2,
                                 "task": ["train", "animate"],
                                 "min_size": pa.array([12, 12], pa.int64()),
                                 "max_size": pa.array([15, 15], pa.int64())})
    assert problems(url) == [
        "row 1 (image_id 'b'): task 'animate': invalid config: max_size (15) is below min_size (20)"]


def test_task_columns_have_types(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a"], "uri": ["x.png"], "task": [1],
                                 "sr_factor": ["4"], "frames": [5.0], "fps": [True]})
    assert problems(url) == [
        "column 'task' must be a string column, got int64",
        "column 'sr_factor' must be a number column, got string",
        "column 'frames' must be an integer column, got double",
        "column 'fps' must be a number column, got bool",
    ]


def test_written_task_manifests_read_back(tmp_path):
    url = str(tmp_path / "m.parquet")
    write_manifest([{"image_id": "a", "uri": "x.png", "task": "sr", "sr_factor": 2.0},
                    {"image_id": "b", "uri": "x.png", "task": "animate", "frames": 5},
                    {"image_id": "c", "uri": "x.png"}], url)
    assert pq.read_schema(url).names == ["image_id", "uri", "task", "sr_factor", "frames"]
    assert [(t.task.name, t.params) for t in read_manifest(url)] == [
        ("sr", {"sr_factor": 2.0}), ("animate", {"frames": 5, "fps": 10.0}), ("train", {})]


# --- Identity -------------------------------------------------------------------------------

def test_a_plain_training_keeps_its_hash():
    # Pinned against the code before tasks and before the Config fields added since (padding,
    # loss, ...): images already finished are not retrained after an upgrade. (lr_milestone is
    # given: config(niter=10) put the drop at 8 then; it leaves SinGAN's where the preset has it
    # now, which is another training.)
    task = manifest_row("wall", "file:///data/wall.png", config("quick", niter=10, lr_milestone=8), 7)
    assert config_hash(task) == "1a016995928f1e8b"
    assert config_hash(manifest_row("wall", "file:///data/wall.png", config(), 7)) == \
        "555df0637ff38c2d"
    assert config_hash(manifest_row(task.image_id, task.uri, task.config, 7, task="train")) == \
        "1a016995928f1e8b"
    # A new field away from its default is a new training.
    changed = manifest_row("wall", task.uri, config("quick", niter=10, lr_milestone=8,
                                                 padding="reflect"), 7)
    assert config_hash(changed) != config_hash(task)


def test_the_task_and_its_parameters_are_part_of_the_identity():
    def digest(task: str = "train", **params) -> str:
        return config_hash(manifest_row("wall", "file:///data/wall.png", config(), 7, task, params))

    hashes = [digest(), digest("sr", sr_factor=2), digest("sr", sr_factor=4), digest("animate"),
              digest("animate", frames=5), digest("animate", fps=20)]
    assert len(set(hashes)) == len(hashes)
    assert digest("sr", sr_factor=4) == digest("sr", sr_factor=4.0)
    assert digest("animate") == digest("animate", frames=100, fps=10)


# --- Rows trained end to end ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sr_row(tmp_path_factory, mlflow_server):
    """An sr x2 row of a 40 x 48 image, trained with tracking: (task, job, result, folder)."""
    root = tmp_path_factory.mktemp("sr")
    experiment_id, parent = start_job_run(mlflow_server.url, "batch-tasks", None, {})
    task = manifest_row("stones", image_uri(root), tiny(), 5, task="sr", params={"sr_factor": 2})
    job = settings(root / "out", tracking_uri=mlflow_server.url, experiment_id=experiment_id,
                   parent_run_id=parent)
    return task, job, train_image(task, job), root / "out" / "stones"


def test_an_sr_row_writes_the_result_and_bicubic_at_twice_the_size(sr_row):
    task, _, result, folder = sr_row
    assert (result.status, result.error, result.task) == ("done", None, "sr")
    model = singan.load(folder / "model")
    assert model.is_complete and model.config.alpha == 100 and model.config.min_size == 18
    height, width = model.reals[-1].shape[-2:]
    assert (height, width) == (40, 48)  # the low-resolution image trains at full size
    for name in ("sr/sr_x2.png", "sr/bicubic_x2.png"):
        assert Image.open(folder / name).size == (2 * width, 2 * height)
    # The bicubic file is the trained image resized, nothing else.
    bicubic = imresize(model.reals[-1], shape=(80, 96))
    assert torch.allclose(load_image(folder / "sr/bicubic_x2.png"), bicubic.clamp(-1, 1),
                          atol=1 / 255 + 1e-6)
    success = json.loads((folder / "_SUCCESS").read_text())
    assert success["task"] == "sr" and success["sr_factor"] == 2.0
    assert success["config_hash"] == config_hash(task)


def test_an_sr_row_is_tracked_with_its_pictures(sr_row, mlflow_server):
    _, _, result, _ = sr_row
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and result.tracking_complete
    assert run.data.params["task"] == "sr" and run.data.params["sr_factor"] == "2.0"
    assert run.data.params["config.alpha"] == "100.0"  # the config it trained with
    assert {f.path for f in client.list_artifacts(run.info.run_id, "sr")} == {
        "sr/sr_x2.png", "sr/bicubic_x2.png"}


def test_an_unchanged_rerun_skips_and_a_changed_task_retrains(sr_row, tmp_path):
    task, job, result, folder = sr_row
    stamp = (folder / "_SUCCESS").stat().st_mtime_ns
    again = train_image(task, job)
    assert (again.status, again.task, again.mlflow_run_id) == ("skipped", "sr", result.mlflow_run_id)
    assert (folder / "_SUCCESS").stat().st_mtime_ns == stamp

    # The same row as a plain training, on a copy of the outputs (other tests read the first).
    folder = Path(shutil.copytree(folder, tmp_path / "out" / task.image_id))
    plain = manifest_row(task.image_id, task.uri, task.config, task.seed)
    retrained = train_image(plain, settings(folder.parent))
    assert retrained.status == "done" and retrained.task == "train"
    assert not (folder / "sr").exists()  # the old task's outputs went with its training
    assert singan.load(folder / "model").config == task.config


def test_an_animate_row_writes_one_gif_per_beta_and_start_scale(tmp_path):
    # Two scales: start scale 2 of the reference's grid does not exist and is skipped.
    task = manifest_row("stones", image_uri(tmp_path), tiny(num_scales=2, max_size=48), 5,
                     task="animate", params={"frames": 5, "fps": 20})
    result = train_image(task, settings(tmp_path / "out"))
    assert (result.status, result.error, result.task, result.num_scales) == (
        "done", None, "animate", 2)
    folder = tmp_path / "out" / "stones"
    gifs = {name for name in files_under(folder) if name.startswith("animate/")}
    assert gifs == {f"animate/start_scale_{s}/beta_{b:.2f}.gif" for s in (0, 1) for b in BETAS}
    for name in gifs:
        with Image.open(folder / name) as gif:
            assert gif.n_frames == 5 and gif.size == (48, 40)
            assert gif.info["duration"] == 50  # 20 frames a second
    model = singan.load(folder / "model")
    assert model.config.noise_padding and model.config.min_size == 20
    assert train_image(task, settings(tmp_path / "out")).status == "skipped"


def test_replay_sends_the_task_outputs_the_server_missed(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the dead server answers at once
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    store = ImageStore(str(tmp_path), "img")
    run = ImageRun(store, dead, "0", None)
    run.log_params({"image_id": "img", "task": "animate"})
    names = ["sr/sr_x2.png", "sr/bicubic_x2.png",
             "animate/start_scale_0/beta_0.80.gif", "animate/start_scale_1/beta_0.95.gif"]
    for name in names:
        store.put(name, b"picture " + name.encode())
        run.log_artifact(name, b"picture")
    grid = png_bytes(torch.zeros(1, 3, 4, 6))
    for name in ("samples/scale_00.png", "samples/final.png"):  # the image views' pictures
        store.put(name, grid)
        run.log_picture(*tracking.picture_of(name), grid)
    store.put("model/scale_00.pt", b"not an artifact")
    assert not run.complete

    report = sync_image(store, mlflow_server.url)
    assert report.created_run and report.artifacts_sent == len(names) + 2 * 2  # PNG + WebP
    client = MlflowClient(mlflow_server.url)
    sent = {f.path for folder in ("sr", "animate/start_scale_0", "animate/start_scale_1")
            for f in client.list_artifacts(report.run_id, folder)}
    assert sent == set(names)
    shown = tracking.logged_images(f.path for f in client.list_artifacts(report.run_id, "images"))
    assert set(shown) == {("samples", 0), ("final", 0)}
    assert sync_image(store, mlflow_server.url).artifacts_sent == 0


# --- The make_manifest script ---------------------------------------------------------------

@pytest.fixture(scope="module")
def make_manifest():
    path = Path(__file__).resolve().parents[1] / "jobs" / "make_manifest.py"
    spec = importlib.util.spec_from_file_location("make_manifest_tasks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_make_manifest_gives_every_row_the_task(tmp_path, make_manifest, capsys):
    image_uri(tmp_path / "photos", "a")
    image_uri(tmp_path / "photos", "b")
    out = str(tmp_path / "sr.parquet")
    assert make_manifest([str(tmp_path / "photos"), "--out", out, "--task", "sr",
                          "--sr-factor", "4"]) == 0
    assert capsys.readouterr().out == f"2 images -> {out} (task sr)\n"
    assert [(t.image_id, t.task.name, t.params) for t in read_manifest(out)] == [
        ("a", "sr", {"sr_factor": 4.0}), ("b", "sr", {"sr_factor": 4.0})]

    out = str(tmp_path / "gifs.parquet")
    assert make_manifest([str(tmp_path / "photos"), "--out", out, "--task", "animate",
                          "--frames", "20"]) == 0
    assert [(t.task.name, t.params) for t in read_manifest(out)] == [
        ("animate", {"frames": 20, "fps": 10.0})] * 2


@pytest.mark.parametrize("argv, message", [
    (["--task", "sr"], "--task sr: task 'sr' needs an sr_factor (such as 2, 4 or 8)"),
    (["--task", "sr", "--sr-factor", "1"], "--task sr: sr_factor must be a number above 1, got 1"),
    (["--sr-factor", "2"], ("--task train: sr_factor is a parameter of task 'sr', but the "
                            "row's task is 'train'")),
])
def test_make_manifest_refuses_bad_task_options(tmp_path, make_manifest, capsys, argv, message):
    image_uri(tmp_path / "photos", "a")
    out = tmp_path / "m.parquet"
    assert make_manifest([str(tmp_path / "photos"), "--out", str(out), *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()
