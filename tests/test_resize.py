"""Tests for singan.resize: parity with the reference's MATLAB-style imresize, and its contract."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from singan.resize import imresize

FIXTURES = Path(__file__).parent / "fixtures"
# Away from the border the reference's values are matched to float precision; at the top/left
# border it weighs the taps beyond the edge 0 (an unsigned-int cast of their negative indices
# before weighting), where we mirror them; bench/fidelity.py's `borders` quirk reproduces it.
MARGIN = 4
# Worst mean |ours - reference| over the whole image, 0..255 scale, measured at 0.0607 (the
# 25x31 -> 13x12 case, where the border is a large share of the image).
MEAN_BOUND = 0.075


def _cases() -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    data = np.load(FIXTURES / "imresize_cases.npz")
    return [
        (i, data[f"in_{i}"], data[f"out_{i}"], float(data[f"scale_{i}"]))
        for i in range(int(data["n"]))
    ]


CASES = _cases()


def _resize_case(
    image: np.ndarray, expected: np.ndarray, scale: float, dtype: torch.dtype
) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(dtype)  # H x W x 3 -> 1 x 3 x H x W
    if scale == -1:
        y = imresize(x, shape=expected.shape[:2])
    else:
        y = imresize(x, scale=scale)
    assert y.dtype == dtype
    return y[0].permute(1, 2, 0).to(torch.float64).numpy()


@pytest.mark.parametrize("dtype, interior_tol", [(torch.float64, 1e-4), (torch.float32, 1e-4)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"case{c[0]}-s{c[3]:g}")
def test_parity_with_reference(case, dtype, interior_tol):
    _, image, expected, scale = case
    ours = _resize_case(image, expected, scale, dtype)
    assert ours.shape == expected.shape
    diff = np.abs(ours - expected)
    m = MARGIN
    assert diff[m:-m, m:-m].max() <= interior_tol
    assert diff.mean() <= MEAN_BOUND


def test_float64_interior_is_exact_to_float_precision():
    # Measured at 2.6e-13 on the 0..255 scale: the same arithmetic as the reference, not an
    # approximation of it.
    worst = 0.0
    for _, image, expected, scale in CASES:
        diff = np.abs(_resize_case(image, expected, scale, torch.float64) - expected)
        worst = max(worst, float(diff[MARGIN:-MARGIN, MARGIN:-MARGIN].max()))
    assert worst <= 1e-9


def test_batched_equals_per_image():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 37, 53, dtype=torch.float64) * 2 - 1
    cases = (dict(scale=0.75), dict(scale=1.26), dict(shape=(19, 80)), dict(scale=(0.5, 2.0)))
    for kwargs in cases:
        batch = imresize(x, **kwargs)
        single = torch.cat([imresize(x[i : i + 1], **kwargs) for i in range(len(x))])
        torch.testing.assert_close(batch, single, rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float32_on_cuda_matches_cpu():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    for kwargs in (dict(scale=0.7943282347242815), dict(scale=1 / 0.78), dict(shape=(33, 18))):
        gpu = imresize(x.cuda(), **kwargs)
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        torch.testing.assert_close(gpu.cpu(), imresize(x, **kwargs), rtol=0, atol=1e-5)
    # Parity with the reference on the device too.
    for _, image, expected, scale in CASES:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().cuda()
        y = imresize(x, shape=expected.shape[:2]) if scale == -1 else imresize(x, scale=scale)
        diff = np.abs(y[0].permute(1, 2, 0).double().cpu().numpy() - expected)
        assert diff[MARGIN:-MARGIN, MARGIN:-MARGIN].max() <= 1e-4


def test_scale_one_is_identity_and_a_copy():
    x = torch.rand(2, 3, 20, 30, dtype=torch.float64)
    for kwargs in (dict(scale=1.0), dict(scale=(1.0, 1.0)), dict(shape=(20, 30))):
        y = imresize(x, **kwargs)
        assert torch.equal(y, x)
        assert y.data_ptr() != x.data_ptr()


def test_one_axis_at_factor_one_is_untouched():
    x = torch.rand(1, 3, 20, 30, dtype=torch.float64)
    y = imresize(x, scale=(1.0, 0.5))
    assert y.shape == (1, 3, 20, 15)
    # Each row is resized on its own: resizing row by row gives the same result.
    rows = torch.cat([imresize(x[:, :, r : r + 1], scale=(1.0, 0.5)) for r in range(20)], dim=2)
    torch.testing.assert_close(y, rows, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "size, scale",
    [((37, 53), 0.75), ((25, 31), 0.7943282347242815), ((250, 188), 0.13020833333333334),
     ((26, 34), 1 / 0.7991760533846793), ((7, 9), 3.3), ((64, 48), (0.5, 1.26))],
)
def test_output_shape_is_ceil_of_the_float_product(size, scale):
    x = torch.zeros(1, 1, *size)
    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    assert imresize(x, scale=scale).shape[-2:] == (math.ceil(size[0] * sh), math.ceil(size[1] * sw))


def test_both_scale_and_shape_use_shape_as_the_output_size():
    x = torch.rand(1, 3, 1920 // 8, 1080 // 8, dtype=torch.float64)
    y = imresize(x, scale=0.5, shape=(120, 67))
    assert y.shape[-2:] == (120, 67)
    # Same kernel as the plain factor: the same pixels, one column fewer at the end.
    full = imresize(x, scale=0.5)
    assert full.shape[-2:] == (120, 68)
    torch.testing.assert_close(y, full[..., :67], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs", [dict(scale=0.3), dict(scale=0.75), dict(scale=2.7), dict(shape=(5, 90))]
)
@pytest.mark.parametrize("dtype, rel_tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_constant_image_stays_constant(kwargs, dtype, rel_tol):
    # The weights of every output pixel sum to 1, so a constant image keeps its value (up to a
    # few units in the last place: measured 1.7e-13 at 255 in float64, 4.6e-5 = 3 ulp in
    # float32), and zero stays exactly zero.
    for value in (0.0, 1.0, -1.0, 255.0):
        x = torch.full((1, 3, 31, 40), value, dtype=dtype)
        y = imresize(x, **kwargs)
        tol = rel_tol * max(1.0, abs(value))
        assert (y - value).abs().max().item() <= tol
        if value == 0.0:
            assert torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_and_device_preserved(dtype):
    x = torch.rand(1, 3, 16, 16).to(dtype)
    y = imresize(x, scale=0.75)
    assert y.dtype == dtype and y.device == x.device and y.shape == (1, 3, 12, 12)


def test_repeated_calls_reuse_the_cached_matrix():
    from singan.resize import _weight_matrix

    x = torch.rand(1, 3, 40, 40)
    imresize(x, scale=0.61)
    before = _weight_matrix.cache_info()
    imresize(x, scale=0.61)
    after = _weight_matrix.cache_info()
    # Nothing is rebuilt: both axes (the same matrix, the image is square) come from the cache.
    assert after.misses == before.misses and after.hits == before.hits + 2


def test_gradients_flow():
    # The training loop resizes generator outputs; the resize must stay differentiable.
    x = torch.rand(1, 3, 20, 20, dtype=torch.float64, requires_grad=True)
    imresize(x, scale=1.3).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cache_filled_in_inference_mode_still_serves_autograd():
    # Sampling runs under inference_mode; training later resizes the same sizes with gradients.
    with torch.inference_mode():
        imresize(torch.rand(1, 3, 23, 29), scale=0.577)
    x = torch.rand(1, 3, 23, 29, requires_grad=True)
    imresize(x, scale=0.577).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (torch.zeros(3, 8, 8), dict(scale=0.5), "N x C x H x W"),
        (torch.zeros(1, 1, 3, 8, 8), dict(scale=0.5), "N x C x H x W"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), dict(scale=0.5), "floating-point"),
        (torch.zeros(1, 3, 0, 8), dict(scale=0.5), "empty"),
        (torch.zeros(1, 3, 8, 8), dict(), "scale factor or an output shape"),
        (torch.zeros(1, 3, 8, 8), dict(scale=0.0), "positive"),
        (torch.zeros(1, 3, 8, 8), dict(scale=-0.5), "positive"),
        (torch.zeros(1, 3, 8, 8), dict(scale=float("nan")), "positive"),
        (torch.zeros(1, 3, 8, 8), dict(scale=(0.5, 0.5, 0.5)), "pair"),
        (torch.zeros(1, 3, 8, 8), dict(scale="half"), "number"),
        (torch.zeros(1, 3, 8, 8), dict(shape=(0, 4)), "positive"),
        (torch.zeros(1, 3, 8, 8), dict(shape=(4,)), "pair"),
        (torch.zeros(1, 3, 8, 8), dict(shape=(4.5, 4)), "integers"),
        (np.zeros((1, 3, 8, 8)), dict(scale=0.5), "torch.Tensor"),
    ],
)
def test_clear_errors(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        imresize(x, **kwargs)
