"""Tests for singan.recipes.singan.levels and singan.plans: the reference's pyramid arithmetic,
its guards, and build_reals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from singan.api import pyramid_shapes
from singan.errors import InputError
from singan.plans import PyramidPlan
from singan.recipes.singan.levels import build_reals, plan_pyramid
from singan.settings import Config

FIXTURES = Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "pyramid_cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c["input_hw"])))
def test_matches_reference(case):
    plan = plan_pyramid(*case["input_hw"])
    assert [list(s) for s in plan.shapes] == case["shapes_coarse_to_fine"]
    assert plan.num_scales == case["num_scales"]
    assert plan.scale_factor == pytest.approx(case["scale_factor"], rel=0, abs=1e-12)
    assert plan.real_shape == plan.shapes[-1]
    assert pyramid_shapes(*case["input_hw"]) == [tuple(s) for s in case["shapes_coarse_to_fine"]]


def test_reference_quirk_num_scales_depends_on_the_original_size():
    # The reference counts scales from the *original* size: a 375x500 photo, shrunk to 188x250,
    # gets 9 scales, while a native 188x250 image gets 10. Kept for parity (it is in the
    # fixtures); the float error also makes the native image's coarsest level 26 px, not 25.
    photo, native = plan_pyramid(375, 500), plan_pyramid(188, 250)
    assert photo.real_shape == native.real_shape == (188, 250)
    assert photo.num_scales == 9 and native.num_scales == 10
    assert photo.shapes[0] == (25, 34) and native.shapes[0] == (26, 34)


def test_shrink_to_max_size_is_clamped():
    # 1920 * (250 / 1920) is a hair above 250 in floating point: the reference gives 251.
    assert math.ceil(1920 * (250 / 1920)) == 251
    plan = plan_pyramid(1920, 1080)
    assert plan.real_shape == (250, 141)
    assert plan.shapes[-1] == (250, 141)
    assert plan.scale1 == 250 / 1920


def _sweep_sizes() -> list[int]:
    return list(range(26, 300, 3)) + list(range(300, 4001, 37)) + [1080, 1920, 4000]


def test_sweep_never_exceeds_max_size_and_levels_grow():
    cfg = Config()
    planned = 0
    for height in _sweep_sizes():
        for width in _sweep_sizes():
            try:
                plan = plan_pyramid(height, width, cfg)
            except InputError:
                # Only for images too elongated to keep min_size after shrinking to max_size,
                # or tiny ones whose levels would not shrink.
                assert max(height, width) / min(height, width) > 9 or min(height, width) < 32
                continue
            planned += 1
            assert plan.num_scales >= 2
            assert plan.real_shape == plan.shapes[-1]
            assert max(plan.real_shape) <= cfg.max_size
            assert plan.scale1 == 1 or max(plan.real_shape) == cfg.max_size
            assert 0 < plan.scale_factor < 1
            for (h0, w0), (h1, w1) in zip(plan.shapes, plan.shapes[1:]):
                assert h0 <= h1 and w0 <= w1 and (h0, w0) != (h1, w1)
            for shape in plan.shapes:
                assert max(shape) <= cfg.max_size
                assert min(shape) >= cfg.min_size
    assert planned > 5000


def test_num_scales_option_fixes_the_number_of_levels():
    for n in (2, 5, 8, 12):
        plan = plan_pyramid(375, 500, Config(num_scales=n))
        assert plan.num_scales == n
        assert plan.real_shape == (188, 250) and plan.shapes[-1] == (188, 250)
        assert plan.scale_factor == pytest.approx((25 / 188) ** (1 / (n - 1)), abs=1e-15)
        assert min(plan.shapes[0]) in (25, 26)  # 26 when float error rounds 25.000...1 up


def test_num_scales_option_too_many_levels_is_refused():
    with pytest.raises(InputError, match="num_scales"):
        plan_pyramid(100, 100, Config(num_scales=60))


def test_config_changes_sizes():
    plan = plan_pyramid(500, 500, Config(max_size=96, min_size=20))
    assert plan.real_shape == (96, 96)
    assert min(plan.shapes[0]) in (20, 21)


@pytest.mark.parametrize(
    "size, message",
    [
        ((24, 300), r"image 24x300 is smaller than min_size=25"),
        ((300, 10), r"image 300x10 is smaller than min_size=25"),
        # The reference divides by zero: stop_scale = 0.
        ((30, 400), r"image 30x400 gives a single scale.*19x250"),
        ((25, 251), r"image 25x251 gives a single scale"),
        # The reference trains two identical scales.
        ((25, 25), r"image 25x25 gives levels that do not shrink.*25x25 and 25x25"),
        ((26, 26), r"image 26x26 gives levels that do not shrink"),
        ((25, 100), r"image 25x100 gives levels that do not shrink"),
        # Shrunk to max_size, the short side falls below min_size: the reference's ratio would
        # be 25/24 > 1 and its coarsest level 25x261, larger than the image and than max_size.
        ((26, 271), r"image 26x271 shrinks to 24x250.*below min_size=25"),
    ],
)
def test_degenerate_inputs_are_refused(size, message):
    with pytest.raises(InputError, match=message):
        plan_pyramid(*size)


def test_messages_say_what_to_change():
    for size in ((24, 300), (30, 400), (25, 25), (26, 271)):
        with pytest.raises(InputError) as info:
            plan_pyramid(*size)
        assert "min_size" in str(info.value)


@pytest.mark.parametrize("size", [(0, 100), (-5, 100), (100.0, 100), (True, 100)])
def test_bad_sizes_are_refused(size):
    with pytest.raises(InputError):
        plan_pyramid(*size)


def test_plan_is_frozen():
    plan = plan_pyramid(250, 250)
    assert isinstance(plan, PyramidPlan)
    with pytest.raises(AttributeError):
        plan.scale_factor = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("size", [(375, 500), (188, 250), (1000, 250), (64, 40)])
def test_build_pyramid_shapes_equal_plan(size):
    torch.manual_seed(0)
    image = torch.rand(1, 3, *size) * 2 - 1
    plan = plan_pyramid(*size)
    levels = build_reals(image, plan)
    assert [tuple(level.shape) for level in levels] == [(1, 3, h, w) for h, w in plan.shapes]
    assert all(level.dtype == image.dtype and level.device == image.device for level in levels)


def test_build_pyramid_resizes_each_level_from_the_real_image():
    from singan.resize import imresize

    image = torch.rand(1, 3, 375, 500, dtype=torch.float64)
    plan = plan_pyramid(375, 500)
    levels = build_reals(image, plan)
    real = imresize(image, scale=plan.scale1, shape=plan.real_shape)
    torch.testing.assert_close(levels[-1], real, rtol=0, atol=0)
    stop = plan.num_scales - 1
    for i in (0, 3, stop - 1):
        expected = imresize(real, scale=math.pow(plan.scale_factor, stop - i))
        torch.testing.assert_close(levels[i], expected, rtol=0, atol=0)


def test_build_pyramid_keeps_an_image_that_fits():
    image = torch.rand(1, 3, 188, 250)
    levels = build_reals(image, plan_pyramid(188, 250))
    assert torch.equal(levels[-1], image)


def test_build_pyramid_refuses_a_plan_for_another_image():
    with pytest.raises(InputError, match="does not match the plan"):
        build_reals(torch.rand(1, 3, 100, 100), plan_pyramid(188, 250))
    with pytest.raises(InputError, match="N x C x H x W"):
        build_reals(torch.rand(3, 188, 250), plan_pyramid(188, 250))



@pytest.mark.parametrize("recipe", ["singan", "consingan"])
def test_a_min_size_below_the_critics_patch_is_refused_by_the_config(recipe):
    """max_size=16, min_size=8 gives a 9x9 (SinGAN) or 8x8 (ConSinGAN) coarsest scale, where the
    critic's BatchNorm fails mid-training ("Expected more than 1 value per channel"); the config
    refuses it, saying what to change."""
    from singan.api import config

    with pytest.raises(InputError, match=r"min_size \(8\) is below the 11x11 px the critic scores "
                                         r"\(num_layer \d, kernel_size 3\).*raise min_size to "
                                         r"at least 11"):
        config(recipe=recipe, max_size=16, min_size=8)
    assert config(recipe=recipe, max_size=16, min_size=11).min_size == 11
    # Without a critic (a patch loss), or with a padded critic, small scales are fine.
    assert pyramid_shapes(40, 40, config(max_size=16, min_size=8, loss="nnpl"))[0] == (9, 9)
    assert config(max_size=16, min_size=8, padding="reflect").min_size == 8
