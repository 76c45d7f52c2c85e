"""SIFID: parity with the reference's numbers, batching, and where the weights come from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import singan
from singan.errors import InputError
from singan.metrics.sifid import (
    WEIGHTS_ENV,
    WEIGHTS_FILE,
    find_weights,
    load_stem,
    sifid,
    sifid_each,
)

FIXTURES = Path(__file__).parent / "fixtures"
RANDOM_WEIGHTS = FIXTURES / "sifid_random_weights.pth"  # torchvision key names, random values


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W in [-1, 1] (the reference's [0, 1] mapped by 2x - 1)."""
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].double() / 255 * 2 - 1


@pytest.fixture(scope="module")
def case():
    return np.load(FIXTURES / "sifid_case.npz")


@pytest.fixture(scope="module")
def stem():
    return load_stem(RANDOM_WEIGHTS)


@pytest.mark.parametrize("dims", [64, 192])
@pytest.mark.parametrize("other", ["mirror", "other"])
def test_parity_with_the_reference(case, stem, dims, other):
    value = sifid(as_tensor(case["real"]), as_tensor(case[other]), dims=dims, stem=stem)
    assert value == pytest.approx(float(case[f"sifid{dims}_{other}"]), rel=1e-5)


@pytest.mark.parametrize("dims", [64, 192])
def test_an_image_against_itself_is_zero(case, stem, dims):
    assert abs(sifid(as_tensor(case["real"]), as_tensor(case["real"]), dims=dims, stem=stem)) < 1e-6


def test_batched_fakes_equal_one_by_one(case, stem):
    real = as_tensor(case["real"])
    fakes = torch.cat([as_tensor(case["mirror"]), as_tensor(case["other"])])
    each = sifid_each(real, fakes, stem=stem)
    assert each == pytest.approx([sifid(real, f[None], stem=stem) for f in fakes], rel=1e-9)
    assert sifid(real, fakes, stem=stem) == pytest.approx(sum(each) / 2, rel=1e-12)
    # Fakes of another size than the real image: no resizing, as in the reference.
    assert sifid(real, fakes[:, :, :64, :80], stem=stem) > 0


def test_public_api_and_weights_argument(case):
    value = singan.sifid(as_tensor(case["real"]), as_tensor(case["other"]), weights=RANDOM_WEIGHTS)
    assert value == pytest.approx(float(case["sifid64_other"]), rel=1e-5)
    with pytest.raises(InputError, match="dims must be one of"):
        singan.sifid(as_tensor(case["real"]), as_tensor(case["other"]), dims=128,
                     weights=RANDOM_WEIGHTS)


def test_full_torchvision_checkpoint_loads_and_wrong_files_are_refused(tmp_path):
    state = torch.load(RANDOM_WEIGHTS, weights_only=True)
    full = {**state, "fc.weight": torch.zeros(1000, 2048), "Mixed_5b.branch1x1.conv.weight":
            torch.zeros(64, 192, 1, 1)}
    torch.save(full, tmp_path / "full.pth")
    assert torch.equal(load_stem(tmp_path / "full.pth").Conv2d_4a_3x3.conv.weight,
                       state["Conv2d_4a_3x3.conv.weight"])

    torch.save({k: v for k, v in state.items() if not k.startswith("Conv2d_4a")},
               tmp_path / "partial.pth")
    with pytest.raises(InputError, match="partial.pth: not torchvision's Inception-v3 weights"):
        load_stem(tmp_path / "partial.pth")
    torch.save({**state, "Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5)},
               tmp_path / "shape.pth")
    with pytest.raises(InputError, match=r"has shape \(32, 3, 5, 5\), expected \(32, 3, 3, 3\)"):
        load_stem(tmp_path / "shape.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(InputError, match="text.pth: not a PyTorch checkpoint"):
        load_stem(tmp_path / "text.pth")
    with pytest.raises(InputError, match="nope.pth: no such file"):
        load_stem(tmp_path / "nope.pth")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """No environment variable, an empty torch hub cache, and no network."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return tmp_path / "hub" / "checkpoints"


def test_weights_are_found_in_order(empty_hub, tmp_path, monkeypatch):
    with pytest.raises(InputError) as err:
        find_weights()
    message = str(err.value)
    assert "network is unreachable" in message and WEIGHTS_FILE in message
    assert "--inception-weights" in message and WEIGHTS_ENV in message and str(empty_hub) in message
    with pytest.raises(InputError, match="downloading is off"):
        find_weights(download=False)

    empty_hub.mkdir(parents=True)
    (empty_hub / WEIGHTS_FILE).write_bytes(RANDOM_WEIGHTS.read_bytes())
    assert find_weights() == str(empty_hub / WEIGHTS_FILE)  # the hub cache

    monkeypatch.setenv(WEIGHTS_ENV, str(RANDOM_WEIGHTS))
    assert find_weights() == str(RANDOM_WEIGHTS)  # the environment variable comes first
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(InputError, match="missing.pth: no such file"):
        find_weights()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(case):
    real, fake = as_tensor(case["real"]), as_tensor(case["other"])
    cpu = sifid(real, fake, stem=load_stem(RANDOM_WEIGHTS))
    gpu = sifid(real.cuda(), fake.cuda(), stem=load_stem(RANDOM_WEIGHTS, device="cuda"))
    assert gpu == pytest.approx(cpu, rel=1e-5)


# --- the command ----------------------------------------------------------------------------

def write_case(case, folder: Path, names: dict[str, str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for key, name in names.items():
        Image.fromarray(case[key]).save(folder / name)


def test_command_on_files_and_folders(case, tmp_path, capsys):
    from singan.cli.commands import main

    write_case(case, tmp_path / "real", {"real": "a.png"})
    write_case(case, tmp_path / "fakes", {"mirror": "1.png", "other": "2.png"})
    weights = ["--inception-weights", str(RANDOM_WEIGHTS), "--device", "cpu"]
    assert main(["sifid", str(tmp_path / "real" / "a.png"), str(tmp_path / "fakes"), *weights]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = [float(line.split()[0]) for line in lines]
    assert values[:2] == pytest.approx([float(case["sifid64_mirror"]),
                                        float(case["sifid64_other"])], rel=1e-5)
    assert values[2] == pytest.approx(sum(values[:2]) / 2, abs=2e-6) and "mean of 2" in lines[2]

    # Folder against folder, paired by sorted name.
    write_case(case, tmp_path / "reals", {"real": "x.png", "mirror": "y.png"})
    assert main(["sifid", str(tmp_path / "reals"), str(tmp_path / "fakes"), *weights,
                 "--dims", "192"]) == 0
    out = capsys.readouterr().out
    assert "real: " in out and "mean of 2 (dims 192)" in out


def test_command_errors(case, tmp_path, capsys, empty_hub):
    from singan.cli.commands import main

    write_case(case, tmp_path / "reals", {"real": "x.png", "mirror": "y.png"})
    write_case(case, tmp_path / "fakes", {"other": "1.png"})
    assert main(["sifid", str(tmp_path / "reals"), str(tmp_path / "fakes")]) == 2
    assert "has 2 images but" in capsys.readouterr().err
    assert main(["sifid", str(tmp_path / "reals" / "x.png"), str(tmp_path / "fakes")]) == 2
    assert "no Inception-v3 weights for SIFID" in capsys.readouterr().err
