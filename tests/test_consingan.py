"""ConSinGAN: pyramid, network sizes, concurrent-training learning rates, noise amplitudes,
reconstruction inputs, resume checks and config errors (its golden numbers, resume, storage and
sampling with every recipe's: test_every_recipe.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import singan
from singan.data.examples import pebbles
from singan.errors import InputError
from singan.recipes.consingan.levels import plan_consingan
from singan.recipes.consingan.networks import Generator
from singan.recipes.consingan.training import generator_param_groups
from tests.conftest import as_8bit


def tiny_config(**overrides) -> singan.Config:
    """Three narrow stages: a seeded training takes about a second on the CPU."""
    return singan.config("paper", **{**dict(recipe="consingan", num_scales=3, nfc=8, niter=6,
                                            log_every=3), **overrides})


def tiny_image():
    return as_8bit(pebbles(36, 44, seed=3))


class Recorder(singan.Callback):
    """Keeps the logs, the noise amplitudes, and the generator as each stage ends."""

    def __init__(self):
        self.logs, self.amps, self.generators = [], [], []

    def on_scale_start(self, model, scale, noise_amp):
        self.amps.append(noise_amp)

    def on_iteration(self, log):
        self.logs.append(log)

    def on_scale_end(self, model, scale):
        self.generators.append(copy.deepcopy(model.generator))


@pytest.fixture(scope="module")
def trained():
    """A seeded float64 training (the golden numbers hold on any CPU in float64)."""
    recorder = Recorder()
    model = singan.train(tiny_image(), tiny_config(), device="cpu", dtype=torch.float64, seed=7,
                         callbacks=[recorder])
    return model, recorder


# --- pyramid and networks ------------------------------------------------------------------
@pytest.mark.parametrize("size, shapes", [
    ((250, 250), [(25, 25), (33, 33), (45, 45), (72, 72), (158, 158), (250, 250)]),
    ((152, 250), [(26, 42), (31, 51), (40, 66), (57, 94), (106, 175), (152, 250)]),
])
def test_pyramid_keeps_more_low_resolution_stages(size, shapes):
    cfg = singan.config(recipe="consingan")
    plan = plan_consingan(*size, cfg)
    assert list(plan.shapes) == shapes
    assert plan.real_shape == shapes[-1]
    # The public functions follow the config's recipe.
    assert singan.plan(*size, cfg) == plan and singan.pyramid_shapes(*size, cfg) == shapes


def test_pyramid_refuses_degenerate_inputs():
    cfg = singan.config(recipe="consingan")
    with pytest.raises(InputError, match="smaller than min_size"):
        plan_consingan(20, 300, cfg)
    with pytest.raises(InputError, match="too elongated"):
        plan_consingan(30, 400, cfg)
    with pytest.raises(InputError, match="do not shrink"):
        plan_consingan(27, 27, cfg)


def test_generator_has_about_0_67_million_parameters_at_six_stages():
    cfg = singan.config(recipe="consingan")
    assert (cfg.nfc, cfg.num_layer, cfg.batch_norm) == (64, 3, False)
    generator = Generator(cfg, num_stages=6)
    # head 1,792 + 6 stages x 110,784 + tail 1,731
    assert sum(p.numel() for p in generator.parameters()) == 668_227


def test_generator_output_has_each_stage_size():
    cfg = tiny_config()
    generator = Generator(cfg, num_stages=2)
    shapes = [(10, 12), (14, 17)]
    noises = [torch.randn(2, 3, 10, 12), torch.randn(2, 8, 14 + 6, 17 + 6)]
    assert generator(noises, shapes, [1.0, 0.1]).shape == (2, 3, 14, 17)


@pytest.mark.parametrize("stage, trained_lrs", [
    (0, {"body.0": 5e-4, "head": 5e-4, "tail": 5e-4}),
    (2, {"body.0": 5e-6, "body.1": 5e-5, "body.2": 5e-4, "head": 5e-6, "tail": 5e-4}),
    (4, {"body.2": 5e-6, "body.3": 5e-5, "body.4": 5e-4, "tail": 5e-4}),
])
def test_the_newest_three_stages_train_at_decaying_rates(stage, trained_lrs):
    cfg = singan.config(recipe="consingan")
    generator = Generator(cfg, num_stages=stage + 1)
    groups = generator_param_groups(generator, stage, cfg)

    def part(name: str) -> str:  # "body.2.0.conv.weight" -> "body.2", "head.conv.bias" -> "head"
        return ".".join(name.split(".")[: 2 if name.startswith("body.") else 1])

    part_of = {id(p): part(name) for name, p in generator.named_parameters()}
    got = {}
    for group in groups:
        parts = {part_of[id(p)] for p in group["params"]}
        assert len(parts) == 1  # one group per body, head or tail
        got[parts.pop()] = group["lr"]
    assert got.keys() == trained_lrs.keys()
    for name, lr in trained_lrs.items():
        assert got[name] == pytest.approx(lr, rel=1e-12), name
    trainable = {part(name) for name, p in generator.named_parameters() if p.requires_grad}
    frozen = {part(name) for name, p in generator.named_parameters() if not p.requires_grad}
    assert trainable == set(trained_lrs) and not trainable & frozen


# --- training ------------------------------------------------------------------------------
def test_noise_amplitude_is_1_then_0_1_rmse_of_the_grown_reconstruction(trained):
    model, recorder = trained
    assert recorder.amps[0] == 1.0 and model.noise_amps[0] == 1.0
    # Stage 1 starts as stage 0's generator grown by a copy of its body, adding no noise yet.
    grown = copy.deepcopy(recorder.generators[0])
    grown.add_stage()
    z_recs = [model.scales[0].z_rec, model.scales[1].z_rec]
    with torch.no_grad():
        rec = grown(z_recs, model.plan.shapes[:2], [1.0, 0.0])
    expected = 0.1 * torch.sqrt(F.mse_loss(rec, model.scales[1].real))
    assert recorder.amps[1] == pytest.approx(float(expected), rel=1e-5)
    assert model.noise_amps == pytest.approx(recorder.amps, rel=1e-6)


def test_reconstruction_inputs_are_the_coarsest_real_then_fixed_feature_noise(trained):
    model, _ = trained
    assert torch.equal(model.scales[0].z_rec, model.scales[0].real)
    h, w = model.plan.shapes[1]
    assert model.scales[1].z_rec.shape == (1, 8, h + 6, w + 6)
    assert 0.8 < float(model.scales[1].z_rec.std()) < 1.2


def test_resume_refuses_a_model_stopped_inside_a_stage(trained):
    model, _ = trained
    broken = copy.deepcopy(model)
    broken.generator.add_stage()
    with pytest.raises(InputError, match="middle of a stage"):
        singan.train(tiny_image(), device="cpu", resume=broken)
    with pytest.raises(InputError, match="config"):
        singan.train(tiny_image(), tiny_config(niter=3), device="cpu", resume=model)


def test_reconstruction_is_closer_to_the_real_than_a_sample(trained):
    model, _ = trained
    real = model.reals[-1]
    rec = singan.reconstruct(model)
    samples = singan.sample(model, 4, generator=torch.Generator().manual_seed(0))
    assert (rec - real).pow(2).mean() < (samples - real).pow(2).mean(dim=(1, 2, 3)).min()


# --- config --------------------------------------------------------------------------------
def test_recipe_defaults_come_before_the_preset_and_the_overrides():
    cfg = singan.config("quick", recipe="consingan", nfc=16)
    assert (cfg.recipe, cfg.num_layer, cfg.leaky_slope, cfg.batch_norm) == ("consingan", 3, 0.05,
                                                                             False)
    assert (cfg.num_scales, cfg.max_size, cfg.niter, cfg.lr_milestone) == (4, 96, 100, 80)  # quick
    assert cfg.nfc == 16
    paper = singan.config(recipe="consingan")
    assert (paper.num_scales, paper.nfc, paper.niter, paper.lr_milestone) == (6, 64, 1000, 800)
    assert singan.config() == singan.Config()  # SinGAN's defaults are untouched


def test_bad_recipe_settings_are_refused():
    with pytest.raises(InputError, match="recipe"):
        singan.config(recipe="progan")
    # A Config holds any recipe name; the registry refuses it where it is used.
    with pytest.raises(InputError, match="recipe"):
        singan.plan(40, 40, singan.Config(recipe="progan"))
    with pytest.raises(InputError, match="only loss"):
        singan.train(torch.zeros(1, 3, 40, 40), singan.Config(recipe="consingan", loss="nnpl",
                                                               num_scales=3))
    with pytest.raises(InputError, match="train_depth"):
        singan.config(recipe="consingan", train_depth=0)
    with pytest.raises(InputError, match="batch_norm=False needs"):
        singan.config(batch_norm=False)
    with pytest.raises(InputError, match="only loss"):
        singan.config(recipe="consingan", loss="nnpl")
    with pytest.raises(InputError, match="num_scales"):
        singan.config(recipe="consingan", num_scales=None)
