"""Applications on tiny models: super-resolution, paint-to-image, harmonization, editing,
animation, and their `singan` commands."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import singan
from singan.apps.animation import animate, animation_config, noise_walk
from singan.apps.harmonization import blending_mask, edit, harmonize
from singan.apps.paint import injection, paint_to_image, retrain_for_paint
from singan.apps.sr import SR_ALPHA, SR_MIN_SIZE, sr_config, sr_steps, super_resolve
from singan.cli.commands import main
from singan.data.examples import pebbles
from singan.errors import InputError
from tests.conftest import tiny_config


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    """Four scales of a 40 x 48 image."""
    cfg = tiny_config(min_size=16, max_size=48, num_scales=4, niter=30, lr_milestone=24)
    return singan.train(pebbles(40, 48, seed=2), cfg, device="cpu", seed=0)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model.save(folder)
    return folder


def disc_mask(h: int, w: int, cy: int, cx: int, r: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((y - cy) ** 2 + (x - cx) ** 2) <= r * r).float()[None, None]


# --- super-resolution ----------------------------------------------------------------------


@pytest.mark.parametrize(("factor", "steps"), [(2, 3), (4, 6), (8, 9)])
def test_sr_steps_follow_the_reference(factor, steps):
    step, count = sr_steps(factor)
    assert count == steps
    assert step ** count == pytest.approx(factor)
    assert step == pytest.approx(2 ** (1 / 3))


def test_sr_config_trains_the_full_image_with_alpha_100():
    cfg = sr_config(600, 900, 4)
    assert (cfg.alpha, cfg.min_size, cfg.max_size) == (SR_ALPHA, SR_MIN_SIZE, 900)
    assert cfg.scale_factor == pytest.approx(2 ** (-1 / 3))
    assert singan.plan_pyramid(600, 900, cfg).real_shape == (600, 900)  # no silent cap
    assert sr_config(600, 900, 4, max_size=300).max_size == 300  # only on request
    quick = sr_config(60, 90, 2, base=singan.config("quick"))
    assert quick.num_scales is None and quick.niter == 100  # the levels follow the step factor


@pytest.mark.parametrize("factor", [0.5, 1, 1.05])
def test_sr_refuses_factors_without_an_upscaling_step(factor):
    with pytest.raises(InputError, match="factor"):
        sr_steps(factor)


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_output_size_range_and_determinism(model, factor):
    h, w = model.reals[-1].shape[-2:]
    out = super_resolve(model, factor, generator=seeded(1))
    assert out.shape == (1, 3, h * factor, w * factor)
    assert out.abs().max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(out, super_resolve(model, factor, generator=seeded(1)))
    assert not torch.equal(out, super_resolve(model, factor, generator=seeded(2)))


def test_super_resolution_stays_close_to_the_bicubic_upscale(model):
    """The finest generator adds detail on top of its input: the result tracks the image."""
    out = super_resolve(model, 2, generator=seeded(1))
    bicubic = singan.imresize(model.reals[-1], shape=tuple(out.shape[-2:]))
    assert (out - bicubic).abs().mean() < 0.25


# --- paint-to-image ------------------------------------------------------------------------


def test_paint_to_image_shapes_range_and_seed(model):
    paint = torch.zeros(1, 3, 40, 48)
    paint[..., :20, :] = 0.6  # two flat colours
    out = paint_to_image(model, paint, 2, num=3, generator=seeded(0))
    assert out.shape == (3, 3, 40, 48) and out.abs().max() <= 1
    assert not torch.equal(out[0], out[1])  # fresh noise per result
    assert torch.equal(out, paint_to_image(model, paint, 2, num=3, generator=seeded(0)))


def test_paint_of_another_size_is_resized_to_the_training_image(model):
    paint = torch.rand(1, 3, 80, 96) * 2 - 1
    assert paint_to_image(model, paint, 1).shape[-2:] == (40, 48)
    assert injection(model, paint, 2).shape[-2:] == model.reals[2].shape[-2:]


@pytest.mark.parametrize("start_scale", [0, 4, -1])
def test_injection_needs_a_scale_below_it(model, start_scale):
    with pytest.raises(InputError, match="start scale must be between 1 and 3"):
        paint_to_image(model, torch.zeros(1, 3, 40, 48), start_scale)


def test_retraining_for_paint_replaces_only_the_injection_scale(model):
    retrained, centers = retrain_for_paint(model, 2, colours=5)
    assert centers.shape == (5, 3)
    for index, (old, new) in enumerate(zip(model.scales, retrained.scales)):
        same = all(torch.equal(a, b) for a, b in zip(old.state_dict().values(),
                                                    new.state_dict().values()))
        assert same == (index != 2), index
    paint = torch.zeros(1, 3, 40, 48)
    out = paint_to_image(retrained, paint, 2, generator=seeded(0), centers=centers)
    assert out.shape == (1, 3, 40, 48) and torch.isfinite(out).all()


# --- harmonization and editing -------------------------------------------------------------


@pytest.mark.parametrize("run", [harmonize, edit])
def test_blending_keeps_the_real_image_outside_the_dilated_mask(model, run):
    real = model.reals[-1]
    naive = real.clone()
    naive[..., 15:25, 20:30] = 1.0  # a white square pasted in
    mask = disc_mask(40, 48, 20, 25, 5)
    blended, unblended = run(model, naive, mask, 2, num=2, generator=seeded(0))
    assert blended.shape == unblended.shape == (2, 3, 40, 48)
    weights = blending_mask(model, mask, 7 if run is harmonize else 20)
    outside = (weights == 0).expand_as(blended)
    assert outside.any()
    assert torch.equal(blended[outside], real.expand_as(blended)[outside])
    inside = (weights == 1).expand_as(blended)
    assert torch.equal(blended[inside], unblended[inside])


def test_editing_dilates_further_than_harmonization(model):
    mask = disc_mask(40, 48, 10, 10, 2)
    harm, ed = blending_mask(model, mask, 7), blending_mask(model, mask, 20)
    assert (harm > 0).sum() < (ed > 0).sum()
    assert harm.min() == 0 and harm.max() == 1


def test_masks_of_another_size_are_resized(model):
    mask = disc_mask(80, 96, 40, 50, 10)
    assert blending_mask(model, mask, 7).shape == (1, 1, 40, 48)


def test_harmonization_is_deterministic_under_a_seed(model):
    naive, mask = model.reals[-1].flip(-1), disc_mask(40, 48, 20, 20, 6)
    a, _ = harmonize(model, naive, mask, 1, generator=seeded(3))
    b, _ = harmonize(model, naive, mask, 1, generator=seeded(3))
    assert torch.equal(a, b)


# --- animation -----------------------------------------------------------------------------


def test_animation_config_uses_noise_padding_and_min_size_20():
    cfg = animation_config(singan.config("quick"))
    assert cfg.noise_padding and cfg.min_size == 20 and cfg.max_size == 96


def test_noise_walk_stays_at_z_rec_with_alpha_one():
    z_rec = torch.randn(1, 3, 5, 6)
    draw = lambda: torch.randn(1, 3, 5, 6)  # noqa: E731
    walk = noise_walk(z_rec, 7, alpha=1.0, beta=0.9, draw=draw)
    assert walk.shape == (7, 3, 5, 6)
    assert torch.allclose(walk, z_rec.expand(7, -1, -1, -1))


def test_animation_frames_shape_range_seed_and_start_scale(model):
    frames = animate(model, beta=0.9, start_scale=0, frames=6, generator=seeded(0))
    assert frames.shape == (6, 3, 40, 48) and frames.abs().max() <= 1
    assert torch.equal(frames, animate(model, beta=0.9, frames=6, generator=seeded(0)))
    # Consecutive frames move, but less than two unrelated samples differ.
    steps = (frames[1:] - frames[:-1]).abs().mean()
    samples = singan.sample(model, 2, generator=seeded(5))
    assert 0 < steps < (samples[0] - samples[1]).abs().mean()
    # A start scale at the finest keeps the layout of the reconstruction.
    late = animate(model, start_scale=3, frames=4, generator=seeded(0))
    rec = singan.reconstruct(model)
    assert (late - rec).abs().mean() < (frames - rec).abs().mean()


def test_an_animation_model_trains_and_animates(tmp_path):
    cfg = animation_config(tiny_config(max_size=40, num_scales=3, niter=3))
    model = singan.train(pebbles(32, 40, seed=1), cfg, device="cpu", seed=0)
    assert model.scales[-1].z_rec.shape[-2:] == (32 + 10, 40 + 10)
    assert animate(model, frames=3, generator=seeded(0)).shape == (3, 3, 32, 40)


# --- the commands --------------------------------------------------------------------------


def gif_info(path):
    with Image.open(path) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        return gif.n_frames, durations, gif.info.get("loop"), gif.size


def test_animate_command_writes_the_gif_grid(model_dir, tmp_path, capsys):
    out = tmp_path / "anim"
    assert main(["animate", str(model_dir), "--out", str(out), "--frames", "4", "--fps", "5",
                 "--betas", "0.8,0.95", "--start-scales", "0,2,9"]) == 0
    gifs = sorted(p.relative_to(out / "animate").as_posix() for p in out.rglob("*.gif"))
    assert gifs == [f"start_scale_{s}/beta_{b}.gif" for s in (0, 2) for b in ("0.80", "0.95")]
    frames, durations, loop, size = gif_info(out / "animate" / "start_scale_0" / "beta_0.80.gif")
    assert (frames, set(durations), loop, size) == (4, {200}, 0, (48, 40))
    text = capsys.readouterr().out
    assert "skipping start scale 9" in text and "without noise padding" in text


def test_animate_command_trains_an_image_first(tmp_path):
    singan.save_image(pebbles(32, 40, seed=4), tmp_path / "img.png")
    out = tmp_path / "run"
    assert main(["animate", str(tmp_path / "img.png"), "--out", str(out), "--preset", "quick",
                 "--niter", "2", "--max-size", "40", "--frames", "3", "--betas", "0.9",
                 "--start-scales", "1"]) == 0
    assert singan.load(out / "model").config.noise_padding
    assert gif_info(out / "animate" / "start_scale_1" / "beta_0.90.gif")[0] == 3


def test_sr_command_writes_an_image_factor_times_larger(tmp_path):
    singan.save_image(pebbles(30, 36, seed=4), tmp_path / "low.png")
    out = tmp_path / "sr"
    assert main(["sr", str(tmp_path / "low.png"), "--factor", "2", "--out", str(out),
                 "--preset", "quick", "--niter", "2"]) == 0
    with Image.open(out / "sr" / "sr_x2.png") as sr, \
            Image.open(out / "sr" / "bicubic_x2.png") as bicubic:
        assert sr.size == bicubic.size == (72, 60)
    assert singan.load(out / "model").config.alpha == SR_ALPHA


def test_paint_harmonize_and_edit_commands(model_dir, model, tmp_path):
    real = model.reals[-1]
    singan.save_image(real, tmp_path / "naive.png")
    Image.new("L", (96, 80), 0).save(tmp_path / "empty.png")
    mask = Image.new("RGBA", (48, 40), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (10, 10, 20, 20))  # opaque white square, transparent rest
    mask.save(tmp_path / "mask.png")
    assert main(["paint", str(model_dir), str(tmp_path / "naive.png"), "--start-scale", "1",
                 "--out", str(tmp_path / "p"), "--num", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "injected.png", "paint_start1_00.png", "paint_start1_01.png"]
    assert main(["paint", str(model_dir), str(tmp_path / "naive.png"), "--start-scale", "2",
                 "--out", str(tmp_path / "q"), "--quantise"]) == 0
    assert (tmp_path / "q" / "model_paint" / "colours.json").is_file()
    # A second run reuses the retrained model.
    assert main(["paint", str(model_dir), str(tmp_path / "naive.png"), "--start-scale", "2",
                 "--out", str(tmp_path / "q"), "--quantise"]) == 0
    for command, name in (("harmonize", "harmonized"), ("edit", "edited")):
        out = tmp_path / command
        assert main([command, str(model_dir), str(tmp_path / "naive.png"),
                     str(tmp_path / "mask.png"), "--start-scale", "2", "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == [
            f"{name}_00.png", f"{name}_unmasked_00.png", "mask_used.png"]


def test_commands_report_bad_input_in_one_line(model_dir, tmp_path, capsys):
    Image.new("L", (48, 40), 0).save(tmp_path / "black.png")
    singan.save_image(torch.zeros(1, 3, 40, 48), tmp_path / "naive.png")
    assert main(["harmonize", str(model_dir), str(tmp_path / "naive.png"),
                 str(tmp_path / "black.png"), "--start-scale", "2", "--out",
                 str(tmp_path / "o")]) == 2
    assert "black.png: the mask is empty" in capsys.readouterr().err
    assert main(["paint", str(model_dir), str(tmp_path / "naive.png"), "--start-scale", "0",
                 "--out", str(tmp_path / "o")]) == 2
    assert "start scale must be between 1 and 3" in capsys.readouterr().err
    assert main(["sr", str(tmp_path / "naive.png"), "--factor", "1", "--out",
                 str(tmp_path / "o")]) == 2
    assert "factor must be above 1" in capsys.readouterr().err
