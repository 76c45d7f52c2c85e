"""Training: golden losses of a seeded tiny run, hooks, resume, warm start, errors."""

from __future__ import annotations

import pytest
import torch

import singan
from singan.errors import InputError
from singan.examples import pebbles
from tests.conftest import tiny_config


class Crash(Exception):
    pass


class Recorder(singan.Callback):
    def __init__(self, stop_after: int | None = None):
        self.logs, self.ends, self.starts, self.stop_after = [], [], [], stop_after

    def on_scale_start(self, model, scale, noise_amp):
        self.starts.append((scale, len(model.scales), noise_amp))

    def on_iteration(self, log):
        self.logs.append(log)

    def on_scale_end(self, model, scale):
        self.ends.append((scale, len(model.scales)))
        if scale == self.stop_after:
            raise Crash(f"crash after scale {scale}")


def test_hooks_fire_every_logged_iteration_and_scale(tiny_image):
    recorder = Recorder()
    cfg = tiny_config(niter=12, log_every=5)
    model = singan.train(tiny_image, cfg, device="cpu", seed=1, callbacks=[recorder])
    n = model.num_scales
    assert recorder.ends == [(s, s + 1) for s in range(n)]
    assert [s[:2] for s in recorder.starts] == [(s, s) for s in range(n)]
    assert recorder.starts[0][2] == 1.0  # coarsest noise amplitude
    assert [(log.scale, log.iteration) for log in recorder.logs] == [
        (s, i) for s in range(n) for i in (5, 10, 12)]
    assert all(log.niter == 12 for log in recorder.logs)


def test_noise_amplitude_rule(tiny_model):
    """1 at the coarsest scale; 0.1 * RMSE(real, upsampled reconstruction) above it."""
    from singan.sample import generate, upsample

    assert tiny_model.noise_amps[0] == 1.0
    for scale in range(1, tiny_model.num_scales):
        prev_rec = generate(tiny_model, [s.z_rec for s in tiny_model.scales[:scale]])
        real = tiny_model.scales[scale].real
        prev_rec = upsample(prev_rec, tuple(real.shape[-2:]), tiny_model.scale_factor)
        expected = 0.1 * torch.sqrt(torch.mean((prev_rec - real) ** 2))
        assert tiny_model.noise_amps[scale] == pytest.approx(float(expected), rel=1e-5)


def test_reconstruction_noise_is_fixed_z_star_then_zeros(tiny_model):
    assert tiny_model.scales[0].z_rec.shape[1] == 1  # one channel shared by R, G and B
    assert tiny_model.scales[0].z_rec.std() > 0.5
    assert all(not s.z_rec.any() for s in tiny_model.scales[1:])


def test_warm_start_copies_the_previous_scale_when_width_is_unchanged(tiny_image):
    # With zero learning rates only BatchNorm running statistics change during a scale.
    cfg = tiny_config(niter=1, log_every=1, lr_g=0.0, lr_d=0.0)
    model = singan.train(tiny_image, cfg, device="cpu", seed=2)
    w = [s.generator.head.conv.weight for s in model.scales]
    assert torch.equal(w[0], w[1])  # 8 -> 8 channels: copied
    assert w[2].shape != w[1].shape  # 8 -> 16 channels: fresh
    assert torch.equal(w[2], w[3])  # 16 -> 16: copied


def test_earlier_scales_are_frozen(tiny_image):
    frozen = {}

    class Check(singan.Callback):
        def on_scale_end(self, model, scale):
            frozen[scale] = {k: v.clone() for k, v in model.scales[scale].state_dict().items()}

    model = singan.train(tiny_image, tiny_config(niter=4), device="cpu", seed=3, callbacks=[Check()])
    for scale, state in frozen.items():
        now = model.scales[scale].state_dict()
        assert all(torch.equal(now[k], v) for k, v in state.items())
        assert not model.scales[scale].training
        assert not any(p.requires_grad for p in model.scales[scale].parameters())


def test_resume_trains_only_the_missing_scales_and_matches_a_full_run(tiny_image, tmp_path):
    cfg = tiny_config(niter=8)
    full = singan.train(tiny_image, cfg, device="cpu", seed=11)

    saver = Recorder(stop_after=1)
    with pytest.raises(Crash):
        singan.train(tiny_image, cfg, device="cpu", seed=11,
                     callbacks=[SaveEachScale(tmp_path), saver])
    partial = singan.load(tmp_path)
    assert len(partial.scales) == 2

    resumed_log = Recorder()
    resumed = singan.train(tiny_image, device="cpu", callbacks=[resumed_log], resume=partial)
    assert [scale for scale, _ in resumed_log.ends] == list(range(2, full.num_scales))
    for a, b in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert a[0] == b[0] and torch.allclose(a[1], b[1], atol=1e-6), a[0]


class SaveEachScale(singan.Callback):
    def __init__(self, directory):
        self.directory = directory

    def on_scale_end(self, model, scale):
        model.save(self.directory)


def test_resume_refuses_another_image_config_or_seed(tiny_model, tiny_image):
    with pytest.raises(InputError, match="config"):
        singan.train(tiny_image, tiny_config(niter=3), resume=tiny_model)
    with pytest.raises(InputError, match="seed"):
        singan.train(tiny_image, seed=tiny_model.seed + 1, resume=tiny_model)
    with pytest.raises(InputError, match="size"):
        singan.train(pebbles(40, 28), resume=tiny_model)
    with pytest.raises(InputError, match="another image"):
        singan.train(pebbles(28, 36, seed=99), resume=tiny_model)


def test_too_small_image_is_refused_before_training():
    with pytest.raises(InputError, match="smaller than min_size"):
        singan.train(torch.zeros(1, 3, 20, 30), singan.config())


def test_bad_tensor_shape_is_refused():
    with pytest.raises(InputError, match="1 x 3 x H x W"):
        singan.train(torch.zeros(2, 3, 40, 40))
