"""Reading an image file defensively, for singan.data.image: the input is whatever a user points
us at, so every failure is an `InputError` whose message is one line, "<name>: <problem>"; the
pixel count is checked from the header before any pixel is decoded; truncated files are
rejected rather than padded; the EXIF orientation is applied.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from typing import IO, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from singan.errors import InputError, one_line

logger = logging.getLogger(__name__)

# A 6000 x 4000 (24 MP) photo must load with room to spare; a 64 MP limit still stops an image
# whose decoded float tensor (12 bytes a pixel) would need gigabytes.
DEFAULT_MAX_PIXELS = 64_000_000

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]


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


def read_image(src: PathOrFile, max_pixels: int, caller: str) -> tuple[Image.Image, str]:
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
