"""SinGAN's training: hooks, noise amplitudes, z*, warm start, frozen scales, resume checks,
errors, dtypes (the golden numbers, resume and storage of every recipe: test_every_recipe.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import singan
from singan.base import gradient_penalty
from singan.data.examples import pebbles
from singan.errors import InputError
from singan.layers import init_weights, trainable
from singan.recipes.singan.networks import Discriminator, Generator, pad
from singan.streams import scale_generator
from tests.conftest import tiny_config


class Recorder(singan.Callback):
    def __init__(self):
        self.logs, self.ends, self.starts = [], [], []

    def on_scale_start(self, model, scale, noise_amp):
        self.starts.append((scale, len(model.scales), noise_amp))

    def on_iteration(self, log):
        self.logs.append(log)

    def on_scale_end(self, model, scale):
        self.ends.append((scale, len(model.scales)))


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
    from singan.recipes.singan.sampling import generate, upsample

    assert tiny_model.noise_amps[0] == 1.0
    for scale in range(1, tiny_model.num_scales):
        prev_rec = generate(tiny_model, [s.z_rec for s in tiny_model.scales[:scale]])
        real = tiny_model.scales[scale].real
        prev_rec = upsample(prev_rec, tuple(real.shape[-2:]), tiny_model.scale_factor)
        expected = 0.1 * torch.sqrt(torch.mean((prev_rec - real) ** 2))
        assert tiny_model.noise_amps[scale] == pytest.approx(float(expected), rel=1e-5)


def test_reconstruction_noise_is_z_star_then_zeros(tiny_model):
    assert tiny_model.scales[0].z_rec.shape[1] == 1  # one channel shared by R, G and B
    assert tiny_model.scales[0].z_rec.std() > 0.5
    assert all(not s.z_rec.any() for s in tiny_model.scales[1:])


@pytest.mark.parametrize("z_star", ["redrawn", "fixed"])
def test_z_star_is_the_last_draw_or_the_first(tiny_image, z_star):
    """Redrawn (the default, the official code): every iteration of the coarsest scale draws a
    new z*, and the model keeps the last one, so it changes with niter. Fixed (the paper's text):
    drawn once before the first iteration."""
    z_recs = [singan.train(tiny_image, tiny_config(niter=niter, num_scales=2, z_star=z_star),
                           device="cpu", seed=4).scales[0].z_rec for niter in (1, 3)]
    assert torch.equal(z_recs[0], z_recs[1]) == (z_star == "fixed")


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


def test_float64_trains_in_float64_end_to_end_and_loads_as_float64(tiny_image, tmp_path):
    model = singan.train(tiny_image, tiny_config(niter=2), device="cpu", dtype=torch.float64,
                         seed=1)
    assert model.dtype == torch.float64
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    model.save(tmp_path)
    loaded = singan.load(tmp_path)
    assert loaded.dtype == torch.float64
    rng = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    samples = singan.sample(loaded, 2, generator=rng())
    assert samples.dtype == torch.float64
    assert torch.equal(samples, singan.sample(model, 2, generator=rng()))
    # Resuming keeps the model's dtype, and refuses another.
    partial = singan.load(tmp_path)
    del partial.scales[2:]
    assert singan.train(tiny_image, device="cpu", resume=partial).dtype == torch.float64
    with pytest.raises(InputError, match="float64"):
        singan.train(tiny_image, device="cpu", dtype=torch.float32, resume=loaded)
    with pytest.raises(InputError, match="floating-point"):
        singan.train(tiny_image, tiny_config(niter=1), dtype=torch.int64)


def test_conv_biases_that_feed_batchnorm_have_no_gradient_and_stay_frozen(tiny_image):
    """Their exact gradient is zero (BatchNorm removes any per-channel constant): in float64
    autograd gives rounding noise of about 1e-17; the optimiser leaves them at their initial
    values, so seeded trainings do not depend on that noise (models.trainable)."""
    torch.manual_seed(0)
    critic = Discriminator(8, tiny_config()).double().train()
    x = tiny_image.double()
    e = torch.tensor(0.3, dtype=torch.float64)
    (critic(x).mean() + gradient_penalty(critic, x, x.flip(-1), e)).backward()
    biases = [critic.head.conv.bias, *(block.conv.bias for block in critic.body)]
    weights = [critic.head.conv.weight, *(block.conv.weight for block in critic.body)]
    assert max(float(b.grad.abs().max()) for b in biases) < 1e-12
    assert min(float(w.grad.abs().max()) for w in weights) > 1e-4
    assert {id(p) for p in trainable(critic)} == {id(p) for p in critic.parameters()} - {
        id(b) for b in biases}

    cfg = tiny_config(niter=3)
    init = singan.train(tiny_image, cfg, device="cpu", seed=4, dtype=torch.float64)
    first = init.scales[0].generator.head.conv.bias
    tail = init.scales[0].generator.tail.bias
    fresh = Generator(8, cfg).double()
    init_weights(fresh, cfg.init_std, scale_generator(4, 0, torch.device("cpu")))
    assert torch.equal(first, fresh.head.conv.bias)  # frozen at its initial value
    assert not torch.equal(tail, fresh.tail.bias)  # the tail's bias (no BatchNorm) trains


def test_float32_and_float64_agree_on_one_steps_gradients(tiny_image):
    """float32 is checked where it is portable: one step's gradients from identical state
    (many steps would be compared in float64, above)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    generator, critic = Generator(8, cfg).double().train(), Discriminator(8, cfg).double().train()
    real = tiny_image.double()
    z = torch.randn(1, 3, *real.shape[-2:], dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(1))

    def gradients(dtype):
        g, d = copy.deepcopy(generator).to(dtype), copy.deepcopy(critic).to(dtype)
        x, noise = real.to(dtype), pad(z.to(dtype), cfg)
        prev = torch.zeros_like(noise)
        fake = g(noise, prev)
        e = torch.tensor(0.3, dtype=dtype)
        d_loss = -d(x).mean() + d(fake.detach()).mean() + cfg.lambda_grad * gradient_penalty(
            d, x, fake.detach(), e)
        g_loss = -d(fake).mean() + cfg.alpha * torch.nn.functional.mse_loss(fake, x)
        d_grads = torch.autograd.grad(d_loss, trainable(d), retain_graph=True)
        g_grads = torch.autograd.grad(g_loss, trainable(g))
        return [t.double() for t in (*d_grads, *g_grads)]

    singles, doubles = gradients(torch.float32), gradients(torch.float64)
    # Relative to the largest gradient: some have an exact value of zero (the critic's output
    # bias, which the WGAN loss cancels), where float32 gives rounding noise. Measured: 1.4e-5.
    scale = max(float(g.abs().max()) for g in doubles)
    errors = [float((single - double).abs().max()) / scale
              for single, double in zip(singles, doubles, strict=True)]
    assert max(errors) < 1e-4, errors


@pytest.mark.slow
def test_learning_check_on_a_structured_image():
    """A small real training: the finest scale learns detail beyond the upsampled coarser scale,
    and samples are new images with the input's colours, not copies of it or of each other."""
    from singan.recipes.singan.sampling import generate, upsample

    cfg = singan.config(min_size=16, max_size=48, num_scales=3, nfc=16, max_nfc=16, niter=100,
                        lr_milestone=80)
    model = singan.train(pebbles(96, 128, seed=1), cfg, device="cpu", seed=0)
    real = model.scales[-1].real
    coarser = upsample(generate(model, [s.z_rec for s in model.scales[:-1]]),
                       tuple(real.shape[-2:]), model.scale_factor)
    rec_error = (singan.reconstruct(model) - real).pow(2).mean()
    upsampled_error = (coarser - real).pow(2).mean()
    assert rec_error < 0.65 * upsampled_error  # measured 0.47-0.56 over seeds and sizes

    samples = singan.sample(model, 4, generator=torch.Generator().manual_seed(0))
    assert (samples[0] - samples[1]).abs().mean() > 0.05  # measured 0.12-0.16
    assert (samples - real).abs().mean(dim=(1, 2, 3)).min() > 0.05  # measured 0.13-0.17
    colour = samples.mean(dim=(2, 3)) - real.mean(dim=(2, 3))
    assert colour.abs().max() < 0.15
    assert 0.5 < float(samples.std() / real.std()) < 1.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_keeps_everything_on_the_device(tiny_image, tmp_path):
    recorder = Recorder()
    model = singan.train(tiny_image, tiny_config(niter=5), device="cuda", seed=1,
                         callbacks=[recorder])
    assert all(t.device.type == "cuda" for t in [*model.parameters(), *model.buffers()])
    assert all(torch.isfinite(torch.tensor(log.reconstruction)) for log in recorder.logs)
    model.save(tmp_path)
    on_cpu = singan.load(tmp_path, device="cpu")
    assert singan.sample(on_cpu, 2).shape == (2, 3, *model.plan.shapes[-1])
