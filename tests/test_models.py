"""Networks and the SinGAN module: parameter counts, receptive field, save/load round trips."""

from __future__ import annotations

import io
import json

import pytest
import torch

import singan
from singan.base import scale_file_name
from singan.errors import InputError
from singan.recipes.singan.networks import Discriminator, Generator, SinGAN


@pytest.mark.parametrize("scale, params", [(0, 29_763), (4, 114_819), (8, 450_819)])
def test_generator_parameters_per_scale(scale, params):
    cfg = singan.config()
    generator = Generator(cfg.channels(scale), cfg)
    assert sum(p.numel() for p in generator.parameters()) == params


def test_channels_double_every_four_scales_up_to_128():
    cfg = singan.config()
    assert [cfg.channels(n) for n in range(12)] == [32] * 4 + [64] * 4 + [128] * 4


def test_receptive_field_is_11():
    cfg = singan.config()
    critic = Discriminator(32, cfg).eval()
    x = torch.randn(1, 3, 31, 31, requires_grad=True)
    out = critic(x)
    assert out.shape[-2:] == (21, 21)  # (H - 10) x (W - 10) patch map
    out[0, 0, 10, 10].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 11
    assert cols.max() - cols.min() + 1 == 11


def test_generator_output_has_the_unpadded_size_and_adds_prev():
    cfg = singan.config()
    generator = Generator(32, cfg).eval()
    prev = torch.rand(2, 3, 30, 40)  # 20 x 30 image with its 5-px border
    out = generator(torch.zeros_like(prev), prev)
    assert out.shape == (2, 3, 20, 30)
    residual = out - prev[..., 5:25, 5:35]
    assert residual.abs().max() <= 1  # tanh residual


def test_one_file_per_scale_plain_tensors(tiny_model, tmp_path):
    tiny_model.save(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json"] + [scale_file_name(i) for i in range(tiny_model.num_scales)]
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["config"]["niter"] == tiny_model.config.niter
    assert [list(s) for s in meta["plan"]["shapes"]] == [list(s) for s in tiny_model.plan.shapes]
    state = torch.load(tmp_path / "scale_00.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert {"real", "z_rec", "noise_amp"} <= set(state)


def test_file_object_round_trip(tiny_model):
    meta = io.BytesIO(tiny_model.metadata_bytes())
    scales = [io.BytesIO(tiny_model.level_bytes(i)) for i in range(len(tiny_model.scales))]
    loaded = singan.load_files(meta, scales)
    assert isinstance(loaded, SinGAN)
    rng = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(singan.sample(loaded, 2, generator=rng()),
                       singan.sample(tiny_model, 2, generator=rng()))


def test_partly_saved_model_loads_its_finished_scales(tiny_model, tmp_path):
    tiny_model.save(tmp_path)
    (tmp_path / scale_file_name(tiny_model.num_scales - 1)).unlink()
    partial = singan.load(tmp_path)
    assert len(partial.scales) == tiny_model.num_scales - 1 and not partial.is_complete
    assert singan.sample(partial).shape[-2:] == tiny_model.plan.shapes[-2]


def test_bad_model_folders_give_clear_errors(tiny_model, tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        singan.load(tmp_path)
    tiny_model.save(tmp_path)
    (tmp_path / "scale_01.pt").write_bytes(b"torn")
    with pytest.raises(InputError, match="scale_01.pt cannot be loaded"):
        singan.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        singan.load(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_portable_between_cpu_and_cuda(tiny_model, tmp_path):
    tiny_model.save(tmp_path)
    on_gpu = singan.load(tmp_path, device="cuda")
    assert on_gpu.device.type == "cuda"
    x = singan.sample(on_gpu, 2, generator=torch.Generator("cuda").manual_seed(0))
    assert x.device.type == "cuda" and x.shape[0] == 2
    on_gpu.save(tmp_path / "again")
    back = singan.load(tmp_path / "again", device="cpu")
    assert torch.equal(back.scales[0].generator.head.conv.weight,
                       tiny_model.scales[0].generator.head.conv.weight)
