"""Discriminator substitutes: losses on the patch distribution of one image.

The seed study (a course project replicating SinGAN) asks whether a SinGAN scale can be trained
without its patch discriminator: the generator is trained instead to make the distribution of
its output's small patches match the real image's. This module gives three such losses between a
generated image `fake` (which carries gradients) and the real image of the same scale `real`
(which does not):

- `frechet_patch_loss`: the Frechet (FID) distance between Gaussians fitted to the two patch
  sets: matches the mean and covariance of the patches, not the patches themselves.
- `nn_patch_loss` (NNPL): each fake patch is pulled towards its nearest real patch: every fake
  patch should look like some patch of the real image (but nothing asks that all real patches
  are used, so it rewards copying and tolerates mode collapse).
- `aligned_nn_patch_loss` (ANNPL): NNPL after an affine map that gives the fake patches the real
  patches' mean and covariance, so that the nearest-patch search compares structure rather than
  brightness and contrast; it is blind to a global gain and to per-channel offsets of the fake.

A patch is a size x size x 3 block taken at every position (stride 1), flattened into a vector
of d = 3 * size**2 values. All three losses are divided by d, so that they read as a per-element
squared error in [-1, 1] pixel units, comparable to the reconstruction loss (a per-pixel MSE)
they are added to.

Memory: a 250 x 250 scale has about 59,000 patches of 147 values on each side; the full
59,000 x 59,000 distance matrix of the nearest-patch search would take 14 GB. The search runs
without gradients on blocks of at most `chunk` fake x (BLOCK_FLOATS / chunk) real patches
(256 MB in float32), and only the final squared error against the chosen real patches is
differentiated. The covariances are d x d (tiny); the patch matrices are about 35 MB each.

Everything is pure PyTorch on the tensors' device (CPU or CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from singan.errors import InputError

BLOCK_FLOATS = 4096 * 16384  # the most distances computed at once in the nearest-patch search
EIG_EPS = 1e-12  # eigenvalues of M below this count as 0 in Tr sqrt(M) (float64, pixel units^4)
ALIGN_EPS = 1e-5  # covariance regulariser of the ANNPL map, relative to the mean variance
VARIANCE_FLOOR = 1e-8  # mean patch variance below which an image counts as constant (ANNPL)


def patches(x: Tensor, size: int) -> Tensor:
    """All size x size patches of the B x C x H x W image `x` at stride 1, as the rows of an
    (N, C*size*size) matrix (N = B x positions; each row is channel-major, like F.unfold)."""
    if x.dim() != 4:
        raise InputError(f"an image must be B x C x H x W, got shape {tuple(x.shape)}")
    if size < 1:
        raise InputError(f"the patch size must be at least 1, got {size}")
    if min(x.shape[-2:]) < size:
        raise InputError(f"the image ({x.shape[-2]}x{x.shape[-1]}) is smaller than the "
                         f"{size}x{size} patches")
    columns = F.unfold(x, size)  # B x d x positions
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


def _pair(fake: Tensor, real: Tensor, size: int, *, minimum: int = 1) -> tuple[Tensor, Tensor]:
    """The patch rows of fake and real (detached: it is the target), checked to be comparable."""
    a, b = patches(fake, size), patches(real.detach(), size)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"fake and real have different channel counts ({fake.shape[1]} and "
                         f"{real.shape[1]})")
    if min(len(a), len(b)) < minimum:
        raise InputError(f"the images need at least {minimum} patches of {size}x{size} each "
                         f"(fake has {len(a)}, real {len(b)})")
    return a, b


def _moments(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of the rows, in float64 (the eigen arithmetic needs it)."""
    rows = rows.double()
    mean = rows.mean(dim=0)
    centred = rows - mean
    return mean, centred.T @ centred / (len(rows) - 1)


def _sym_power(s: Tensor, power: float) -> Tensor:
    """s**power for a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    values, vectors = torch.linalg.eigh(s)
    return (vectors * values.clamp(min=0) ** power) @ vectors.T


def frechet_patch_loss(fake: Tensor, real: Tensor, size: int = 7) -> Tensor:
    """Frechet distance between Gaussians fitted to the size x size patches of fake and real,
    divided by the patch dimension d = 3 * size**2 (a scalar in the input's dtype):

        (||mu_f - mu_r||^2 + Tr(S_f + S_r - 2 (S_r^1/2 S_f S_r^1/2)^1/2)) / d

    Differentiable in `fake`. S_r^1/2 needs no gradient; Tr sqrt(M) is the sum of the square
    roots of M's eigenvalues, whose gradient (V diag(g) V^T) stays finite when eigenvalues repeat,
    unlike that of a matrix square root; eigenvalues below EIG_EPS are clamped so that the
    derivative of the square root stays finite too (a constant fake has M = 0).
    """
    a, b = _pair(fake, real, size, minimum=2)
    mu_f, s_f = _moments(a)
    with torch.no_grad():
        mu_r, s_r = _moments(b)
        root_r = _sym_power(s_r, 0.5)
    m = root_r @ s_f @ root_r
    m = (m + m.T) / 2  # symmetric in exact arithmetic; eigvalsh reads only one triangle
    trace_root = torch.linalg.eigvalsh(m).clamp(min=EIG_EPS).sqrt().sum()
    distance = (mu_f - mu_r).square().sum() + s_f.trace() + s_r.trace() - 2 * trace_root
    return (distance / a.shape[1]).to(fake.dtype)


def _nearest(queries: Tensor, candidates: Tensor, chunk: int) -> Tensor:
    """Index of the nearest candidate row for each query row (squared Euclidean distance),
    searched in blocks of at most chunk x (BLOCK_FLOATS // chunk) distances."""
    # At least float32: a half-precision distance expansion would pick wrong neighbours.
    dtype = torch.promote_types(queries.dtype, torch.float32)
    # Centring both sets on the candidates' mean leaves the distances unchanged and shrinks the
    # norms, and so the rounding error of the expansion below.
    centre = candidates.mean(dim=0)
    queries, candidates = queries.to(dtype) - centre, candidates.to(dtype) - centre
    norms = candidates.square().sum(dim=1)
    width = max(1, BLOCK_FLOATS // chunk)  # candidates per block
    index = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    for first in range(0, len(queries), chunk):
        q = queries[first:first + chunk]
        best = torch.full((len(q),), float("inf"), dtype=dtype, device=q.device)
        best_index = torch.zeros(len(q), dtype=torch.long, device=q.device)
        for start in range(0, len(candidates), width):
            c = candidates[start:start + width]
            # ||q - c||^2 = ||q||^2 + ||c||^2 - 2 q.c, and ||q||^2 is the same for every
            # candidate of a query: it cannot change the argmin, so it is left out.
            scores = torch.addmm(norms[start:start + width], q, c.T, alpha=-2)
            value, where = scores.min(dim=1)
            better = value < best
            best = torch.where(better, value, best)
            best_index = torch.where(better, where + start, best_index)
        index[first:first + chunk] = best_index
    return index


def _nn_loss(queries: Tensor, candidates: Tensor, chunk: int) -> Tensor:
    """Mean squared difference between each query row and its nearest candidate row."""
    if chunk < 1:
        raise InputError(f"chunk must be at least 1, got {chunk}")
    with torch.no_grad():
        index = _nearest(queries.detach(), candidates.detach(), chunk)
    # The loss itself is computed directly, with gradients: a copied patch gives exactly 0.
    return (queries - candidates[index]).square().mean()


def nn_patch_loss(fake: Tensor, real: Tensor, size: int = 7, chunk: int = 4096) -> Tensor:
    """NNPL: the mean over fake patches of the squared distance to the nearest real patch,
    divided by d = 3 * size**2 (a per-element MSE against the nearest real patch).

    The nearest patches are searched without gradients, `chunk` fake patches at a time (see the
    module docstring for the memory bound); the gradient flows through the fake patches only.
    An image against itself gives exactly 0.
    """
    a, b = _pair(fake, real, size)
    return _nn_loss(a, b.to(a.dtype), chunk)


def aligned_nn_patch_loss(fake: Tensor, real: Tensor, size: int = 7,
                          chunk: int = 4096) -> Tensor:
    """ANNPL: NNPL after mapping the fake patches onto the real patches' mean and covariance.

    Each fake patch vector x becomes x' = S_r^1/2 S_f^-1/2 (x - mu_f) + mu_r (symmetric square
    roots; both covariances regularised with ALIGN_EPS * trace(S) / d * I), and NNPL is taken
    between x' and the real patches. The loss is therefore invariant to x -> a * x + b for a
    scalar gain a > 0 and any per-channel offset b of the fake image (the regulariser scales with
    the covariance, so the map absorbs the gain exactly). It is NOT invariant to per-channel
    gains: the symmetric whitening S_f^-1/2 mixes the channels, so scaling one channel changes
    the mapped patches' structure, not only their scale.
    """
    a, b = _pair(fake, real, size, minimum=2)
    # The map (A and mu_f) is computed without gradients: the backward of eigh divides by the
    # gaps between eigenvalues and explodes where they repeat, as they do for the patches of a
    # freshly initialised generator. The gradient flows through the patch vectors x only, as
    # if the map were a fixed affine transform.
    with torch.no_grad():
        mu_f, s_f = _moments(a)
        mu_r, s_r = _moments(b)
        eye = torch.eye(a.shape[1], dtype=s_f.dtype, device=s_f.device)

        def regularised(s: Tensor) -> Tensor:
            # Relative to the mean variance, so that a gain scales S and its regulariser alike;
            # the floor only matters for a (nearly) constant image, whose S would be singular.
            scale = (s.trace() / a.shape[1]).clamp(min=VARIANCE_FLOOR)
            return s + ALIGN_EPS * scale * eye

        transform = _sym_power(regularised(s_r), 0.5) @ _sym_power(regularised(s_f), -0.5)
    # x' = A (x - mu_f) + mu_r, as rows. Centring first keeps the float32 product accurate when
    # A is large (a nearly constant fake is whitened by a huge S_f^-1/2).
    aligned = (a - mu_f.to(a.dtype)) @ transform.T.to(a.dtype) + mu_r.to(a.dtype)
    return _nn_loss(aligned, b.to(a.dtype), chunk)
