"""A speed baseline: one SinGAN scale trained in the style of the reference code.

Written by us from the description in SINGAN.md, in the project's shared reference folder (no
reference code is copied). It uses the project's own Generator / Discriminator and Config, so
that the only differences from `singan.recipes.singan.training.train_scale` are the ones the
speed work is about:

- `prev` is rebuilt at every D step by running all frozen coarser generators, and every
  upsampling between scales goes tensor -> uint8 numpy on the CPU (truncating) -> a MATLAB-style
  bicubic resize in numpy whose weights are recomputed on every call -> back to a float tensor
  on the device;
- `.item()` of the D losses at every D step (a host sync on a GPU);
- torch.optim.Adam with foreach=False (one small kernel per parameter and operation), gradients
  zeroed in place (set_to_none=False, the torch 1.4 behaviour the reference ran on);
- three separate backward calls per D step, D's weights left trainable during the G steps;
- the G steps reuse the `fake` of the last D step (a D forward on it each step, a reconstruction
  forward each step), as the reference does.

Network work per iteration (d_steps = g_steps = 3), the reference's count, which this file keeps:
  D steps: 3 x [D(real), G(noise, prev) with autograd, D(fake), D(x_hat) + double backward]
  G steps: 3 x [D(fake) + backward through D and the last D step's G graph, G(z_rec) + backward]
  = 6 G forwards, 12 D forwards. Ours (singan/recipes/singan/training.py) regenerates the fake
  per G step (9 G forwards, 3 of them without autograd, 12 D forwards), so this baseline is, if
  anything, slightly favoured.

Reusing one `fake` across three optimizer steps only runs because torch <= 1.4 updated weights
through `.data`, out of autograd's sight. We reproduce that by saving the fake's tensors for
backward through saved-tensor hooks, which skip autograd's in-place version check: the
gradients then see the updated weights, as on torch 1.4. That is the reference's arithmetic,
not the paper's; this file exists only to be timed. The pack hook stores a detached alias (same
storage, no copy): storing the tensor itself would make every saved output hold its own graph
alive, a reference cycle that leaked ~125 MB per iteration at 128 px.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from singan.layers import init_weights
from singan.recipes.singan.networks import Discriminator, Generator, SinGAN
from singan.settings import Config

# --- MATLAB-style bicubic resize in numpy, as the reference runs it between scales ---------------

def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel, a = -0.5 (MATLAB's 'bicubic'); zero outside [-2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


def _axis_taps(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (n_out x taps) and 0-based input indices (n_out x taps) for one axis.

    Recomputed on every call, as the reference does: part of the cost being measured.
    """
    antialias = scale < 1.0  # shrinking: stretch the kernel by 1/scale so it low-pass filters
    width = 4.0 / scale if antialias else 4.0
    # Output pixel centres (1-based) mapped into input coordinates (1-based), MATLAB's convention.
    centre = np.arange(1, n_out + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    first = np.floor(centre - width / 2.0)
    taps = int(math.ceil(width)) + 2
    position = first[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    distance = centre[:, None] - position
    weights = scale * _keys_cubic(scale * distance) if antialias else _keys_cubic(distance)
    total = weights.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    weights = weights / total
    # Mirror out-of-range taps: 0..n-1, n-1..0 (period 2n). The reference's unsigned cast at the
    # top/left border (those taps weigh 0) is not reproduced: it costs the same either way.
    index = (position - 1).astype(np.int64) % (2 * n_in)
    index = np.where(index >= n_in, 2 * n_in - 1 - index, index)
    # Taps whose weight is zero for every output pixel are dropped (the reference does too; with
    # upsampling that is 2 of 6 taps, which matters for the cost of the gather below).
    used = np.any(weights != 0, axis=0)
    return weights[:, used], index[:, used]


def matlab_imresize(image: np.ndarray, scale: float,
                    shape: tuple[int, int] | None = None) -> np.ndarray:
    """Resize an H x W x C array (uint8 or float) with MATLAB's bicubic imresize; float64 out.

    Output size ceil(n * scale) per axis unless `shape` is given (then the factors are
    out / in). Axes are done one at a time, the smaller factor first; each is a gather of the
    taps followed by a weighted sum, in float64, as the reference computes it.
    """
    sizes = image.shape[:2]
    if shape is None:
        shape = (math.ceil(sizes[0] * scale), math.ceil(sizes[1] * scale))
        factors = (scale, scale)
    else:
        factors = (shape[0] / sizes[0], shape[1] / sizes[1])
    out = image
    for axis in sorted(range(2), key=lambda a: factors[a]):
        if factors[axis] == 1.0 and sizes[axis] == shape[axis]:
            continue
        weights, index = _axis_taps(sizes[axis], shape[axis], factors[axis])
        moved = np.moveaxis(out, axis, 0)  # n_in x (other axis) x C
        gathered = moved[index]  # n_out x taps x (other axis) x C
        out = np.moveaxis((gathered * weights[:, :, None, None]).sum(axis=1), 0, axis)
    return out.astype(np.float64, copy=False)


def reference_resize(x: Tensor, scale: float, shape: tuple[int, int] | None = None) -> Tensor:
    """The reference's resize of a 1 x 3 x H x W tensor in [-1, 1]: to uint8 numpy on the CPU
    (truncating), bicubic in numpy, back to a float tensor on x's device, clamped to [-1, 1]."""
    pixels = ((x[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1) * 255
    quantised = pixels.detach().cpu().numpy().astype(np.uint8)
    resized = matlab_imresize(quantised, scale, shape)
    back = torch.from_numpy(resized.transpose(2, 0, 1)[None] / 255).to(x.device).float()
    return ((back - 0.5) * 2).clamp(-1, 1)


# --- the training loop of one scale, reference style -------------------------------------------

def _pack(t: Tensor) -> Tensor:
    return t.detach()  # an alias without the grad_fn: no reference cycle (see the docstring)


def _unpack(t: Tensor) -> Tensor:
    return t


class ReferenceStyleScale:
    """Scale `scale` of `model` (scales 0 .. scale - 1 finished and frozen) trained like the
    reference. Only for timing: nothing is appended to `model`.

    Supports the paper's algorithm only (WGAN-GP critic, zero padding, noise not padded).
    """

    def __init__(self, model: SinGAN, scale: int, real: Tensor, config: Config | None = None,
                 seed: int = 0):
        self.config = config = config or model.config
        if config.loss != "wgan_gp" or config.padding != "zero" or config.noise_padding:
            raise ValueError("the reference-style baseline covers the paper's algorithm only")
        self.model, self.scale, self.real = model, scale, real
        self.device = real.device
        self.scale_factor = model.scale_factor
        self.rng = torch.Generator(device=self.device).manual_seed(seed * 7919 + scale)
        self.cpu_rng = torch.Generator().manual_seed(seed * 7919 + scale)

        # Networks: warm start from the previous scale when the width is unchanged, as the
        # reference (it reloads the saved weights); otherwise a fresh initialisation.
        channels = config.channels(scale)
        if scale > 0 and config.channels(scale - 1) == channels:
            self.G = copy.deepcopy(model.scales[scale - 1].generator)
            self.D = copy.deepcopy(model.scales[scale - 1].discriminator)
        else:
            init_rng = torch.Generator().manual_seed(seed)  # initialised on the CPU, then moved
            self.G, self.D = Generator(channels, config), Discriminator(channels, config)
            init_weights(self.G, config.init_std, init_rng)
            init_weights(self.D, config.init_std, init_rng)
            self.G, self.D = self.G.to(self.device), self.D.to(self.device)
        self.G.train().requires_grad_(True)
        self.D.train().requires_grad_(True)

        betas = (config.beta1, config.beta2)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas,
                                      foreach=False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas,
                                      foreach=False)
        self.schedulers = [torch.optim.lr_scheduler.MultiStepLR(o, [config.lr_milestone],
                                                                config.gamma)
                           for o in (self.opt_d, self.opt_g)]

        # Reconstruction input and noise amplitude, once per scale (the reference does this at
        # its first D step; here it is outside the timed iterations).
        h, w = real.shape[-2:]
        self.noise_hw = (h, w)
        if scale == 0:
            self.z_prev = self._pad(torch.zeros_like(real))
            self.noise_amp = 1.0
            self.z_opt = None  # redrawn every iteration at the coarsest scale (reference quirk)
        else:
            rec = self.draw_concat(rec=True)
            self.noise_amp = config.noise_amp * torch.sqrt(F.mse_loss(real, rec))
            self.z_prev = self._pad(rec)
            self.z_opt = self._pad(torch.zeros(1, 3, h, w, device=self.device))

    def _pad(self, x: Tensor) -> Tensor:
        return F.pad(x, (self.config.pad,) * 4)

    def _noise(self, channels: int, shape: tuple[int, int]) -> Tensor:
        z = torch.randn(1, channels, *shape, generator=self.rng, device=self.device)
        return z.expand(1, 3, *shape)

    def draw_concat(self, rec: bool = False) -> Tensor:
        """The frozen scales' output upsampled to this scale: fresh noise (rec=False) or the
        reconstruction noise. No torch.no_grad: the frozen weights do not require gradients,
        as in the reference."""
        levels = self.model.scales[: self.scale]
        shapes = [tuple(level.real.shape[-2:]) for level in levels] + [tuple(self.real.shape[-2:])]
        x = torch.zeros(1, 3, *shapes[0], device=self.device)
        for n, level in enumerate(levels):
            if rec:
                z = F.pad(level.z_rec.expand(1, 3, -1, -1), (self.config.pad,) * 4)
            else:
                z = self._pad(self._noise(1 if n == 0 else 3, shapes[n]))
            x = self._pad(x[..., : shapes[n][0], : shapes[n][1]])
            x = level.generator((level.noise_amp * z + x).detach(), x)
            up = reference_resize(x, 1.0 / self.scale_factor)
            if up.shape[-2] < shapes[n + 1][0] or up.shape[-1] < shapes[n + 1][1]:
                up = reference_resize(x, 1.0 / self.scale_factor, shapes[n + 1])
            x = up[..., : shapes[n + 1][0], : shapes[n + 1][1]]
        return x

    def gradient_penalty(self, fake: Tensor) -> Tensor:
        # One scalar drawn on the CPU and copied to the device, as the reference.
        e = torch.rand(1, 1, generator=self.cpu_rng).expand(self.real.shape).to(self.device)
        x_hat = (e * self.real + (1 - e) * fake).detach().requires_grad_(True)
        out = self.D(x_hat)
        (grad,) = torch.autograd.grad(out, x_hat, grad_outputs=torch.ones_like(out),
                                      create_graph=True, retain_graph=True)
        return ((grad.norm(2, dim=1) - 1) ** 2).mean() * self.config.lambda_grad

    def iteration(self) -> None:
        """One reference-style iteration: d_steps critic steps, then g_steps generator steps."""
        config, real = self.config, self.real
        if self.scale == 0:
            self.z_opt = self._pad(self._noise(1, self.noise_hw))
            noise_ = self._pad(self._noise(1, self.noise_hw))
        else:
            noise_ = self._pad(torch.randn(1, 3, *self.noise_hw, generator=self.rng,
                                           device=self.device))
        fake = None
        for _ in range(config.d_steps):
            self.opt_d.zero_grad(set_to_none=False)
            err_real = -self.D(real).mean()
            err_real.backward(retain_graph=True)
            self.d_x = -err_real.item()
            prev = self._pad(self.draw_concat()) if self.scale > 0 else self.z_prev
            noise = noise_ if self.scale == 0 else self.noise_amp * noise_ + prev
            # Hooks: this graph must survive the G steps' in-place weight updates.
            with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
                fake = self.G(noise.detach(), prev)
            out = self.D(fake.detach())
            err_fake = out.mean()
            err_fake.backward(retain_graph=True)
            self.d_gz = out.mean().item()
            self.gradient_penalty(fake).backward()
            self.opt_d.step()

        rec_input = self.noise_amp * self.z_opt + self.z_prev
        for _ in range(config.g_steps):
            self.opt_g.zero_grad(set_to_none=False)
            err_g = -self.D(fake).mean()
            err_g.backward(retain_graph=True)
            rec = config.alpha * F.mse_loss(self.G(rec_input.detach(), self.z_prev), real)
            rec.backward(retain_graph=True)
            self.opt_g.step()
        for scheduler in self.schedulers:
            scheduler.step()

    def run(self, niter: int, on_iteration: Callable[[int], None] | None = None) -> None:
        """`niter` iterations; on_iteration(i) after each (1-based), e.g. to take a timestamp."""
        for i in range(1, niter + 1):
            self.iteration()
            if on_iteration is not None:
                on_iteration(i)
