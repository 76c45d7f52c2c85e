"""Training variants of the seed study: padding modes, noise padding, patch losses without D."""

from __future__ import annotations

import statistics

import pytest
import torch

import singan
from singan.data.examples import pebbles
from singan.errors import InputError
from singan.recipes.singan.networks import Discriminator, noise_shape, pad
from tests.conftest import tiny_config


class Losses(singan.Callback):
    def __init__(self):
        self.logs = []

    def on_iteration(self, log):
        self.logs.append(log)


@pytest.fixture(scope="module")
def image():
    return pebbles(32, 40, seed=5)


def variant(**overrides) -> singan.Config:
    values = dict(min_size=20, max_size=40, num_scales=2, niter=40, lr_milestone=40, log_every=1)
    return tiny_config(**{**values, **overrides})


@pytest.mark.parametrize("loss", ["frechet", "nnpl", "annpl"])
def test_patch_losses_train_without_a_critic_and_decrease(image, loss):
    losses = Losses()
    model = singan.train(image, variant(loss=loss), device="cpu", seed=0, callbacks=[losses])
    assert all(level.discriminator is None for level in model.scales)
    for scale in range(model.num_scales):
        logs = [log for log in losses.logs if log.scale == scale]
        assert all(log.d_real is None and log.d_loss is None for log in logs)
        values = [log.g_adv + log.reconstruction for log in logs]
        assert all(torch.isfinite(torch.tensor(values)))
        first, last = statistics.fmean(values[:5]), statistics.fmean(values[-5:])
        assert last < 0.8 * first, (loss, scale, first, last)
    assert singan.sample(model, 2).shape == (2, 3, *model.reals[-1].shape[-2:])


def test_a_model_without_critic_saves_and_loads(image, tmp_path):
    model = singan.train(image, variant(loss="nnpl", niter=3), device="cpu", seed=0)
    model.save(tmp_path)
    loaded = singan.load(tmp_path)
    assert loaded.config.loss == "nnpl"
    assert all(level.discriminator is None for level in loaded.scales)
    rng = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(singan.sample(model, generator=rng()), singan.sample(loaded, generator=rng()))


@pytest.mark.parametrize("padding", ["zero", "circular", "reflect"])
def test_each_padding_mode_trains_and_samples(image, padding):
    losses = Losses()
    model = singan.train(image, variant(padding=padding, niter=10), device="cpu", seed=0,
                         callbacks=[losses])
    assert all(torch.isfinite(torch.tensor([log.d_loss + log.g_adv + log.reconstruction]))
               for log in losses.logs)
    x = singan.sample(model, 2, scale_h=1.5)
    assert x.shape[-1] == round(40 * 1.5) and x.abs().max() <= 1


def test_padding_modes_differ_where_the_border_is_involved():
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    zero, circ, refl = (pad(x, singan.config(padding=mode)) for mode in ("zero", "circular",
                                                                         "reflect"))
    assert zero.shape == circ.shape == refl.shape == (2, 3, 16, 17)
    assert zero[..., :5, :].abs().sum() == 0
    assert torch.equal(circ[..., 5:11, 0], x[..., -5])  # wraps around
    assert torch.equal(refl[..., 5:11, 4], x[..., 1])  # mirrors without repeating the edge
    for y in (zero, circ, refl):
        assert torch.equal(y[..., 5:11, 5:12], x)


def test_the_critic_scores_every_pixel_under_circular_and_reflect_padding():
    x = torch.randn(1, 3, 20, 24)
    zero = Discriminator(8, singan.config(nfc=8))(x)
    assert zero.shape[-2:] == (10, 14)  # the reference: valid convolutions only
    for mode in ("circular", "reflect"):
        assert Discriminator(8, singan.config(nfc=8, padding=mode))(x).shape[-2:] == (20, 24)


def test_circular_padding_makes_the_generator_shift_equivariant(image):
    """With wrap-around borders a generator's response to a rolled input is the rolled output."""
    model = singan.train(image, variant(padding="circular", niter=2), device="cpu", seed=0)
    level = model.scales[1]
    h, w = level.real.shape[-2:]
    z = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    prev = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    from singan.recipes.singan.sampling import run_scale

    out = run_scale(model, 1, z, prev)
    rolled = run_scale(model, 1, z.roll(7, -1), prev.roll(7, -1))
    assert torch.allclose(rolled, out.roll(7, -1), atol=1e-5)


def test_noise_padding_draws_noise_over_the_border(image, tmp_path):
    cfg = variant(noise_padding=True, niter=3)
    model = singan.train(image, cfg, device="cpu", seed=0)
    for level in model.scales:
        h, w = level.real.shape[-2:]
        assert level.z_rec.shape[-2:] == (h + 10, w + 10) == noise_shape((h, w), cfg)
    assert singan.reconstruct(model).shape[-2:] == model.reals[-1].shape[-2:]
    assert singan.sample(model, 1, scale_v=1.5).shape[-2:] == (48, 40)
    model.save(tmp_path)
    assert singan.load(tmp_path).scales[0].z_rec.shape == model.scales[0].z_rec.shape


def test_bad_variant_names_are_refused():
    with pytest.raises(InputError, match="padding must be one of zero, circular, reflect"):
        singan.config(padding="replicate")
    with pytest.raises(InputError, match="loss must be one of wgan_gp"):
        singan.config(loss="hinge")
    with pytest.raises(InputError, match="noise_padding must be true or false"):
        singan.config(noise_padding="yes")
