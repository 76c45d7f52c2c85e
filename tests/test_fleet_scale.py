"""bench/fleet_scale.py's parts that decide its figures: the simulated store counts calls as S3
would bill them, the simulated trainer drives the training callbacks as singan does, and the MLflow
proxy names endpoints without ids. Seconds, in one process: no Ray, no MLflow server."""

from __future__ import annotations

import json

import pytest

import singan
from bench import simstore
from bench.fleet_scale import ProxyStats, endpoint
from bench.fleet_sim import SimulatedTrainer
from pipeline.manifest import manifest_row
from pipeline.storage import ImageStore, Storage, local_copy, read_url
from singan.base import Callback
from singan.data.examples import pebbles
from tests.conftest import tiny_config


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A simulated store over tmp_path, no delay, counts from zero."""
    monkeypatch.setenv(simstore.DELAY_ENV, "0")
    monkeypatch.setenv(simstore.ROOT_ENV, str(tmp_path))
    monkeypatch.delenv(simstore.COUNTS_ENV, raising=False)
    simstore.COUNTS.reset()
    yield simstore.url(str(tmp_path))
    simstore.COUNTS.reset()


def kinds() -> dict:
    return simstore.snapshot()["kinds"]


def test_calls_are_counted_by_kind(store):
    folder = Storage(f"{store}/out")
    folder.put("a/x.json", b'{"a": 1}')
    assert folder.get("a/x.json") == b'{"a": 1}'
    assert folder.get("a/missing") is None
    assert folder.exists("a/x.json") and not folder.exists("a/nothing")
    assert kinds() == {"PUT": 1, "GET": 2, "HEAD": 2, "LIST": 1}  # a miss asks for a prefix too
    assert simstore.snapshot()["patterns"]["PUT out/a/x.json"] == 1


def test_a_listing_costs_one_list_per_1000_names(store, tmp_path):
    folder = tmp_path / "out" / "_results"
    folder.mkdir(parents=True)
    for index in range(2500):
        (folder / f"img{index:05d}.json").write_bytes(b"{}")
    pages = list(Storage(f"{store}/out/_results").iter_names())
    assert [len(page) for page in pages] == [1000, 1000, 500]
    assert kinds() == {"LIST": 3}
    simstore.COUNTS.reset()
    Storage(f"{store}/out").remove_all()  # a listing, then one DeleteObjects per 1,000
    assert kinds() == {"HEAD": 1, "LIST": 1 + 3, "DELETE": 3}
    assert not folder.exists()


def test_empty_listing_costs_one_list(store):
    assert list(Storage(f"{store}/nothing").iter_names()) == []
    assert kinds() == {"LIST": 1}


def test_reads_of_pipeline_storage_work_and_are_counted(store, tmp_path):
    (tmp_path / "image.png").write_bytes(b"x" * 5000)
    assert read_url(f"{store}/image.png") == b"x" * 5000
    assert read_url(f"{store}/image.png", end=10) == b"x" * 10
    with local_copy(f"{store}/image.png") as path:
        assert open(path, "rb").read() == b"x" * 5000
    assert kinds() == {"GET": 3, "HEAD": 1}


def test_delay_per_call_and_per_list_page(store, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv(simstore.DELAY_ENV, "0.05")
    monkeypatch.setenv(simstore.LIST_DELAY_ENV, "0.1")
    start = time.perf_counter()
    Storage(store).put("a", b"1")
    list(Storage(f"{store}/none").iter_names())
    assert time.perf_counter() - start >= 0.15


def test_large_files_are_kept_compressed_and_read_whole(store, tmp_path, monkeypatch):
    monkeypatch.setenv(simstore.COMPRESS_ENV, "1")
    data = b"0.123456789\n" * 10_000
    Storage(store).put("metrics.jsonl", data)
    assert (tmp_path / "metrics.jsonl").stat().st_size < len(data) / 5
    assert Storage(store).get("metrics.jsonl") == data
    assert simstore.SimStore().info(str(tmp_path / "metrics.jsonl"))["size"] == len(data)


def test_counts_are_written_for_the_harness(store, tmp_path, monkeypatch):
    monkeypatch.setenv(simstore.COUNTS_ENV, str(tmp_path / "counts"))
    Storage(store).put("a", b"1")
    simstore.flush()
    found = simstore.read_counts(str(tmp_path / "counts"))
    assert simstore.total(found) == {"PUT": 1}


class Recorder(Callback):
    """The callbacks' calls, as (hook, scale, iteration or finished scales)."""

    def __init__(self, calls: list):
        self.calls = calls

    def on_scale_start(self, model, scale, noise_amp):
        self.calls.append(("start", scale, len(model.scales)))

    def on_iteration(self, log):
        self.calls.append(("iteration", log.scale, log.iteration, log.niter))

    def on_scale_end(self, model, scale):
        self.calls.append(("end", scale, len(model.scales)))


def callback_calls(train, images, config, **options) -> tuple[list[list], list, list]:
    calls = [[] for _ in images]
    order = []  # which image's callback ran, in order
    hooks = []
    for index in range(len(images)):
        recorder = Recorder(calls[index])
        for name in ("on_scale_start", "on_iteration", "on_scale_end"):
            method = getattr(recorder, name)
            setattr(recorder, name, lambda *a, m=method, i=index, n=name: (order.append((i, n)),
                                                                           m(*a)))
        hooks.append([recorder])
    models = train(images, config, seeds=[1, 2][:len(images)], device="cpu", callbacks=hooks,
                   **options)
    return calls, order, models


def test_the_simulated_trainer_calls_back_as_singan_trains():
    config = tiny_config()
    images = [pebbles(24, 32, seed=seed) for seed in (1, 2)]
    real_calls, real_order, real_models = callback_calls(singan.train_many, images, config)
    sim_calls, sim_order, sim_models = callback_calls(
        SimulatedTrainer(seconds_per_scale=0.0).train, images, config, resume=None)
    assert sim_calls == real_calls
    assert sim_order == real_order
    scales = real_models[0].num_scales
    assert [m.num_scales for m in sim_models] == [scales, scales]
    assert [len(m.scales) for m in sim_models] == [scales, scales]
    assert all(m.failure is None for m in sim_models)
    # Every log_every iterations and the last, per scale and image.
    assert sum(c[0] == "iteration" for c in sim_calls[0]) == scales * config.niter // 5


def test_the_simulated_trainer_resumes_from_what_the_store_holds(store):
    config = tiny_config()
    trainer = SimulatedTrainer(seconds_per_scale=0.0)
    row = manifest_row("img1", f"{store}/x.png", config, 7, height=24, width=32)
    image_store = ImageStore(f"{store}/out", "img1")
    assert trainer.resume_point(image_store, row, config, "cpu") is None
    image = trainer.read_image(b"", "x.png", 24, 32)
    models = trainer.train([image], config, seeds=[7], device="cpu", callbacks=[[]], resume=None)
    model = models[0]
    del model.scales[2:]  # as if stopped after two scales
    for scale in range(2):
        for name, data in trainer.level_files(model, scale).items():
            image_store.put(name, data)
    simstore.COUNTS.reset()
    resumed = trainer.resume_point(image_store, row, config, "cpu")
    assert len(resumed.scales) == 2 and resumed.num_scales == model.num_scales
    assert kinds() == {"GET": 3}  # config.json and both scale files, as load_model reads them
    calls, _, _ = callback_calls(trainer.train, [image], config, resume=[resumed])
    assert [c[1] for c in calls[0] if c[0] == "start"] == list(range(2, model.num_scales))
    other = manifest_row("img1", f"{store}/x.png", tiny_config(niter=10), 7, height=24,
                         width=32)
    assert trainer.resume_point(image_store, other, other.config, "cpu") is None


def test_the_simulated_files_are_named_as_singan_outputs_names_them():
    config = tiny_config()
    trainer = SimulatedTrainer(seconds_per_scale=0.0)
    model = trainer.train([trainer.read_image(b"", "x", 24, 32)], config, seeds=[7],
                          device="cpu", callbacks=[[]], resume=None)[0]
    assert list(trainer.level_files(model, 1)) == ["reals/scale_01.png", "samples/scale_01.png",
                                                   "model/scale_01.pt", "model/config.json"]
    meta = json.loads(trainer.level_files(model, 1)["model/config.json"])
    assert meta["finished_scales"] == model.num_scales and meta["seed"] == 7
    row = manifest_row("img1", "x.png", config, 7)
    assert list(trainer.final_files(model, row, 2)) == [
        "samples/sample_00.png", "samples/sample_01.png", "samples/reconstruction.png",
        "samples/final.png"]


def test_the_proxy_names_endpoints_without_ids():
    run = "0123456789abcdef0123456789abcdef"
    assert endpoint("PUT", f"/api/2.0/mlflow-artifacts/artifacts/12/{run}/artifacts/samples/"
                           "scale_00.png") == ("PUT /api/2.0/mlflow-artifacts/artifacts/"
                                               "{experiment}/{run}/artifacts/{path}")
    model = "m-0123456789abcdef0123456789abcdef"
    assert endpoint("PUT", f"/api/2.0/mlflow-artifacts/artifacts/12/models/{model}/artifacts/"
                           "MLmodel") == ("PUT /api/2.0/mlflow-artifacts/artifacts/{experiment}/"
                                          "models/{model}/artifacts/{path}")
    assert endpoint("PATCH", f"/api/2.0/mlflow/logged-models/{model}") == (
        "PATCH /api/2.0/mlflow/logged-models/{model}")
    assert endpoint("POST", "/api/2.0/mlflow/runs/log-batch") == (
        "POST /api/2.0/mlflow/runs/log-batch")
    assert endpoint("GET", f"/ajax-api/2.0/mlflow/runs/{run}/x") == (
        "GET /ajax-api/2.0/mlflow/runs/{id}/x")
    stats = ProxyStats()
    stats.endpoints["GET /x"] = 100
    stats.latencies["GET /x"] = [i / 100 for i in range(100)]
    summary = stats.summary()
    assert summary["latency_s"]["p50"] == 0.5 and summary["latency_s"]["p99"] == 0.99
