"""Discriminator-substitute patch losses: zero on a copy, invariances, chunking, gradients."""

from __future__ import annotations

import pytest
import torch

from singan.errors import InputError
from singan.metrics.patch_losses import (
    aligned_nn_patch_loss,
    frechet_patch_loss,
    nn_patch_loss,
    patches,
)

LOSSES = [frechet_patch_loss, nn_patch_loss, aligned_nn_patch_loss]


def smooth_image(seed: int, h: int = 20, w: int = 24, noise: float = 0.1) -> torch.Tensor:
    """1 x 3 x h x w: a few random sinusoids per channel plus a little noise, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h * 1.0), torch.arange(w * 1.0), indexing="ij")
    channels = []
    for _ in range(3):
        fy, fx, phase = torch.rand(3, 3, generator=g)
        waves = sum(0.3 * torch.sin(0.2 + fy[i] * yy + fx[i] * xx + 6.3 * phase[i])
                    for i in range(3))
        channels.append(waves)
    image = torch.stack(channels)[None] + noise * torch.randn(1, 3, h, w, generator=g)
    return image.clamp(-1, 1)




@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return smooth_image(1)


@pytest.fixture(scope="module")
def fake() -> torch.Tensor:
    return smooth_image(2)


def test_patches_shape_and_order():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    rows = patches(x, 3)
    assert rows.shape == (2 * 3 * 4, 3 * 3 * 3)  # batch folded into the rows
    # The first row is the top-left patch of the first image, channel-major.
    assert torch.equal(rows[0], x[0, :, :3, :3].reshape(-1))
    assert torch.equal(rows[-1], x[1, :, -3:, -3:].reshape(-1))


def test_too_small_or_mismatched_images_raise(real):
    with pytest.raises(InputError, match="smaller than the 7x7"):
        patches(torch.zeros(1, 3, 6, 20), 7)
    with pytest.raises(InputError, match="B x C x H x W"):
        patches(torch.zeros(3, 20, 20), 7)
    for loss in LOSSES:
        with pytest.raises(InputError):
            loss(real[..., :5, :], real)
        with pytest.raises(InputError, match="channel"):
            loss(real[:, :2], real)
    with pytest.raises(InputError, match="at least 2 patches"):
        frechet_patch_loss(real[..., :7, :7], real)  # one patch has no covariance


def test_an_image_against_itself_gives_zero(real):
    assert nn_patch_loss(real, real).item() == 0.0
    assert aligned_nn_patch_loss(real, real).item() < 1e-10
    assert abs(frechet_patch_loss(real, real).item()) < 1e-5
    # A crop of the real image copies real patches too.
    assert nn_patch_loss(real[..., 3:15, 2:20], real).item() == 0.0


def test_nn_loss_matches_a_brute_force_reference():
    real, fake = smooth_image(3, 9, 11), smooth_image(4, 10, 9)
    size = 3
    a, b = patches(fake, size), patches(real, size)
    reference = torch.cdist(a.double(), b.double()).min(dim=1).values.square().mean() / a.shape[1]
    assert nn_patch_loss(fake, real, size=size).item() == pytest.approx(reference.item(), rel=1e-5)


def test_chunking_changes_neither_the_loss_nor_its_gradient(real, fake):
    results = []
    for chunk in (7, 100_000):
        x = fake.clone().requires_grad_()
        loss = nn_patch_loss(x, real, chunk=chunk)
        loss.backward()
        results.append((loss.detach(), x.grad))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_a, grad_b)


def test_aligned_loss_ignores_gain_and_channel_offsets(real, fake):
    offset = torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)
    shifted = 0.6 * fake + offset
    aligned = aligned_nn_patch_loss(fake, real).item()
    assert aligned > 0
    assert aligned_nn_patch_loss(shifted, real).item() == pytest.approx(aligned, rel=1e-4)
    # The plain NNPL does see the change (so the comparison above can fail).
    plain = nn_patch_loss(fake, real).item()
    assert nn_patch_loss(shifted, real).item() != pytest.approx(plain, rel=1e-2)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["smooth", "constant"])
def test_gradients_are_finite(loss, kind, real, fake):
    # A constant image has a zero covariance: the degenerate case for the eigen arithmetic.
    x = fake if kind == "smooth" else torch.full_like(fake, 0.3)
    x = x.clone().requires_grad_()
    value = loss(x, real)
    value.backward()
    assert value.dtype == x.dtype and value.dim() == 0
    assert torch.isfinite(value)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if kind == "smooth":
        assert x.grad.abs().sum() > 0


def test_frechet_grows_with_the_distance(real):
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(real.shape, generator=g)
    values = [frechet_patch_loss(real + strength * noise, real).item()
              for strength in (0.0, 0.05, 0.2, 0.5)]
    assert values == sorted(values)
    assert values[1] > 1e-4


def test_shuffled_pixels_are_far_from_every_real_patch(real):
    g = torch.Generator().manual_seed(6)
    order = torch.randperm(real.shape[-2] * real.shape[-1], generator=g)
    shuffled = real.flatten(2)[..., order].reshape(real.shape)
    assert nn_patch_loss(shuffled, real).item() > 0.01
    assert frechet_patch_loss(shuffled, real).item() > 0.01


def test_a_descent_step_lowers_each_loss(real, fake):
    for loss in LOSSES:
        x = fake.clone().requires_grad_()
        before = loss(x, real)
        before.backward()
        with torch.no_grad():
            step = x - 0.5 * x.grad / x.grad.abs().max() * 0.01
        assert loss(step, real).item() < before.item(), loss.__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda(real, fake):
    x = fake.cuda().requires_grad_()
    for loss in LOSSES:
        value = loss(x, real.cuda())
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu(), loss(fake, real), rtol=1e-4, atol=1e-6)
        value.backward()
    assert torch.isfinite(x.grad).all()
