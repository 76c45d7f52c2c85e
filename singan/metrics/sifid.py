"""SIFID, the single-image FID of the SinGAN paper (SINGAN.md section 6, in the project's
shared reference folder).

The Frechet distance between the Inception-v3 features of two images, where every spatial
position of the feature map is one sample. Features come from the stem of torchvision's ImageNet
Inception-v3 (only the first few convolutions), rebuilt here with torchvision's key names so
that its checkpoint loads directly and torchvision is not needed:

    dims=64:  Conv2d_1a_3x3 (stride 2) -> Conv2d_2a_3x3 -> Conv2d_2b_3x3 (padding 1)
              the layer the official script uses, and what published SIFID numbers report;
    dims=192: ... -> max-pool 3/2 -> Conv2d_3b_1x1 -> Conv2d_4a_3x3
              the layer the paper's text names.

Differences from the official script, on purpose: images are paired by the caller (the script
pairs files by unsorted glob order), and pixel values are taken as they are (the script divides
PNG values, already in [0, 1], by 255 a second time). The matrix square root is computed through
a symmetric eigendecomposition in float64 instead of scipy's `sqrtm`: the trace it needs is the
same, and the result is real by construction where the reference keeps the real part.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singan.errors import InputError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's ImageNet checkpoint
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
WEIGHTS_ENV = "SINGAN_INCEPTION_WEIGHTS"  # a local path to that file
DIMS = (64, 192)
EPS = 1e-6  # the reference's diagonal offset when the square root is not finite


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, as in torchvision's Inception-v3."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs: Any):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionStem(nn.Module):
    """The first five convolutions of Inception-v3, in eval mode, returning dims-channel maps."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor, dims: int = 64) -> Tensor:
        """Features of images in [-1, 1] (N x 3 x H x W): N x dims x h x w."""
        if dims not in DIMS:
            raise InputError(f"dims must be one of {DIMS}, got {dims!r}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        if dims == 64:
            return x
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        return self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))


def load_stem(weights: str | os.PathLike | IO[bytes] | dict | None = None, *,
              device: str | torch.device | None = None, download: bool = True) -> InceptionStem:
    """The Inception stem with torchvision's ImageNet weights (or those given).

    `weights` is a state dict, a path or a binary file: the full torchvision checkpoint or just
    the stem's keys. When None, the file is looked for in this order: the path in the
    SINGAN_INCEPTION_WEIGHTS environment variable, torch hub's cache
    (`torch.hub.get_dir()/checkpoints`), then downloaded there from its standard location with
    its hash checked (`download=False` skips that). Raises InputError when nothing is found, or
    when the file does not hold the stem's keys with the right shapes.
    """
    name = "the Inception-v3 weights"
    if weights is None:
        weights = find_weights(download=download)
    if isinstance(weights, (str, os.PathLike)):
        name = os.fspath(weights)
        if not os.path.isfile(weights):
            raise InputError(f"{name}: no such file (Inception-v3 weights for SIFID)")
    if not isinstance(weights, dict):
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise InputError(f"{name}: not a PyTorch checkpoint ({err})") from err
    stem = InceptionStem()
    expected = stem.state_dict()
    problems = [k for k in expected if k not in weights]
    problems += [f"{k} has shape {tuple(weights[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if problems:
        shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"{name}: not torchvision's Inception-v3 weights (missing or wrong: {shown})")
    stem.load_state_dict({k: weights[k] for k in expected})
    return stem.to(device or "cpu")


def find_weights(*, download: bool = True) -> str:
    """The path of torchvision's Inception-v3 checkpoint on this machine, downloading it to torch
    hub's cache when allowed. Raises InputError, saying how to provide it, when not found."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        if not os.path.isfile(env):
            raise InputError(f"{WEIGHTS_ENV}={env}: no such file")
        return env
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if cached.is_file():
        return str(cached)
    if download:
        try:
            # weights_only: torch hub's default (False) would unpickle whatever was downloaded,
            # and the 8-hex-digit hash prefix is no protection against a crafted file.
            torch.hub.load_state_dict_from_url(WEIGHTS_URL, map_location="cpu", check_hash=True,
                                               progress=False, weights_only=True)
            return str(cached)
        except Exception as err:  # noqa: BLE001 - offline, proxy, hash mismatch: one message
            reason = f"the download from {WEIGHTS_URL} failed ({type(err).__name__}: {err})"
    else:
        reason = "downloading is off"
    raise InputError(
        f"no Inception-v3 weights for SIFID: {reason}. Get {WEIGHTS_FILE} from {WEIGHTS_URL} "
        f"on a machine with internet access, then pass it (--inception-weights PATH), set "
        f"{WEIGHTS_ENV}=PATH, or copy it to {cached}")


def features(stem: InceptionStem, images: Tensor, dims: int = 64) -> Tensor:
    """N x (h*w) x dims float64 feature samples of images in [-1, 1], one per spatial position."""
    device = next(stem.parameters()).device
    with torch.no_grad():
        maps = stem(images.to(device=device, dtype=torch.float32), dims)
    return maps.flatten(2).transpose(1, 2).double()


def statistics(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of a (n x d) sample matrix (rows are samples)."""
    mu = samples.mean(0)
    centred = samples - mu
    return mu, centred.T @ centred / (samples.shape[0] - 1)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), in float64.

    Tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of sqrt(S1) S2 sqrt(S1),
    a symmetric PSD matrix with the same eigenvalues as S1 S2. As in the reference, a non-finite
    result is computed again with EPS added to both diagonals.
    """
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    diff = mu1 - mu2

    def trace_sqrt(a: Tensor, b: Tensor) -> Tensor:
        values, vectors = torch.linalg.eigh(a)
        root_a = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
        inner = root_a @ b @ root_a
        return torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()

    tr_covmean = trace_sqrt(sigma1, sigma2)
    if not torch.isfinite(tr_covmean):
        offset = EPS * torch.eye(sigma1.shape[0], dtype=sigma1.dtype, device=sigma1.device)
        tr_covmean = trace_sqrt(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def sifid_each(real: Tensor, fakes: Tensor, *, dims: int = 64,
               stem: InceptionStem | None = None, weights=None) -> list[float]:
    """SIFID of each fake (N x 3 x H' x W') against `real` (1 x 3 x H x W), images in [-1, 1].

    Fakes may have another size than the real image (no resizing, as in the reference). The
    features of all fakes are computed in one batch on the stem's device.
    """
    stem = stem or load_stem(weights, device=real.device)
    if real.dim() == 3:
        real = real.unsqueeze(0)
    if fakes.dim() == 3:
        fakes = fakes.unsqueeze(0)
    for what, x in (("real", real), ("fake", fakes)):
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"sifid: {what} must be N x 3 x H x W, got {tuple(x.shape)}")
    mu_real, sigma_real = statistics(features(stem, real, dims)[0])
    return [frechet_distance(mu_real, sigma_real, *statistics(f))
            for f in features(stem, fakes, dims)]


def sifid(real: Tensor, fake: Tensor, *, dims: int = 64, weights=None,
          stem: InceptionStem | None = None) -> float:
    """SIFID between `real` and `fake` (images in [-1, 1], the reference's [0, 1] mapped by
    2x - 1); for a batch of fakes, the mean over them. `weights` as for `load_stem`; pass a
    loaded `stem` to reuse it across calls."""
    values = sifid_each(real, fake, dims=dims, stem=stem, weights=weights)
    return sum(values) / len(values)
