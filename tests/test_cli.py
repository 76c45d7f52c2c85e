"""The `singan` command: train, resume, sample, demo output layout, one-line errors, help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import singan
from singan.cli.commands import main
from singan.data.examples import KINDS, pebbles

TINY = ["--max-size", "28", "--niter", "4", "--device", "cpu", "--seed", "1", "--num-samples", "2"]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    singan.save_image(pebbles(60, 80, seed=5), path)
    return path


@pytest.fixture
def tiny_preset(monkeypatch):
    """Narrow networks so that the command-line tests take seconds."""
    monkeypatch.setitem(singan.PRESETS, "paper", dict(min_size=12, nfc=8, max_nfc=8, log_every=2))


def test_train_writes_the_output_layout_and_a_summary(photo, tmp_path, capsys, tiny_preset):
    out = tmp_path / "run"
    assert main(["train", str(photo), "--out", str(out), *TINY, "--set", "noise_amp=0.2",
                 "--set", "padding=reflect"]) == 0
    model = singan.load(out)
    n = model.num_scales
    assert model.is_complete and model.config.niter == 4 and model.config.lr_milestone == 1600
    assert model.config.noise_amp == 0.2 and model.config.padding == "reflect"
    assert sorted(p.name for p in (out / "reals").iterdir()) == [f"scale_{i:02d}.png" for i in range(n)]
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == ["final.png", "reconstruction.png", "sample_00.png", "sample_01.png"] + [
        f"scale_{i:02d}.png" for i in range(n)]
    # final.png: the real image, the reconstruction and the 2 samples side by side.
    height, width = model.plan.shapes[-1]
    assert Image.open(out / "samples" / "final.png").size == (4 * width + 3 * 2, height)
    assert Image.open(out / "samples" / "sample_00.png").size == model.plan.shapes[-1][::-1]
    printed = capsys.readouterr().out
    assert f"{n} scales" in printed and "noise_amp" in printed
    assert re.search(r"^quality: (ok|suspect \(.+\)); patch SWD \d\.\d{4} \(\d+\.\dx a blurred "
                     r"copy's\), diversity \d\.\d{3}$", printed, re.M)


def test_train_resumes_an_interrupted_run(photo, tmp_path, capsys, tiny_preset):
    out = tmp_path / "run"
    assert main(["train", str(photo), "--out", str(out), *TINY]) == 0
    finished = singan.load(out)
    for i in range(2, finished.num_scales):  # as if killed during scale 2
        (out / "model" / f"scale_{i:02d}.pt").unlink()
    capsys.readouterr()
    assert main(["train", str(photo), "--out", str(out), *TINY]) == 0
    assert "resuming" in capsys.readouterr().out
    assert singan.load(out).is_complete


def test_train_refuses_a_bad_set_before_reading_the_image(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.png"), "--out", str(tmp_path / "run"),
                 "--set", "niter=many"]) == 2
    assert "--set niter=many: niter must be an integer, got 'many'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "absent.png"), "--out", str(tmp_path / "run"),
                 "--set", "max_size=16", "--set", "min_size=8"]) == 2
    assert "min_size (8) is below the 11x11 px the critic scores" in capsys.readouterr().err


def test_train_refuses_a_folder_with_another_model(photo, tmp_path, capsys, tiny_preset):
    out = tmp_path / "run"
    assert main(["train", str(photo), "--out", str(out), *TINY]) == 0
    assert main(["train", str(photo), "--out", str(out), *TINY[:2], "--niter", "5"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_sample_command_sizes_and_count(photo, tmp_path, tiny_preset):
    out = tmp_path / "run"
    assert main(["train", str(photo), "--out", str(out), *TINY]) == 0
    h, w = singan.load(out).plan.shapes[-1]
    more = tmp_path / "more"
    assert main(["sample", str(out / "model"), "--out", str(more), "--num", "3", "--scale-h", "1.5",
                 "--device", "cpu"]) == 0
    files = sorted(more.iterdir())
    assert [f.name for f in files] == ["sample_000.png", "sample_001.png", "sample_002.png"]
    assert Image.open(files[0]).size == (round(w * 1.5), h)


def test_sample_reads_a_model_from_any_fsspec_url_and_file_urls(photo, tmp_path, tiny_preset):
    """A model stored anywhere fsspec reaches (here its in-memory filesystem, standing in for
    s3://): the batch job's image folder or its model/ folder; a file:// URL is a folder."""
    import fsspec

    out = tmp_path / "run"
    assert main(["train", str(photo), "--out", str(out), *TINY]) == 0
    memory = fsspec.filesystem("memory")
    for path in (out / "model").iterdir():
        memory.pipe_file(f"/bucket/outputs/img1/model/{path.name}", path.read_bytes())
    samples = set()
    for index, source in enumerate(("memory://bucket/outputs/img1",
                                    "memory://bucket/outputs/img1/model", out.as_uri())):
        more = tmp_path / f"more{index}"
        assert main(["sample", source, "--out", str(more), "--num", "2", "--seed", "3",
                     "--device", "cpu"]) == 0, source
        assert sorted(f.name for f in more.iterdir()) == ["sample_000.png", "sample_001.png"]
        samples.add((more / "sample_001.png").read_bytes())
    assert len(samples) == 1  # the same seed, the same samples, wherever the model is


def test_a_url_without_its_loader_says_which_extra_to_install(tmp_path, capsys, monkeypatch):
    from singan.cli import common as cli_common

    monkeypatch.setattr(cli_common.metadata, "entry_points", lambda group: [])
    assert main(["sample", "s3://bucket/outputs/img1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3://bucket/outputs/img1" in err
    assert "pip install 'singan-fleet[fleet]'" in err
    assert not cli_common.is_url("C:\\models\\x") and cli_common.is_url("runs:/abc/model")


def test_examples_of_each_kind_are_the_same_for_the_same_index(tmp_path):
    for kind, (name, _) in KINDS.items():
        assert main(["examples", str(tmp_path / kind), "--count", "2", "--kind", kind]) == 0
        first, second = (tmp_path / kind / f"{name}_{i:02d}.png" for i in range(2))
        assert Image.open(first).size == (192, 128)
        assert first.read_bytes() != second.read_bytes()  # a collection, not one image twice
        assert main(["examples", str(tmp_path / "again"), "--count", "1", "--kind", kind]) == 0
        assert (tmp_path / "again" / f"{name}_00.png").read_bytes() == first.read_bytes()


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is not an image", "photo.png"),
])
def test_bad_images_print_one_line_and_exit_2(tmp_path, capsys, content, message):
    bad = tmp_path / "photo.png"
    bad.write_bytes(content)
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_image_too_small_and_missing_model(tmp_path, capsys):
    small = tmp_path / "small.png"
    singan.save_image(pebbles(20, 20), small)
    assert main(["train", str(small), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "smaller than min_size" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing"), "--out", str(tmp_path / "s")]) == 2
    assert "not a SinGAN model folder" in capsys.readouterr().err


def test_unavailable_cuda_is_a_one_line_error(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["train", str(photo), "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


SCRIPT = Path(sys.executable).parent / "singan"


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed (pip install -e .)")
def test_console_script_help_documents_every_option():
    exe = str(SCRIPT)
    for command, options in [("train", ["--out", "--preset", "--max-size", "--niter", "--device",
                                        "--seed", "--set", "Examples"]),
                             ("sample", ["--num", "--start-scale", "--scale-h", "--scale-v",
                                         "--seed", "Examples"]),
                             ("demo", ["--out"])]:
        result = subprocess.run([exe, command, "--help"], capture_output=True, text=True, check=True)
        for option in options:
            assert option in result.stdout, (command, option)


def test_version_and_verbose_before_or_after_the_command(capsys):
    from singan.cli.commands import build_parser

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("singan-fleet ")
    parser = build_parser()
    assert parser.parse_args(["train", "x.png", "--out", "d", "-v"]).verbose
    assert parser.parse_args(["-v", "train", "x.png", "--out", "d"]).verbose
    assert not parser.parse_args(["train", "x.png", "--out", "d"]).verbose
    assert parser.parse_args(["sample", "m", "--out", "d", "--verbose"]).verbose


def test_progress_in_a_log_is_a_line_every_tenth():
    import io

    from singan.cli.common import ProgressLine

    log = io.StringIO()  # not a terminal
    line = ProgressLine("scale 2/5 33x44", 200, stream=log)
    for done in range(10, 201, 10):
        line.update(done, "D 0.100 G 0.200 rec 0.0300")
    line.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("scale 2/5 33x44 20/200 it D 0.100 G 0.200")
    assert "left" in lines[0] and lines[9].startswith("scale 2/5 33x44 200/200 it")
    assert lines[10].startswith("scale 2/5 33x44 done in ")
