"""The training job's argument handling, in process: bad input exits 2 before Ray starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from jobs import fleet
from pipeline.catalog import write_manifest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_manifest", ROOT / "jobs" / "train_manifest.py")
job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(job)


def test_a_bad_set_exits_2_naming_the_option(tmp_path, capsys):
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a", "uri": str(tmp_path / "a.png")}], str(manifest))
    code = job.main(["--manifest", str(manifest), "--output", str(tmp_path / "out"),
                     "--no-tracking", "--set", "max_size=big"])
    assert code == 2
    assert "--set max_size=big: max_size must be an integer, got 'big'" in capsys.readouterr().err


def test_bad_manifest_exits_2_before_any_training(tmp_path, capsys):
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a/b", "uri": str(tmp_path / "missing.png")}], str(manifest))
    code = job.main(["--manifest", str(manifest), "--output", str(tmp_path / "out"),
                     "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2
    assert "row 0 (image_id 'a/b'): image_id contains '/'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--set", "niter=-1"], "niter must be a positive integer"),
    (["--set", "padding=mirror"], "padding must be one of zero, circular, reflect, got 'mirror'"),
    (["--set", "loss=none"], "loss must be one of wgan_gp, frechet, nnpl, annpl, got 'none'"),
    (["--recipe", "consingan", "--set", "loss=nnpl"],
     "recipe 'consingan' supports only loss='wgan_gp'"),
    # A setting that cannot train is refused with its reason, not in every image's BatchNorm.
    (["--set", "max_size=16", "--set", "min_size=8"],
     "min_size (8) is below the 11x11 px the critic scores"),
    (["--max-in-flight", "0"], "--max-in-flight must be at least 1"),
    (["--retrain-suspect", "-1"], "--retrain-suspect must be 0 (no retraining) or more"),
])
def test_bad_options_exit_2(tmp_path, capsys, argv, message):
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a", "uri": str(tmp_path / "a.png")}], str(manifest))
    assert job.main(["--manifest", str(manifest), "--no-tracking", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_summary_names_the_tasks_and_the_first_failures(capsys, monkeypatch):
    from pipeline.ledger import Entry
    from pipeline.train_image import JobSettings

    monkeypatch.setattr(job, "LISTED_FAILURES", 2)
    tally = job.Tally(JobSettings(output="out"))
    tally.progress = type("P", (), {"counts": {"done": 3, "skipped": 1, "failed": 3}})()
    placement = type("Placement", (), {"gpus_per_task": 0})()
    entries = [Entry("a", "done", None, 4, 1.0, None, None, "out/a"),
               Entry("b", "failed", "InputError: bad", None, 0.5, None, None, "out/b",
                     task="sr"),
               Entry("c", "skipped", None, 4, 0.0, None, None, "out/c", task="animate"),
               Entry("d", "failed", "x", None, 0.5, None, None, "out/d"),
               Entry("e", "failed", "y", None, 0.5, None, None, "out/e"),
               Entry("f", "done", None, 4, 3.0, None, None, "out/f", quality="ok",
                     retrained="seed 1 suspect; tried seed 2; kept seed 2 (ok)"),
               Entry("g", "done", None, 4, 3.0, None, None, "out/g", quality="suspect",
                     quality_reason="runaway patch SWD",
                     retrained="seed 1 suspect; tried seed 2; kept seed 1 (suspect)")]
    for entry in entries:
        tally.add(entry, placement)
    tally.spool.close()
    tally.print_summary(2.0, "out/_results.parquet", None, "out")
    assert capsys.readouterr().out.splitlines() == [
        "7 images in 2.0 s: 3 trained, 1 already done, 3 failed",
        "tasks: 5 train, 1 sr, 1 animate",
        "  failed b [sr]: InputError: bad",
        "  failed d: x",
        "  ... and 1 more (see the results table)",
        "1 trained images look suspect (the quality column of the results, the quality tag in "
        "MLflow):",
        "  suspect g: runaway patch SWD",
        "--retrain-suspect: 2 suspect images retrained, 1 of them now ok (the retrained column "
        "of the results, the retrained tag in MLflow)",
        "results: out/_results.parquet",
    ]
    assert tally.failed_ids == ["b", "d"]
    assert job.describe(entries[0]) == ("done", "done a (4 scales, 1.0 s)")
    assert job.describe(entries[2]) == ("skipped", "skipped c [animate] (4 scales, 0.0 s)")
    assert job.describe(entries[5]) == ("done", "done f (4 scales, 3.0 s); retrained: seed 1 "
                                                "suspect; tried seed 2; kept seed 2 (ok)")
    assert tally.counts()["retrained"] == 2


def test_the_old_per_image_options_still_work_with_a_notice(capsys):
    args = job.build_parser().parse_args(["--manifest", "m", "--gpus-per-image", "0.5",
                                          "--cpus-per-image", "2"])
    assert (args.gpus_per_task, args.cpus_per_task) == (0.5, 2.0)
    assert capsys.readouterr().err.splitlines() == [
        "--gpus-per-image is now --gpus-per-task (it is per Ray task)",
        "--cpus-per-image is now --cpus-per-task (it is per Ray task)"]


def test_storage_down_for_the_results_table_still_prints_the_summary(tmp_path, monkeypatch,
                                                                    capsys):
    from pipeline.ledger import Ledger
    from pipeline.storage import TransientError
    from singan.data.examples import pebbles
    from singan.data.image import save_image

    save_image(pebbles(20, 20, seed=1), tmp_path / "a.png")
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a", "uri": str(tmp_path / "a.png")}], str(manifest))
    monkeypatch.setattr(job, "_fan_out", lambda *args: None)

    def storage_down(*args):
        raise TransientError("write out/_results.parquet: ConnectionResetError")

    monkeypatch.setattr(Ledger, "compact", storage_down)
    code = job.main(["--manifest", str(manifest), "--output", str(tmp_path / "out"),
                     "--no-tracking"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "the results table could not be written (write out/_results.parquet" in err
    assert "python jobs/compact_results.py --output" in err
    assert "0 images in" in out and "results:" not in out


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


def test_mlflow_variables_are_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "photos-2026")
    args = job.build_parser().parse_args(["--manifest", "m.parquet"])
    assert fleet.tracking_target(args) == "http://127.0.0.1:5999"
    assert args.experiment == "photos-2026"
    args = job.build_parser().parse_args(["--manifest", "m.parquet", "--tracking-uri",
                                          "http://127.0.0.1:5001", "--experiment", "other"])
    assert (fleet.tracking_target(args), args.experiment) == ("http://127.0.0.1:5001", "other")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    monkeypatch.chdir(tmp_path)
    args = job.build_parser().parse_args(["--manifest", "m.parquet"])
    assert fleet.tracking_target(args) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert args.experiment == "singan-fleet"
