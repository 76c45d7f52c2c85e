"""Writing a sequence of frames as an animated GIF (for SinGAN's animation application).

Pillow's `save(..., save_all=True)` silently merges consecutive identical frames into one
longer frame, so a clip whose frames repeat would come out with fewer frames than it has. We
therefore assemble the file from Pillow's frame-level GIF encoder (`GifImagePlugin.getheader`
and `getdata`), which encodes exactly the frames it is given: the header with the loop
extension, then every frame full-size with its own colour table, then the trailer.
"""

from __future__ import annotations

import io
import os

import torch
from PIL import GifImagePlugin, Image

from singan.data.files import atomic_write
from singan.data.image import to_pil
from singan.errors import InputError

# Each frame covers the whole canvas, so "leave it in place" (1) is all a viewer needs; 2
# ("restore to background") would make some viewers flash the background between frames.
_DISPOSAL_KEEP = 1


def save_gif(
    frames: torch.Tensor, path: str | os.PathLike[str], fps: float = 10, loop: int | None = 0
) -> None:
    """Save a T x 3 x H x W tensor in [-1, 1] as an animated GIF of exactly T frames.

    Each frame is shown for round(1000 / fps) milliseconds, as GIF stores it: to the nearest
    hundredth of a second and at least one hundredth. `loop` is the number of times to play
    the clip after the first, 0 (the default) for forever, None for once with no loop
    extension. Each frame gets its own 256-colour palette (GIF's limit). The file is written
    whole or not at all (`singan.data.files.atomic_write`).

    Raises `InputError` for fps <= 0, a bad loop count, no frames, or a path that cannot be
    written; `ValueError` for a tensor that is not T x 3 x H x W.
    """
    if frames.dim() == 4 and frames.shape[0] == 0:
        raise InputError(f"{os.fsdecode(path)}: no frames to write")
    data = gif_bytes(frames, fps, loop)
    try:
        atomic_write(path, lambda fp: fp.write(data))
    except OSError as err:
        raise InputError(f"{os.fsdecode(path)}: cannot write GIF ({err.strerror or err})") from err


def gif_bytes(frames: torch.Tensor, fps: float = 10, loop: int | None = 0) -> bytes:
    """The animated GIF of a T x 3 x H x W tensor in [-1, 1], as `save_gif` writes it."""
    if not fps > 0:  # also rejects NaN
        raise InputError(f"the GIF frame rate must be above 0, got {fps!r}")
    if loop is not None and not 0 <= loop <= 0xFFFF:
        raise InputError(f"the GIF loop count must be between 0 and 65535, got {loop!r}")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"save_gif expects T x 3 x H x W frames, got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise InputError("no frames to write")
    # GIF delays are hundredths of a second; below one, browsers substitute ~100 ms.
    duration_ms = 10 * max(1, round(round(1000 / fps) / 10))
    return _encode(frames, duration_ms, loop)


def _encode(frames: torch.Tensor, duration_ms: int, loop: int | None) -> bytes:
    """The bytes of a GIF holding every frame, none merged."""
    out = io.BytesIO()
    for i, frame in enumerate(frames):
        # Fast-octree palette per frame: about 2 ms for a 250 x 250 frame where median cut (what
        # Pillow picks by itself) takes 0.3-0.5 s, with slightly more colour error; 12 clips of
        # 100 frames would otherwise spend minutes here.
        im = to_pil(frame).quantize(256, method=Image.Quantize.FASTOCTREE)
        if i == 0:
            # The global header (screen size, first frame's palette, loop extension); the
            # duration only makes Pillow declare GIF89a, the version with frame delays.
            info: dict[str, int] = {"duration": duration_ms}
            if loop is not None:
                info["loop"] = loop
            header, _ = GifImagePlugin.getheader(im, info=info)
            out.write(b"".join(header))
        # Graphic control (delay, disposal), image descriptor with a local colour table,
        # then the LZW-compressed pixels.
        chunks = GifImagePlugin.getdata(
            im, duration=duration_ms, disposal=_DISPOSAL_KEEP, include_color_table=True
        )
        out.write(b"".join(chunks))
    out.write(b";")  # GIF trailer
    return out.getvalue()
