"""singan.train_many: K images of one plan in one set of kernels give each image the model it
gets alone; one image's trouble stays its own; unequal plans and non-batching recipes are
refused."""

from __future__ import annotations

import pytest
import torch

import singan
from singan.data.examples import pebbles
from singan.errors import InputError
from tests.conftest import as_8bit, tiny_config

SEEDS = (3, 11, 7)


class Logs(singan.Callback):
    def __init__(self):
        self.entries, self.ends = [], []

    def on_iteration(self, log):
        self.entries.append(log)

    def on_scale_end(self, model, scale):
        self.ends.append(scale)


def images(count: int = 3, size: tuple[int, int] = (28, 36)) -> list[torch.Tensor]:
    return [as_8bit(pebbles(*size, seed=10 + i)) for i in range(count)]


def config(**overrides) -> singan.Config:
    """3 scales, 20 iterations each."""
    return tiny_config(**{"num_scales": 3, "niter": 20, "lr_milestone": 16, **overrides})


def alone_and_together(cfg: singan.Config, photos: list[torch.Tensor]):
    alone = []
    for photo, seed in zip(photos, SEEDS):
        logs = Logs()
        alone.append((singan.train(photo, cfg, device="cpu", dtype=torch.float64, seed=seed,
                                   callbacks=[logs]), logs))
    logs = [Logs() for _ in photos]
    together = singan.train_many(photos, cfg, seeds=SEEDS[:len(photos)], device="cpu",
                                 dtype=torch.float64, callbacks=[[log] for log in logs])
    return alone, list(zip(together, logs))


def assert_same(a: tuple, b: tuple, tolerance: float = 1e-8) -> None:
    (model_a, logs_a), (model_b, logs_b) = a, b
    assert [(e.scale, e.iteration) for e in logs_a.entries] == \
        [(e.scale, e.iteration) for e in logs_b.entries]
    for x, y in zip(logs_a.entries, logs_b.entries):
        assert (x.d_real, x.d_fake, x.gradient_penalty, x.g_adv, x.reconstruction) == \
            pytest.approx((y.d_real, y.d_fake, y.gradient_penalty, y.g_adv, y.reconstruction),
                          abs=tolerance)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=tolerance, msg=key)
    rng = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(singan.sample(model_a, 2, generator=rng()),
                               singan.sample(model_b, 2, generator=rng()), rtol=0,
                               atol=tolerance)


@pytest.mark.parametrize("loss", ["wgan_gp", "nnpl"])
def test_images_trained_together_get_the_models_they_get_alone(loss):
    # 8 iterations with the learning-rate drop at 6: every part of a step, the drop included.
    cfg = config(loss=loss, niter=8 if loss == "wgan_gp" else 6, lr_milestone=6)
    alone, together = alone_and_together(cfg, images())
    for a, b in zip(alone, together, strict=True):
        assert a[1].ends == b[1].ends == [0, 1, 2]
        assert_same(a, b)
    # The images differ, and so do their models: nothing was shared.
    assert not torch.equal(together[0][0].scales[2].generator.tail.weight,
                           together[1][0].scales[2].generator.tail.weight)


def test_z_star_fixed_and_warm_started_widths_batch_too():
    """Widths that double (fresh networks) and stay (warm start), and z* fixed (not the default)."""
    cfg = config(num_scales=4, nfc_double_every=2, niter=8, z_star="fixed")
    alone, together = alone_and_together(cfg, images(2))
    for a, b in zip(alone, together, strict=True):
        assert_same(a, b)


def test_float32_gradients_of_a_batch_match_each_image_alone():
    """In float32 one step's gradients agree (not many steps: see test_train)."""
    from singan.layers import init_weights, stack, trainable
    from singan.recipes.singan.networks import Generator
    from singan.streams import scale_generator

    cfg = config()
    reals = [x.float() for x in images(2)]
    singles = []
    for seed in SEEDS[:2]:
        generator = Generator(8, cfg)
        init_weights(generator, cfg.init_std, scale_generator(seed, 0, "cpu"))
        singles.append(generator.train())
    batched = stack(singles, Generator(8, cfg, images=2)).train()
    z = [torch.randn(1, 3, 38, 46, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    prev = torch.zeros(1, 3, 38, 46)
    alone = []
    for generator, noise, real in zip(singles, z, reals):
        loss = ((generator(noise, prev) - real) ** 2).mean()
        alone.append(torch.autograd.grad(loss, trainable(generator)))
    out = batched(torch.cat(z, dim=1), torch.cat([prev, prev], dim=1))
    loss = ((out - torch.cat(reals, dim=1)) ** 2).reshape(2, -1).mean(dim=1).sum()
    together = torch.autograd.grad(loss, trainable(batched))
    for mine, *theirs in zip(together, *alone):
        torch.testing.assert_close(mine, torch.cat(theirs), rtol=1e-5, atol=1e-6)


def test_an_image_whose_losses_become_nan_fails_alone():
    photos = images()
    poisoned = photos[1].clone()
    poisoned[..., 5, 5] = float("nan")
    cfg = config(niter=10)
    logs = [Logs() for _ in photos]
    models = singan.train_many([photos[0], poisoned, photos[2]], cfg, seeds=SEEDS,
                               device="cpu", dtype=torch.float64,
                               callbacks=[[log] for log in logs])
    assert models[1].failure == "losses became non-finite at scale 0, iteration 5"
    assert len(models[1].scales) == 0 and logs[1].ends == [] and logs[1].entries == []
    assert [m.failure for m in (models[0], models[2])] == [None, None]
    alone, _ = alone_and_together(cfg, [photos[0]])
    assert_same(alone[0], (models[0], logs[0]))
    with pytest.raises(singan.Diverged, match="non-finite at scale 0"):
        singan.train(poisoned, cfg, device="cpu", seed=SEEDS[1])


def test_images_of_different_plans_are_refused_with_which_differ():
    photos = [*images(2), as_8bit(pebbles(40, 48, seed=1))]
    with pytest.raises(InputError, match=r"images 0, 1 \(28x36: 3 levels, finest 22x28\); "
                                         r"image 2 \(40x48: 3 levels, finest 24x28\)"):
        singan.train_many(photos, config(max_size=28), device="cpu")


def test_consingan_trains_one_image_at_a_time():
    cfg = singan.config(recipe="consingan", num_scales=3, nfc=8, niter=2)
    with pytest.raises(InputError, match="recipe 'consingan' trains one image at a time"):
        singan.train_many(images(2), cfg, device="cpu")


def test_resume_a_batch_and_refuse_uneven_progress(tmp_path):
    cfg = config(niter=4)
    photos = images(2)
    full = singan.train_many(photos, cfg, seeds=SEEDS[:2], device="cpu", dtype=torch.float64)
    partial = [singan.train(p, cfg, device="cpu", dtype=torch.float64, seed=s)
               for p, s in zip(photos, SEEDS)]
    for model in partial:
        del model.scales[1:]
    resumed = singan.train_many(photos, resume=partial, device="cpu")
    for a, b in zip(full, resumed):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-8)
    del partial[0].scales[1:], partial[1].scales[2:]  # resumed in place: cut back unevenly
    with pytest.raises(InputError, match="finished different numbers of levels"):
        singan.train_many(photos, resume=partial, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_matches_each_image_alone():
    """On the GPU too (float64; cuDNN may pick other algorithms for grouped convolutions)."""
    cfg = config(niter=6)
    photos = [x.cuda() for x in images(2)]
    alone = [singan.train(p, cfg, device="cuda", dtype=torch.float64, seed=s)
             for p, s in zip(photos, SEEDS)]
    together = singan.train_many(photos, cfg, seeds=SEEDS[:2], device="cuda",
                                 dtype=torch.float64)
    for a, b in zip(alone, together):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
