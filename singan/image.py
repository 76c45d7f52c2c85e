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
import re
import warnings
from typing import IO, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from singan.errors import InputError, one_line
from singan.files import atomic_write

logger = logging.getLogger(__name__)

# A 6000 x 4000 (24 MP) photo must load with room to spare; a 64 MP limit still stops an image
# whose decoded float tensor (12 bytes a pixel) would need gigabytes.
DEFAULT_MAX_PIXELS = 64_000_000

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

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
    img, name = _read(src, max_pixels, caller="load_image")
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
    img, name = _read(src, max_pixels, caller="load_mask")
    rgb, alpha = _unit_rgb_alpha(img, name)
    inside = rgb.mean(axis=0) > 0.5
    if alpha is not None:
        inside &= alpha[0] >= 0.5
    if not inside.any():
        raise InputError(f"{name}: the mask is empty (no pixel brighter than half)")
    mask = torch.from_numpy(inside.astype(np.float32))[None, None]
    return mask if device is None else mask.to(device)


# EXIF orientations that turn the image a quarter (transpose, 90, transverse, 270).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


def image_size(fp: IO[bytes], name: str = "<image>") -> tuple[int, int]:
    """(height, width) of an image file as `load_image` would give it (EXIF orientation
    applied), from its header alone: no pixel is decoded, and a file object reading from
    remote storage fetches only the first blocks. Raises InputError for a file that is not an
    image or has no size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                width, height = img.size
                try:
                    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
                except Exception:  # noqa: BLE001 - malformed EXIF: load_image keeps it as stored
                    orientation = 1
    except UnidentifiedImageError as err:
        raise InputError(f"{name}: not an image (unknown format or corrupt header)") from err
    except Exception as err:  # noqa: BLE001 - any parser failure means a corrupt header
        raise InputError(f"{name}: cannot read image header ({one_line(err)})") from err
    if width <= 0 or height <= 0:
        raise InputError(f"{name}: image has zero size ({width}x{height})")
    return (width, height) if orientation in _QUARTER_TURNS else (height, width)


def _read(src: PathOrFile, max_pixels: int, caller: str) -> tuple[Image.Image, str]:
    """The decoded first frame of a path or file object, and the name to use in messages.

    Raises `InputError` as `load_image` describes; `caller` names the public function in the
    `TypeError` for a `src` that is neither a path nor a file object.
    """
    if isinstance(src, (str, bytes, os.PathLike)):
        name = os.fsdecode(src)
        # Checked up front because opening a folder fails differently per OS (EISDIR, EACCES).
        if os.path.isdir(src):
            raise InputError(f"{name}: is a directory, not an image file")
        try:
            with open(src, "rb") as fp:
                if os.fstat(fp.fileno()).st_size == 0:
                    raise InputError(f"{name}: empty file")
                img = _decode(fp, name, max_pixels)
        except FileNotFoundError as err:
            raise InputError(f"{name}: no such file") from err
        except OSError as err:
            # Permission denied and the like; the OS message is one line and says it best.
            raise InputError(f"{name}: cannot read file ({err.strerror or err})") from err
    elif hasattr(src, "read"):
        name = _file_object_name(src)
        fp = _seekable(src)
        if _is_empty(fp):
            raise InputError(f"{name}: empty file")
        img = _decode(fp, name, max_pixels)
    else:
        raise TypeError(f"{caller} expects a path or a file object, not {type(src).__name__}")
    return img, name


def _file_object_name(fp: IO[bytes]) -> str:
    """The name to use in messages: the file object's path when it has one."""
    name = getattr(fp, "name", None)
    # An fd-based file's .name is an int, which would say nothing to the user.
    if isinstance(name, (str, bytes, os.PathLike)):
        return os.fsdecode(name)
    return "<file object>"


def _seekable(fp: IO[bytes]) -> IO[bytes]:
    """`fp` itself when it can seek, else its whole content in memory (PIL needs to seek)."""
    try:
        if fp.seekable():
            return fp
    except (AttributeError, OSError, ValueError):
        pass
    return io.BytesIO(fp.read())


def _is_empty(fp: IO[bytes]) -> bool:
    """True when a seekable file object holds no bytes at all."""
    # PIL reads a file object from its start (it seeks to 0), so emptiness is judged there too.
    pos = fp.tell()
    fp.seek(0)
    empty = fp.read(1) == b""
    fp.seek(pos)
    return empty


def _decode(fp: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    """Open, size-check, fully decode and orient the first frame of an image file object.

    The caller owns `fp` and closes it; the returned image no longer needs it.
    """
    try:
        # PIL warns (and above twice its limit, fails) about huge images when it reads the
        # header; turn the warning into an error locally instead of touching its global limit.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(_bomb_message(name, err, max_pixels)) from err
    except UnidentifiedImageError as err:
        raise InputError(f"{name}: not an image (unknown format or corrupt header)") from err
    except Exception as err:  # noqa: BLE001 - any parser failure means a corrupt header
        raise InputError(f"{name}: cannot read image header ({one_line(err)})") from err

    # Image.open only read the header, so this check runs before any pixel is decoded.
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise InputError(
            f"{name}: image has {width}x{height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,}"
        )
    if width <= 0 or height <= 0:
        img.close()
        raise InputError(f"{name}: image has zero size ({width}x{height})")

    try:
        # Decode everything now: a truncated file fails here instead of silently yielding a
        # partly grey image (we leave ImageFile.LOAD_TRUNCATED_IMAGES off on purpose).
        img.load()
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, SyntaxError, zlib errors...
        img.close()
        raise InputError(f"{name}: truncated or corrupt image data ({one_line(err)})") from err

    # The first frame of a multi-frame file is now in memory; we never seek to the others,
    # so the caller may close `fp` as soon as we return.
    _apply_exif_orientation(img, name)
    return img


def _bomb_message(name: str, err: Exception, max_pixels: int) -> str:
    """Our too-many-pixels message for PIL's own decompression-bomb check.

    PIL checks while reading the header, before we see the size, and keeps the image to
    itself; its message still carries the pixel count.
    """
    match = re.search(r"Image size \((\d+) pixels\) exceeds limit of (\d+) pixels", str(err))
    if match is None:
        return f"{name}: image too large to decode safely ({one_line(err)})"
    pixels, pil_limit = int(match.group(1)), int(match.group(2))
    # Above our limit, report ours; otherwise the caller raised max_pixels past PIL's limit.
    limit = max_pixels if pixels > max_pixels else pil_limit
    return f"{name}: image has {pixels:,} pixels, more than the limit of {limit:,}"


def _apply_exif_orientation(img: Image.Image, name: str) -> None:
    """Rotate/flip `img` in place as its EXIF orientation tag says."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as err:  # noqa: BLE001
        # Malformed EXIF is common in the wild and the pixels are still fine: keep them as
        # stored rather than reject the image.
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, one_line(err))


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

