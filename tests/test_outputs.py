"""One writer of an image's outputs (singan.data.outputs): the `singan` command and the batch job
write the same files with the same pixels for the same image, settings and seed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import singan
from pipeline.manifest import manifest_row
from pipeline.train_image import JobSettings, train_image
from singan.apps.sr import sr_config
from singan.cli.commands import main
from singan.data import outputs
from singan.data.examples import pebbles
from singan.data.image import save_image

# Files only the job writes: its MLflow link (with tracking on) and done-marker, and metrics/.
JOB_ONLY = {"tracking.json", "_SUCCESS"}
SEED = 5


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "stones.png"
    save_image(pebbles(40, 48, seed=3), path)
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_contents(cli: dict[str, bytes], job: dict[str, bytes]) -> None:
    """Pictures pixel for pixel, model files tensor for tensor, config.json field for field."""
    for name, data in cli.items():
        other = job[name]
        if name.endswith(".png"):
            a, b = (np.asarray(Image.open(io.BytesIO(d))) for d in (data, other))
            assert np.array_equal(a, b), name
        elif name.endswith(".pt"):
            a, b = (torch.load(io.BytesIO(d), weights_only=True) for d in (data, other))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        elif name.endswith(".json"):
            assert json.loads(data) == json.loads(other), name
        else:
            assert data == other, name


def run_job(task, output: Path) -> dict[str, bytes]:
    result = train_image(task, JobSettings(output=str(output), num_samples=2, sifid_samples=0,
                                           quality_samples=0, device="cpu"))
    assert result.status == "done", result.error
    written = files(output / task.image_id)
    assert {"metrics/scale_00.jsonl", "_SUCCESS"} <= set(written)
    return {name: data for name, data in written.items()
            if name not in JOB_ONLY and not name.startswith("metrics/")}


def test_the_command_and_the_job_write_the_same_files_and_pixels(photo, tmp_path):
    cli_out = tmp_path / "cli"
    assert main(["train", str(photo), "--out", str(cli_out), "--preset", "quick", "--max-size",
                 "48", "--niter", "4", "--seed", str(SEED), "--num-samples", "2",
                 "--device", "cpu"]) == 0
    cfg = singan.config("quick", max_size=48, niter=4)
    job = run_job(manifest_row("stones", photo.as_uri(), cfg, SEED), tmp_path / "job")
    cli = files(cli_out)
    assert sorted(cli) == sorted(job)
    assert {"model/config.json", "model/scale_03.pt", "reals/scale_03.png",
            "samples/scale_03.png", "samples/sample_01.png", "samples/reconstruction.png"} <= set(cli)
    assert_same_contents(cli, job)


def test_super_resolution_from_the_command_and_the_job(photo, tmp_path):
    cli_out = tmp_path / "cli"
    assert main(["sr", str(photo), "--factor", "2", "--out", str(cli_out), "--preset", "quick",
                 "--niter", "4", "--seed", str(SEED), "--device", "cpu"]) == 0
    cli = files(cli_out)
    assert {"sr/sr_x2.png", "sr/bicubic_x2.png"} <= set(cli)
    # The job's sr row trains with the same config (sr_config of the quick preset) and seed.
    job = run_job(manifest_row("stones", photo.as_uri(), singan.config("quick", niter=4), SEED,
                            task="sr", params={"sr_factor": 2}), tmp_path / "job")
    # The command writes 4 final samples for sr, the job its num_samples (2): drawn as another
    # batch, they differ (and final.png, which shows them); everything else is the same.
    shared = {name for name in cli
              if not name.startswith("samples/sample_") and name != "samples/final.png"}
    assert shared <= set(job)
    assert_same_contents({n: cli[n] for n in shared}, {n: job[n] for n in shared})
    assert sr_config(40, 48, 2.0, base=singan.config("quick", niter=4)) == singan.load(
        cli_out).config


def test_each_gif_has_its_own_random_stream(tmp_path):
    """Asking for one GIF of the grid gives the same GIF as asking for the whole grid (with one
    stream for the grid, the last GIF would depend on the ones drawn before it)."""
    cfg = singan.config("quick", max_size=32, min_size=20, num_scales=2, niter=2, nfc=8,
                        max_nfc=8, noise_padding=True)
    model = singan.train(pebbles(28, 32, seed=1), cfg, device="cpu", seed=3)
    grid, one = outputs.LocalFolder(tmp_path / "grid"), outputs.LocalFolder(tmp_path / "one")
    names = outputs.write_animations(model, grid, start_scales=(0, 1), betas=(0.8, 0.9),
                                     frames=3)
    assert names == [f"animate/start_scale_{s}/beta_{b}.gif" for s in (0, 1)
                     for b in ("0.80", "0.90")]
    outputs.write_animations(model, one, start_scales=(1,), betas=(0.9,), frames=3)
    name = "animate/start_scale_1/beta_0.90.gif"
    assert names[-1] == name
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "grid" / name).read_bytes()
