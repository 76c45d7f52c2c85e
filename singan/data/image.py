"""Reading and writing images as tensors in [-1, 1].

Images travel through the project as float32 tensors of shape 1 x 3 x H x W with values in
[-1, 1], the reference SinGAN's convention (8-bit value x maps to x / 255 * 2 - 1).

Loading is defensive because the input is whatever a user points us at: every failure is an
`InputError` whose message is one line, "<name>: <problem>"; the pixel count is checked from
the header before any pixel is decoded; truncated files are rejected rather than padded.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import torch
from PIL import Image

from singan.data.decode import DEFAULT_MAX_PIXELS, PathOrFile, read_image
from singan.data.files import atomic_write
from singan.errors import InputError, one_line

logger = logging.getLogger(__name__)

# Modes PIL converts to 8-bit RGB correctly by itself (no alpha, no more than 8 bits a channel).
_CONVERT_TO_RGB = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
# 16-bit greyscale in its various byte orders; numpy reads each with the right dtype.
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
# Alpha modes PIL cannot hand to numpy as straight alpha; converted first.
_TO_STRAIGHT_ALPHA = {"PA": "RGBA", "RGBa": "RGBA", "La": "LA"}


# --------------------------------------------------------------------------------------------
# Loading


# File suffixes taken as images when a folder is listed (`singan sifid`, manifests).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

def load_image(
    src: PathOrFile,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Load an image file as a float32 tensor of shape 1 x 3 x H x W with values in [-1, 1].

    `src` is a path (str or os.PathLike) or a binary file object (anything with `.read`).
    A caller's file object is read from its start (PIL seeks to 0) and left open.

    The conversion of each PIL mode is described in `from_pil`; in short, transparent pixels
    are alpha-composited over a white background, greyscale is replicated to three channels,
    16/32-bit greyscale keeps its precision, and CMYK/YCbCr/LAB/HSV become RGB. Multi-frame
    files (animated GIF/PNG, TIFF stacks) give their first frame. The EXIF orientation is
    applied, so a rotated phone photo comes out upright.

    Raises `InputError` ("<name>: <problem>") when the file is missing, a directory, empty,
    not an image, truncated or corrupt, of an unsupported mode, of zero size, or has more
    than `max_pixels` pixels (checked from the header, before decoding).
    """
    img, name = read_image(src, max_pixels, caller="load_image")
    x = from_pil(img, name=name)
    return x if device is None else x.to(device)


def load_mask(
    src: PathOrFile,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Load a mask image as a float32 tensor of shape 1 x 1 x H x W holding 0s and 1s.

    A pixel is inside (1) when its brightness, the mean of R, G and B in [0, 1], is above
    one half, and, when the image has an alpha channel or palette transparency, its alpha is
    at least one half. Thresholding at half the range makes any mode work (1-bit, 8/16/32-bit
    greyscale, float, palette, CMYK, ...) and ignores JPEG's compression noise around black
    and white. Modes are converted as in `from_pil`, except that alpha is used as the mask's
    second condition instead of being composited over white (which would turn a transparent
    "outside" white).

    `src` is read as by `load_image`, with the same checks and the same `InputError`s; a mask
    with no pixel inside is an error too, since it would select nothing.
    """
    img, name = read_image(src, max_pixels, caller="load_mask")
    rgb, alpha = _unit_rgb_alpha(img, name)
    inside = rgb.mean(axis=0) > 0.5
    if alpha is not None:
        inside &= alpha[0] >= 0.5
    if not inside.any():
        raise InputError(f"{name}: the mask is empty (no pixel brighter than half)")
    mask = torch.from_numpy(inside.astype(np.float32))[None, None]
    return mask if device is None else mask.to(device)


# --------------------------------------------------------------------------------------------
# PIL <-> tensor


def from_pil(img: Image.Image, *, name: str = "<image>") -> torch.Tensor:
    """Convert a PIL image to a float32 tensor of shape 1 x 3 x H x W with values in [-1, 1].

    - RGB, L (replicated), 1, P, CMYK, YCbCr, LAB, HSV: converted to 8-bit RGB by PIL, then
      x / 255 * 2 - 1.
    - RGBA, LA, and P with transparency: alpha-composited over a white background, so
      transparent areas come out white rather than whatever colour they happen to store.
    - I;16 (any byte order): divided by 65535 in float, keeping all 16 bits.
    - I (32-bit integer): divided by 65535 when every value fits in 16 bits (PGM and older
      16-bit PNG decode to this mode), else by 2**31 - 1; negative values become 0.
    - F (32-bit float): taken as [0, 1] when its maximum is at most 1, else divided by its
      maximum; NaN, infinities and negative values become 0.

    `name` is used in the `InputError` raised for unsupported modes.
    """
    rgb, alpha = _unit_rgb_alpha(img, name)
    # In place: a 24 MP photo's float copies are 288 MB each (the arithmetic is the same).
    if alpha is not None:
        rgb *= alpha  # over white: rgb * alpha + (1 - alpha)
        rgb += np.float32(1) - alpha
    return torch.from_numpy(rgb).unsqueeze(0).mul_(2).sub_(1)


def _unit_rgb_alpha(img: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A PIL image as float32 3 x H x W RGB in [0, 1] and straight alpha (1 x H x W) or None,
    each a new writable array.

    The per-mode conversion behind `from_pil` (which composites over white) and `load_mask`
    (which thresholds RGB and alpha separately); raises `InputError` for unsupported modes.
    """
    mode = img.mode
    alpha: np.ndarray | None = None
    if mode in _TO_STRAIGHT_ALPHA:
        img, mode = img.convert(_TO_STRAIGHT_ALPHA[mode]), _TO_STRAIGHT_ALPHA[mode]
    if mode == "P" and _has_transparency(img):
        img, mode = img.convert("RGBA"), "RGBA"

    if mode in ("RGBA", "LA"):
        data = np.asarray(img)
        rgb = _unit_rgb(data[..., :-1], 255)
        alpha = data[None, ..., -1].astype(np.float32) / np.float32(255)
    elif mode in _CONVERT_TO_RGB:
        rgb = _unit_rgb(np.asarray(img if mode == "RGB" else img.convert("RGB")), 255)
    elif mode in _SIXTEEN_BIT:
        rgb = _unit_rgb(np.asarray(img), 65535)
    elif mode == "I":
        data = np.asarray(img)
        scale = 65535 if data.size == 0 or data.max() <= 65535 else 2**31 - 1
        rgb = _unit_rgb(np.clip(data, 0, None), scale)
    elif mode == "F":
        data = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        data = np.clip(data, 0, None)
        peak = float(data.max()) if data.size else 0.0
        rgb = _unit_rgb(data, peak if peak > 1 else 1)
    else:
        raise InputError(f"{name}: unsupported image mode {mode!r}")

    return rgb, alpha


def _has_transparency(img: Image.Image) -> bool:
    """Whether a palette image has transparency (a tRNS entry or an RGBA palette)."""
    has = getattr(img, "has_transparency_data", None)  # Pillow 10.1+
    if has is not None:
        return bool(has)
    return "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")


def _unit_rgb(data: np.ndarray, scale: float) -> np.ndarray:
    """H x W x {1,3} (or H x W) numbers in [0, scale] -> new float32 3 x H x W in [0, 1]."""
    # float64 for wide integers so 32-bit values are not rounded before the division;
    # float32 is exact enough for 8- and 16-bit data and keeps x / 255 * 2 - 1 bit-exact.
    wide = data.dtype.itemsize > 2 and data.dtype.kind in "iu"
    if data.ndim == 2:
        data = data[..., None]
    # Channels first in the one float copy, divided in place: the tensor's layout without a
    # second full-size copy (for a 24 MP photo each is 288 MB).
    unit = np.moveaxis(data, -1, 0).astype(np.float64 if wide else np.float32, order="C")
    unit /= scale
    if wide:
        unit = unit.astype(np.float32)
    if unit.shape[0] == 1:
        unit = np.repeat(unit, 3, axis=0)
    return unit


def to_pil(x: torch.Tensor) -> Image.Image:
    """Convert a 1 x 3 x H x W or 3 x H x W tensor in [-1, 1] to an 8-bit RGB PIL image.

    Works on any device and float dtype; values are clamped to [-1, 1] (NaN becomes 0, mid
    grey) and (x + 1) / 2 * 255 is rounded to the nearest integer.
    """
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"to_pil expects a batch of one image, got shape {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"to_pil expects 1 x 3 x H x W or 3 x H x W, got shape {tuple(x.shape)}")
    x = x.detach().to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=0.0).clamp(-1, 1)
    pixels = ((x + 1) / 2 * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


# --------------------------------------------------------------------------------------------
# Saving


def save_image(x: torch.Tensor, dst: PathOrFile) -> None:
    """Save a 1 x 3 x H x W or 3 x H x W tensor in [-1, 1] as an 8-bit RGB image.

    `dst` is a path, whose extension picks the format (PNG when it has none), or a binary
    file object, which gets PNG and is left open. Missing parent folders of a path are
    created, and the file is written under a temporary name in the same folder and then
    renamed, so `dst` is either the whole new image or untouched. Raises `InputError` for an
    unknown extension or a folder or file that cannot be written.
    """
    img = to_pil(x)
    if not isinstance(dst, (str, bytes, os.PathLike)):
        if not hasattr(dst, "write"):
            raise TypeError(f"save_image expects a path or a file object, not {type(dst).__name__}")
        img.save(dst, format="PNG")
        return

    path = os.fsdecode(dst)
    fmt = _format_for(path)
    # JPEG's default quality (75) visibly smears the fine texture SinGAN produces.
    options = {"quality": 95} if fmt == "JPEG" else {}
    try:
        atomic_write(path, lambda fp: img.save(fp, format=fmt, **options))
    except OSError as err:
        raise InputError(f"{path}: cannot write image ({err.strerror or one_line(err)})") from err


def png_bytes(x: torch.Tensor) -> bytes:
    """A 1 x 3 x H x W or 3 x H x W tensor in [-1, 1] as the bytes of an 8-bit RGB PNG."""
    buffer = io.BytesIO()
    to_pil(x).save(buffer, format="PNG")
    return buffer.getvalue()


def _format_for(path: str) -> str:
    """The PIL format name for a path's extension; PNG when it has none."""
    ext = os.path.splitext(path)[1].lower()
    if not ext:
        return "PNG"
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"{path}: cannot save images with extension {ext!r}")
    return fmt

