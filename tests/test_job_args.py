"""The training job's argument handling, in process: bad input exits 2 before Ray starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.manifest import write_manifest
from singan.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_manifest", ROOT / "jobs" / "train_manifest.py")
job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(job)


def test_set_overrides_are_typed_like_the_config():
    assert job.parse_sets(["max_size=200", "scale_factor=0.8", "num_scales=none"]) == {
        "max_size": 200, "scale_factor": 0.8, "num_scales": None}
    with pytest.raises(InputError, match="max_szie=3: expected FIELD=VALUE"):
        job.parse_sets(["max_szie=3"])
    with pytest.raises(InputError, match="'big' is not a number"):
        job.parse_sets(["max_size=big"])


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
])
def test_bad_options_exit_2(tmp_path, capsys, argv, message):
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "a", "uri": str(tmp_path / "a.png")}], str(manifest))
    assert job.main(["--manifest", str(manifest), "--no-tracking", *argv]) == 2
    assert message in capsys.readouterr().err
