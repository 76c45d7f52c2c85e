"""Weight-free patch metrics: calibration on procedural images, determinism, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import singan
from singan.data.examples import pebbles
from singan.errors import InputError
from singan.metrics.patches import nn_patch_distance, patch_swd


def blur(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def stripes(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h * 1.0), torch.arange(w * 1.0), indexing="ij")
    return 0.8 * torch.stack([torch.sin(xx / 3), torch.cos(yy / 5), torch.sin((xx + yy) / 4)])[None]


@pytest.fixture(scope="module")
def real():
    return pebbles(64, 96, seed=1)


def test_swd_calibration(real):
    same = patch_swd(real, real)
    mirror = patch_swd(real, real.flip(-1))
    blurred = patch_swd(real, blur(real))
    other = patch_swd(real, stripes(64, 96))
    assert same == 0.0
    assert 0 < mirror < blurred < other
    assert mirror < 0.01 and other > 0.1  # [0, 1] pixel units


def test_nearest_patch_distance(real):
    assert nn_patch_distance(real, real) < 1e-5  # a copy
    assert nn_patch_distance(real, real[..., :40, :50]) < 1e-5  # a crop copies too
    other = nn_patch_distance(real, stripes(64, 96))
    assert 0 < nn_patch_distance(real, real.flip(-1)) < other
    assert 0 < nn_patch_distance(real, blur(real)) < other


def test_deterministic_under_the_seed(real):
    fake = blur(real)
    assert patch_swd(real, fake, seed=3) == patch_swd(real, fake, seed=3)
    assert patch_swd(real, fake, seed=3) != patch_swd(real, fake, seed=4)
    assert nn_patch_distance(real, fake, seed=3) == nn_patch_distance(real, fake, seed=3)


def test_sizes_levels_and_options(real):
    small = pebbles(40, 50, seed=2)
    assert patch_swd(real, small) > 0  # different sizes: the larger set is subsampled
    assert patch_swd(real, real, levels=3) == 0.0
    assert patch_swd(real, blur(real), levels=2) > 0
    assert patch_swd(real, blur(real), patch=3, projections=32) > 0
    assert singan.patch_swd is patch_swd and singan.nn_patch_distance is nn_patch_distance


@pytest.mark.parametrize("call, message", [
    (lambda r: patch_swd(r, r[..., :5, :5]), "smaller than the 7x7 patches"),
    (lambda r: patch_swd(r, r, levels=5), "levels=5"),
    (lambda r: patch_swd(r[0, :1], r), "real must be 1 x 3 x H x W"),
    (lambda r: nn_patch_distance(r, torch.zeros(2, 3, 20, 20)), "fake must be 1 x 3 x H x W"),
])
def test_bad_input(real, call, message):
    with pytest.raises(InputError, match=message):
        call(real)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(real):
    fake = blur(real)
    assert patch_swd(real.cuda(), fake.cuda()) == pytest.approx(patch_swd(real, fake), rel=1e-4)


def test_quality_command(real, tmp_path, capsys):
    from singan.cli.commands import main
    from singan.data.image import save_image

    save_image(real, tmp_path / "real.png")
    save_image(real.flip(-1), tmp_path / "fakes" / "a.png")
    save_image(stripes(64, 96), tmp_path / "fakes" / "b.png")
    assert main(["quality", str(tmp_path / "real.png"), str(tmp_path / "fakes"),
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["patch_swd", "nn_patch", "fake"]
    mirror, other = (float(line.split()[0]) for line in lines[1:3])
    assert mirror < other and "mean of 2" in lines[3]
