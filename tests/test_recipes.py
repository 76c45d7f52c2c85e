"""Both recipes behind one interface: the `singan` command, the batch job's pipeline (storage,
resume at a stage boundary, tracking) and the evaluation, with a ConSinGAN model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import singan
from pipeline.catalog import write_manifest
from pipeline.evaluate import EvalSettings, evaluate_image
from pipeline.manifest import manifest_row, read_manifest
from pipeline.storage import ImageStore
from pipeline.tracking import stored_points
from pipeline.train_image import JobSettings, train_image
from singan.cli.commands import main
from singan.data.examples import pebbles
from singan.data.image import save_image
from singan.errors import InputError
from singan.recipes.consingan.networks import ConSinGAN
from tests.faults import KillAfterScale


def tiny_consingan(**overrides) -> singan.Config:
    values = dict(recipe="consingan", num_scales=3, nfc=8, max_nfc=8, niter=4, max_size=48,
                  min_size=20, log_every=2)
    return singan.config("paper", **{**values, **overrides})


@pytest.fixture(scope="module")
def image_uri(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "stones.png"
    save_image(pebbles(40, 48, seed=3), path)
    return path.as_uri()


def test_train_command_takes_the_recipe(tmp_path):
    save_image(pebbles(40, 48, seed=1), tmp_path / "img.png")
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "img.png"), "--out", str(out), "--recipe", "consingan",
                 "--niter", "3", "--max-size", "40", "--num-samples", "2"]) == 0
    model = singan.load(out / "model")
    assert isinstance(model, ConSinGAN) and model.num_scales == 6 and model.is_complete
    assert (out / "samples" / "sample_01.png").is_file()
    # The same command again finds the finished model and writes samples only.
    assert main(["train", str(tmp_path / "img.png"), "--out", str(out), "--recipe", "consingan",
                 "--niter", "3", "--max-size", "40", "--num-samples", "1"]) == 0


def test_train_command_refuses_singan_variants_with_consingan(tmp_path, capsys):
    save_image(pebbles(40, 48, seed=1), tmp_path / "img.png")
    assert main(["train", str(tmp_path / "img.png"), "--out", str(tmp_path / "o"), "--recipe",
                 "consingan", "--loss", "nnpl"]) == 2
    assert "recipe 'consingan' supports only loss='wgan_gp'" in capsys.readouterr().err


def test_applications_refuse_a_consingan_model():
    from singan.apps.animation import animate
    from singan.apps.paint import paint_to_image
    from singan.apps.sr import super_resolve

    model = singan.train(pebbles(40, 48, seed=1), tiny_consingan(niter=1), device="cpu", seed=0)
    for run in (lambda: super_resolve(model, 2), lambda: animate(model, frames=2),
                lambda: paint_to_image(model, model.reals[-1], 1)):
        with pytest.raises(InputError, match="recipe 'consingan'"):
            run()


def test_the_pipeline_stores_resumes_and_evaluates_a_consingan_model(image_uri, tmp_path,
                                                                     monkeypatch):
    cfg = tiny_consingan()
    task = manifest_row("stones", image_uri, cfg, seed=3)
    job = JobSettings(output=str(tmp_path / "out"), tracking_uri=None, num_samples=2,
                      sifid_samples=0, quality_samples=1, device="cpu")
    store = ImageStore(job.output, "stones")

    # A worker killed after stage 1 (the test's kill raises instead of killing in-process).
    def kill(pid, signal):
        raise SystemExit("killed")

    with pytest.raises(SystemExit):
        train_image(task, replace(job, on_scale_stored=KillAfterScale(1, kill)))
    assert store.exists("model/scale_01.pt") and not store.exists("model/scale_02.pt")
    stage_0 = (tmp_path / "out" / "stones" / "model" / "scale_00.pt").stat().st_mtime_ns

    result = train_image(task, job)
    assert result.status == "done" and result.num_scales == 3
    assert (tmp_path / "out" / "stones" / "model" / "scale_00.pt").stat().st_mtime_ns == stage_0
    model = store.load_model(torch.device("cpu"))
    assert isinstance(model, ConSinGAN) and model.is_complete
    uninterrupted = singan.train(singan.load_image(image_uri.removeprefix("file://")), cfg,
                                 device="cpu", seed=3)
    for a, b in zip(model.generator.state_dict().values(),
                    uninterrupted.generator.state_dict().values()):
        assert torch.equal(a, b)
    points = stored_points(store)
    assert sorted(p["step"] for p in points if p["key"] == "noise_amp") == [0, 1, 2]
    assert train_image(task, job).status == "skipped"

    weights = torch.load("tests/fixtures/sifid_random_weights.pth", weights_only=True)
    settings = EvalSettings(out=str(tmp_path / "eval"), samples=2, starts=(("N", 0),),
                            device="cpu")
    evaluated = evaluate_image("stones", job.output, settings, weights)
    assert evaluated.status == "done", evaluated.error
    assert {row["recipe"] for row in evaluated.rows} == {"consingan"}


def test_a_manifest_row_or_the_job_picks_the_recipe_with_its_defaults(image_uri, tmp_path):
    manifest = str(tmp_path / "m.parquet")
    write_manifest([{"image_id": "a", "uri": image_uri},
                    {"image_id": "b", "uri": image_uri, "recipe": "consingan"}], manifest)
    a, b = read_manifest(manifest, preset="paper")
    assert (a.config.recipe, a.config.nfc, a.config.niter) == ("singan", 32, 2000)
    assert (b.config.recipe, b.config.nfc, b.config.num_layer, b.config.niter,
            b.config.batch_norm) == ("consingan", 64, 3, 1000, False)
    both = read_manifest(manifest, preset="quick", overrides={"recipe": "consingan"})
    assert {t.config.recipe for t in both} == {"consingan"}
    assert both[0].config.niter == 100  # the preset's values come after the recipe's defaults


def test_the_registries_know_every_name_config_accepts():
    """Config's choice names (Literal) and the registries that implement them agree."""
    import typing

    from singan.recipes.singan.adversary import ADVERSARIES
    from singan.settings import Loss

    assert set(typing.get_args(Loss)) == set(ADVERSARIES)
    assert set(singan.RECIPES) == {"singan", "consingan"}
    with pytest.raises(InputError, match="recipe must be one of consingan, singan"):
        singan.plan(40, 40, singan.Config(recipe="progan"))
    with pytest.raises(InputError, match="unknown recipe 'progan'"):
        singan.config(recipe="progan")
