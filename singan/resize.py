"""MATLAB-compatible bicubic resize on the device, batched.

The reference SinGAN resizes with a numpy port of MATLAB's `imresize` (bicubic, antialiased when
shrinking) on the CPU, after quantising to uint8. Its pyramid and its upsampling between scales
depend on that exact kernel, so we reproduce the arithmetic (SINGAN.md section 2, in the
project's shared reference folder) but express each axis as a dense weight matrix applied with
one matmul on the tensor's own device.
Two reference quirks are deliberately not reproduced: the taps beyond the top/left edge are
mirrored as MATLAB does (the reference casts their negative indices to unsigned integers before
weighting them, so they weigh 0 and the rest is renormalised), and antialiasing is decided per
axis.
"""

from __future__ import annotations

import functools
import math
import operator

import torch
from torch import Tensor

# Support of the Keys cubic kernel (it is zero outside [-2, 2]).
_CUBIC_WIDTH = 4.0


def _cubic(x: Tensor) -> Tensor:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


def _weight_matrix_cpu(in_len: int, out_len: int, scale: float, antialias: bool) -> Tensor:
    """The (out_len x in_len) float64 matrix that resizes one axis; each row sums to 1."""
    if antialias:
        # Shrinking: stretch the kernel by 1/scale so that it also low-pass filters.
        width = _CUBIC_WIDTH / scale

        def kernel(t: Tensor) -> Tensor:
            return scale * _cubic(scale * t)
    else:
        width = _CUBIC_WIDTH
        kernel = _cubic

    # Centre of each output pixel (1-based) in input coordinates (1-based), as MATLAB does.
    out_pos = torch.arange(1, out_len + 1, dtype=torch.float64)
    centre = out_pos / scale + 0.5 * (1.0 - 1.0 / scale)
    left = torch.floor(centre - width / 2.0)
    taps = int(math.ceil(width)) + 2
    # 0-based input index of every tap; the "- 1" converts MATLAB's 1-based positions.
    index = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :] - 1.0
    weights = _tap_weights(kernel, centre, index)

    # Mirror out-of-range taps with period 2n: 0..n-1 then n-1..0 (edge pixel repeated).
    index = index.to(torch.int64).remainder(2 * in_len)
    index = torch.where(index >= in_len, 2 * in_len - 1 - index, index)

    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    rows = torch.arange(out_len)[:, None].expand(out_len, taps)
    # Several taps can land on the same pixel after mirroring: accumulate, do not overwrite.
    matrix.index_put_((rows.reshape(-1), index.reshape(-1)), weights.reshape(-1), accumulate=True)
    return matrix


def _tap_weights(kernel, centre: Tensor, index: Tensor) -> Tensor:
    """The weight of each tap (0-based input `index`, one row per output pixel) for output pixels
    centred at `centre` (1-based input coordinates); each row normalised to sum 1."""
    weights = kernel(centre[:, None] - index - 1.0)
    total = weights.sum(dim=1, keepdim=True)
    total[total == 0] = 1.0  # cannot happen with enough taps; guards against dividing by zero
    return weights / total


@functools.lru_cache(maxsize=512)
def _weight_matrix(
    in_len: int,
    out_len: int,
    scale: float,
    antialias: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    # Cached because training resizes between the same sizes thousands of times; built once in
    # float64 on the CPU, then kept on the device in the working dtype. Callers must not modify it.
    # Built outside inference mode even when first asked for inside it: an inference tensor in
    # the cache would break a later call that needs gradients.
    with torch.inference_mode(False):
        matrix = _weight_matrix_cpu(in_len, out_len, scale, antialias)
        return matrix.to(device=device, dtype=dtype)


def _check_scale(scale: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or a (height, width) pair, got {scale!r}")
        pair = (float(scale[0]), float(scale[1]))
    else:
        try:
            value = float(scale)
        except (TypeError, ValueError):
            message = f"scale must be a number or a (height, width) pair, got {scale!r}"
            raise ValueError(message) from None
        pair = (value, value)
    for value in pair:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"scale factors must be finite and positive, got {scale!r}")
    return pair


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        if len(shape) != 2:
            raise TypeError
        pair = (operator.index(shape[0]), operator.index(shape[1]))
    except TypeError:
        message = f"shape must be a (height, width) pair of integers, got {shape!r}"
        raise ValueError(message) from None
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    return pair


def imresize(
    x: Tensor,
    scale: float | tuple[float, float] | None = None,
    shape: tuple[int, int] | None = None,
) -> Tensor:
    """Resize a batch of images with MATLAB's bicubic `imresize` (antialiased when shrinking).

    x: N x C x H x W floating-point tensor, any value range (no clamping: bicubic overshoots).
    scale: one factor for both axes or a (height, width) pair; the output size is
        ceil(size * factor) per axis.
    shape: the output (height, width); alone, the factors are output / input per axis.
    Given both, `scale` shapes the kernel and `shape` is the output size (the pyramid uses this
    to keep a side that float error would round up past max_size).

    Returns a new tensor on x's device, in x's dtype. Axes are resized one at a time, the one
    with the smaller factor first; an axis with factor exactly 1 and unchanged size is left alone.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"imresize expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"imresize expects an N x C x H x W tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"imresize expects a floating-point tensor, got {x.dtype}")
    in_size = (x.shape[-2], x.shape[-1])
    if in_size[0] < 1 or in_size[1] < 1:
        raise ValueError(f"cannot resize an empty image of size {in_size[0]}x{in_size[1]}")
    if scale is None and shape is None:
        raise ValueError("imresize needs a scale factor or an output shape")

    out_size = _check_shape(shape) if shape is not None else None
    if scale is not None:
        factors = _check_scale(scale)
    else:
        assert out_size is not None
        factors = (out_size[0] / in_size[0], out_size[1] / in_size[1])
    if out_size is None:
        # Plain ceil of the float product, like the reference (its sizes carry the float error).
        out_size = (math.ceil(in_size[0] * factors[0]), math.ceil(in_size[1] * factors[1]))

    out = x
    # Stable sort: the smaller factor first, height before width on ties.
    for axis in sorted(range(2), key=lambda a: factors[a]):
        factor, n_in, n_out = factors[axis], in_size[axis], out_size[axis]
        if factor == 1.0 and n_in == n_out:
            continue
        matrix = _weight_matrix(n_in, n_out, factor, factor < 1.0, x.device, x.dtype)
        if axis == 0:
            out = torch.matmul(matrix, out)  # (H' x H) @ (... x H x W)
        else:
            out = torch.matmul(out, matrix.t())  # (... x H x W) @ (W x W')
    # Always hand back a new tensor, so that callers may modify the result in place.
    return out.clone() if out is x else out
