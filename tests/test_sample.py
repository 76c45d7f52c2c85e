"""Sampling: sizes, start scale, reproducibility, reconstruction, argument errors."""

from __future__ import annotations

import pytest
import torch

import singan
from singan.errors import InputError


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_samples_have_the_finest_size_and_range(tiny_model):
    x = singan.sample(tiny_model, 4, generator=rng())
    assert x.shape == (4, 3, *tiny_model.plan.shapes[-1])
    assert x.min() >= -1 and x.max() <= 1
    assert (x[0] - x[1]).abs().mean() > 1e-3  # samples differ


def test_samples_are_reproducible_with_a_generator(tiny_model):
    assert torch.equal(singan.sample(tiny_model, 2, generator=rng(3)),
                       singan.sample(tiny_model, 2, generator=rng(3)))
    assert not torch.equal(singan.sample(tiny_model, 2, generator=rng(3)),
                           singan.sample(tiny_model, 2, generator=rng(4)))


@pytest.mark.parametrize("scale_h, scale_v", [(1.5, 1.0), (1.0, 2.0), (0.75, 1.25), (2.0, 2.0)])
def test_arbitrary_sizes(tiny_model, scale_h, scale_v):
    x = singan.sample(tiny_model, 2, scale_h=scale_h, scale_v=scale_v, generator=rng())
    h, w = tiny_model.plan.shapes[-1]
    assert x.shape == (2, 3, round(h * scale_v), round(w * scale_h))


def test_start_scale_keeps_the_layout(tiny_model):
    rec = singan.reconstruct(tiny_model)
    last = len(tiny_model.scales) - 1
    from_top = singan.sample(tiny_model, 8, start_scale=0, generator=rng())
    from_last = singan.sample(tiny_model, 8, start_scale=last, generator=rng())
    # Reusing z_rec below the start scale keeps samples close to the reconstruction.
    assert (from_last - rec).pow(2).mean() < (from_top - rec).pow(2).mean()


def test_reconstruction_matches_the_real_image_size(tiny_model):
    rec = singan.reconstruct(tiny_model)
    assert rec.shape == tiny_model.scales[-1].real.shape
    assert torch.equal(rec, singan.reconstruct(tiny_model))  # no randomness


@pytest.mark.parametrize("kwargs, message", [
    (dict(num=0), "num"),
    (dict(start_scale=99), "start_scale"),
    (dict(scale_h=0.0), "scale_h"),
    (dict(start_scale=1, scale_h=1.5), "start_scale"),
])
def test_bad_arguments(tiny_model, kwargs, message):
    with pytest.raises(InputError, match=message):
        singan.sample(tiny_model, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_samples_and_a_generator_on_the_wrong_device(tiny_model):
    import copy

    on_gpu = copy.deepcopy(tiny_model).to("cuda")
    x = singan.sample(on_gpu, 2, generator=torch.Generator("cuda").manual_seed(0))
    assert x.device.type == "cuda" and x.shape == (2, 3, *tiny_model.plan.shapes[-1])
    with pytest.raises(InputError, match="generator is on cpu"):
        singan.sample(on_gpu, generator=rng())
