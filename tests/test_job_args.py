"""The training job's argument handling, in process: bad input exits 2 before Ray starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.catalog import write_manifest
from singan.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_manifest", ROOT / "jobs" / "train_manifest.py")
job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(job)


def test_set_overrides_are_typed_like_the_config():
    assert job.parse_sets(["max_size=200", "scale_factor=0.8", "num_scales=none"]) == {
        "max_size": 200, "scale_factor": 0.8, "num_scales": None}
    assert job.parse_sets(["padding=circular", "noise_padding=true", "loss=nnpl",
                           "patch_size=5", "log_every=3"]) == {
        "padding": "circular", "noise_padding": True, "loss": "nnpl", "patch_size": 5,
        "log_every": 3}
    assert job.parse_sets(["noise_padding=False"]) == {"noise_padding": False}
    with pytest.raises(InputError, match="max_szie=3: expected FIELD=VALUE"):
        job.parse_sets(["max_szie=3"])
    with pytest.raises(InputError, match="'big' is not an integer"):
        job.parse_sets(["max_size=big"])
    with pytest.raises(InputError, match="'fast' is not a number"):
        job.parse_sets(["lr_g=fast"])
    with pytest.raises(InputError, match="noise_padding=1: '1' is not true or false"):
        job.parse_sets(["noise_padding=1"])
    with pytest.raises(InputError, match="'none' is not an integer"):  # only num_scales takes it
        job.parse_sets(["max_size=none"])


def test_bad_manifest_exits_2_before_any_training(tmp_path, capsys):
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a/b", "uri": str(tmp_path / "missing.png")}], str(manifest))
    code = job.main(["--manifest", str(manifest), "--output", str(tmp_path / "out"),
                     "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2
    assert "row 0 (image_id 'a/b'): image_id contains '/'" in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--set", "niter=-1"], "niter must be a positive integer"),
    (["--set", "padding=mirror"], "padding must be one of zero, circular, reflect, got 'mirror'"),
    (["--set", "loss=none"], "loss must be one of wgan_gp, frechet, nnpl, annpl, got 'none'"),
    (["--recipe", "consingan", "--set", "loss=nnpl"],
     "recipe 'consingan' supports only loss='wgan_gp'"),
])
def test_bad_options_exit_2(tmp_path, capsys, argv, message):
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a", "uri": str(tmp_path / "a.png")}], str(manifest))
    assert job.main(["--manifest", str(manifest), "--no-tracking", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_summary_names_the_tasks(capsys):
    from pipeline.train_image import ImageResult

    results = [ImageResult("a", "done", None, 4, 1.0, None, None, "out/a"),
               ImageResult("b", "failed", "InputError: bad", None, 0.5, None, None, "out/b",
                           task="sr"),
               ImageResult("c", "skipped", None, 4, 0.0, None, None, "out/c", task="animate")]
    job.print_summary(results, 2.0, "out/_results.parquet", None)
    assert capsys.readouterr().out.splitlines() == [
        "3 images in 2.0 s: 1 trained, 1 already done, 1 failed",
        "tasks: 1 train, 1 sr, 1 animate",
        "  failed b [sr]: InputError: bad",
        "results: out/_results.parquet",
    ]
    assert job.describe(results[0]) == ("done", "done a (4 scales, 1.0 s)")
    assert job.describe(results[2]) == ("skipped", "skipped c [animate] (4 scales, 0.0 s)")


def test_storage_down_for_the_results_table_still_prints_the_summary(tmp_path, monkeypatch,
                                                                    capsys):
    from pipeline.storage import TransientError
    from pipeline.train_image import ImageResult
    from singan.examples import pebbles
    from singan.image import save_image

    save_image(pebbles(20, 20, seed=1), tmp_path / "a.png")
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a", "uri": str(tmp_path / "a.png")}], str(manifest))
    done = [ImageResult("a", "done", None, 2, 1.0, None, None, "out/a")]
    monkeypatch.setattr(job, "fan_out", lambda *args: (done, {}))

    def storage_down(*args):
        raise TransientError("write out/_results.parquet: ConnectionResetError")

    monkeypatch.setattr(job.results_table, "write", storage_down)
    code = job.main(["--manifest", str(manifest), "--output", str(tmp_path / "out"),
                     "--no-tracking"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "the results table could not be written (write out/_results.parquet" in err
    assert "1 images in" in out and "1 trained" in out and "results:" not in out


def test_the_printed_mlflow_hint_opens_the_model_training_view_and_runs_as_shown(tmp_path):
    import shlex
    import subprocess
    import sys

    hint = job.tracking_hint("http://127.0.0.1:5000", "7")
    assert hint == "MLflow: http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert job.tracking_hint("http://user:secret@host:5000", None) == "MLflow: http://***@host:5000"
    local = job.tracking_hint(f"sqlite:///{tmp_path}/mlflow.db", "1")
    command = local.removeprefix("MLflow UI: ").split("  (then open ")[0]
    assert command.startswith(shlex.quote(sys.executable) + " -m mlflow ui --backend-store-uri")
    assert local.endswith("http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning)")
    # The command works as printed, without an activated environment.
    argv = shlex.split(command.split(" --backend-store-uri")[0]) + ["--help"]
    assert subprocess.run(argv, capture_output=True, timeout=120).returncode == 0
