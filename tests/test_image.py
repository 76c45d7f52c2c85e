"""singan.data.image (and singan.data.decode): loading every PIL mode to [-1, 1], rejecting bad
files, saving atomically.

Every image here is made procedurally with numpy/Pillow in tmp_path or memory.
"""

from __future__ import annotations

import io
import os
import struct
import types
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from singan.data.image import DEFAULT_MAX_PIXELS, from_pil, load_image, save_image, to_pil
from singan.errors import InputError

# --------------------------------------------------------------------------------------------
# helpers


def gradient(h: int = 12, w: int = 20) -> np.ndarray:
    """An H x W x 3 uint8 image with distinct values in each channel."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * 7 + y * 13) % 256], -1).astype(
        np.uint8
    )


def expected(arr: np.ndarray) -> torch.Tensor:
    """x / 255 * 2 - 1 in float32, as 1 x 3 x H x W (H x W input is replicated)."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return (torch.from_numpy(arr).float() / 255 * 2 - 1).permute(2, 0, 1).unsqueeze(0)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims width x height (CRC fixed, so only the size lies)."""
    data = bytearray(encode(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG"))
    # Signature (8) + length (4), then the IHDR chunk: type (4), width, height, ..., CRC.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def pixels_of(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def format_of(path) -> str:
    with Image.open(path) as img:
        return img.format


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_bytes(data: bytes, **kwargs) -> torch.Tensor:
    return load_image(io.BytesIO(data), **kwargs)


# --------------------------------------------------------------------------------------------
# sources


@pytest.mark.parametrize("kind", ["path", "str", "bytesio", "open_file"])
def test_rgb_png_loads_exactly_from_every_kind_of_source(tmp_path, kind):
    arr = gradient()
    path = write(tmp_path, "grad.png", encode(Image.fromarray(arr), "PNG"))
    if kind == "path":
        x = load_image(path)
    elif kind == "str":
        x = load_image(str(path))
    elif kind == "bytesio":
        x = load_image(io.BytesIO(path.read_bytes()))
    else:
        with open(path, "rb") as fp:
            x = load_image(fp)
            assert not fp.closed  # the caller's file is the caller's to close
    assert x.dtype == torch.float32 and x.shape == (1, 3, 12, 20)
    assert torch.equal(x, expected(arr))
    assert x.min() >= -1 and x.max() <= 1


def test_non_seekable_file_object_and_device():
    arr = gradient()
    data = encode(Image.fromarray(arr), "PNG")

    class Stream:  # only .read, like a pipe
        def __init__(self):
            self._buf = io.BytesIO(data)

        def read(self, n=-1):
            return self._buf.read(n)

    x = load_image(Stream(), device="cpu")
    assert x.device.type == "cpu"
    assert torch.equal(x, expected(arr))


# --------------------------------------------------------------------------------------------
# modes


def test_greyscale_L_is_replicated():
    arr = gradient()[..., 0]
    x = load_bytes(encode(Image.fromarray(arr, "L"), "PNG"))
    assert torch.equal(x, expected(arr))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_greyscale_jpeg():
    arr = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    x = load_bytes(encode(Image.fromarray(arr, "L"), "JPEG", quality=95))
    assert x.shape == (1, 3, 16, 32)
    assert torch.equal(x[:, 0], x[:, 2])
    assert (x - expected(arr)).abs().max() < 0.05


def test_sixteen_bit_png_keeps_fine_steps():
    values = np.array([[0, 1, 2, 1000, 1001], [30000, 30001, 65533, 65534, 65535]], np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    x = load_bytes(encode(img, "PNG"))
    grey = x[0, 0]
    assert torch.equal(grey, torch.from_numpy(values.astype(np.float32) / 65535) * 2 - 1)
    assert grey[1, 4] == 1.0 and grey[0, 0] == -1.0
    # Neighbours 1 apart in 16 bit stay apart (an 8-bit step would merge them).
    assert grey[0, 0] < grey[0, 1] < grey[0, 2]
    assert grey[1, 0] < grey[1, 1] and grey[1, 2] < grey[1, 3] < grey[1, 4]


def test_sixteen_bit_big_endian_and_32_bit_modes():
    values = np.array([[0, 1, 256, 65535]], np.uint16)
    big = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    want = torch.from_numpy(values.astype(np.float32) / 65535) * 2 - 1
    assert torch.equal(from_pil(big)[0, 1], want)

    # Mode I with 16-bit values (PGM, older 16-bit PNG): scaled by 65535, not clipped at 255.
    as_int = Image.fromarray(values.astype(np.int32), "I")
    assert torch.equal(from_pil(as_int)[0, 2], want)

    # Mode I beyond 16 bits: the full 32-bit range.
    wide = Image.fromarray(np.array([[0, 2**31 - 1]], np.int32), "I")
    assert from_pil(wide)[0, 0].tolist() == [[-1.0, 1.0]]


def test_float_tiff(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values, "F").save(path)
    x = load_image(path)
    assert torch.allclose(x[0, 0], torch.from_numpy(values) * 2 - 1)
    # Float data past 1 is scaled by its peak instead of being clipped flat.
    hdr = from_pil(Image.fromarray(values * 4, "F"))
    assert torch.allclose(hdr[0, 0], torch.from_numpy(values) * 2 - 1)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_white(mode):
    colour = (10, 200, 40) if mode == "RGBA" else (90,)
    pixels = np.array([[[*colour, 0], [*colour, 255], [*colour, 128]]], np.uint8)
    x = load_bytes(encode(Image.fromarray(pixels, mode), "PNG"))[0]
    grey_or_rgb = np.array(colour * (3 if mode == "LA" else 1), np.float32)
    assert torch.equal(x[:, 0, 0], torch.ones(3))  # fully transparent -> white
    assert torch.allclose(x[:, 0, 1], torch.from_numpy(grey_or_rgb / 255 * 2 - 1))
    half = (grey_or_rgb * 128 + 255 * 127) / 255  # 128/255 of the colour, the rest white
    assert torch.allclose(x[:, 0, 2], torch.from_numpy(half / 255 * 2 - 1), atol=1e-6)


def test_palette_without_transparency():
    palette_img = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    palette_img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    x = load_bytes(encode(palette_img, "PNG"))
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]], np.uint8)
    assert torch.equal(x, expected(rgb))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    palette_img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette_img.putpalette([0, 0, 0, 20, 40, 60])  # index 0 is black, but transparent
    x = load_bytes(encode(palette_img, fmt, transparency=0))[0]
    assert torch.equal(x[:, 0, 0], torch.ones(3))
    assert torch.equal(x[:, 0, 1], expected(np.array([[[20, 40, 60]]], np.uint8))[0, :, 0, 0])


def test_bilevel():
    bits = np.array([[True, False, True]])
    x = load_bytes(encode(Image.fromarray(bits), "PNG"))
    assert x[0, :, 0].tolist() == [[1.0, -1.0, 1.0]] * 3


def test_cmyk_jpeg_is_rgb():
    x = load_bytes(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert x.shape == (1, 3, 8, 8)
    assert torch.allclose(x[0, :, 4, 4], torch.tensor([1.0, -1.0, -1.0]), atol=0.1)  # red


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV"])
def test_other_colour_spaces_become_rgb(mode):
    arr = gradient() // 2 + 64  # in gamut: 8-bit LAB clips the most saturated colours
    x = from_pil(Image.fromarray(arr).convert(mode))
    assert (x - expected(arr)).abs().max() < 0.1


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.png"
    Image.fromarray(arr).save(path, exif=exif.tobytes())
    x = load_image(path)
    assert x.shape == (1, 3, 4, 2)
    assert torch.equal(x, expected(np.rot90(arr, k=-1).copy()))
    assert x[0, 0, 0, 1] == 1.0  # top-left went to top-right

    jpeg = load_image(write(tmp_path, "phone.jpg", encode(Image.new("RGB", (32, 16)), "JPEG",
                                                            exif=exif)))
    assert jpeg.shape == (1, 3, 32, 16)


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animation_gives_first_frame(fmt):
    frames = [Image.new("RGB", (6, 4), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 3
    x = load_bytes(data)
    assert x.shape == (1, 3, 4, 6)
    assert torch.equal(x, expected(np.array(frames[0])))


def test_unsupported_mode_is_an_input_error():
    fake = types.SimpleNamespace(mode="BGR;15", info={})
    with pytest.raises(InputError, match=r"^odd\.bmp: unsupported image mode 'BGR;15'$"):
        from_pil(fake, name="odd.bmp")


# --------------------------------------------------------------------------------------------
# bad files


def _truncated(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("empty.png", lambda p: p.write_bytes(b""), "empty file"),
        ("notes.png", lambda p: p.write_text("just some text\n"), "not an image"),
        ("cut.png", lambda p: p.write_bytes(_truncated("PNG")), "truncated"),
        ("cut.jpg", lambda p: p.write_bytes(_truncated("JPEG")), "truncated"),
        ("missing.png", lambda p: None, "no such file"),
        ("folder.png", lambda p: p.mkdir(), "directory"),
    ],
)
def test_bad_files_raise_one_line_input_errors(tmp_path, name, make, problem):
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


def test_bad_file_objects_are_named(tmp_path):
    with pytest.raises(InputError, match=r"^<file object>: empty file$"):
        load_image(io.BytesIO(b""))
    path = write(tmp_path, "cut.jpg", _truncated("JPEG"))
    with open(path, "rb") as fp, pytest.raises(InputError, match="cut.jpg: truncated") as info:
        load_image(fp)
    assert isinstance(info.value.__cause__, OSError)  # PIL's error is chained, not lost


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    pil_limit = Image.MAX_IMAGE_PIXELS
    # Our own limit, checked before decoding (the pixel data would not even be there).
    with pytest.raises(InputError) as info:
        load_image(write(tmp_path, "big.png", png_with_size(5000, 4000)), max_pixels=1_000_000)
    message = str(info.value)
    assert "big.png" in message and "5000x4000" in message and "1,000,000" in message
    path = write(tmp_path, "bomb.png", png_with_size(20_000, 20_000))
    # 20000x20000 is past PIL's own hard limit, which fires while reading the header.
    with pytest.raises(InputError) as info:
        load_image(path, max_pixels=1_000_000)
    message = str(info.value)
    assert "bomb.png" in message and "400,000,000 pixels" in message and "1,000,000" in message
    # The default limit; here PIL's own decompression-bomb check fires first and is converted.
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert "bomb.png" in message and "400,000,000 pixels" in message
    assert f"{DEFAULT_MAX_PIXELS:,}" in message
    # Between PIL's warning threshold and its error threshold, with a raised limit.
    with pytest.raises(InputError, match="more than the limit"):
        load_image(write(tmp_path, "warn.png", png_with_size(10_000, 10_000)),
                   max_pixels=10**12)
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's global limit is left alone


def test_default_limit_admits_a_24_megapixel_photo():
    assert DEFAULT_MAX_PIXELS >= 6000 * 4000
    # A header claiming 6000x4000 passes the size check and only fails as truncated.
    with pytest.raises(InputError, match="truncated"):
        load_bytes(png_with_size(6000, 4000))


def test_zero_size_image(monkeypatch):
    # PIL refuses zero sizes in every header it parses; our guard still covers other readers.
    monkeypatch.setattr(Image, "open", lambda fp: Image.new("RGB", (0, 3)))
    with pytest.raises(InputError, match=r"^<file object>: image has zero size \(0x3\)$"):
        load_bytes(b"anything")


# --------------------------------------------------------------------------------------------
# saving


def test_save_round_trips_every_uint8_value(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.permutation(np.tile(np.arange(256, dtype=np.uint8), 6)).reshape(16, 32, 3)
    path = tmp_path / "out.png"
    save_image(expected(arr), path)
    assert np.array_equal(pixels_of(path), arr)
    assert torch.equal(load_image(path), expected(arr))


def test_save_clamps_accepts_3d_and_low_precision(tmp_path):
    x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0]).reshape(1, 1, 5).expand(3, 1, 5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        save_image(x.to(dtype), tmp_path / "clamp.png")
        pixels = pixels_of(tmp_path / "clamp.png")
        assert pixels[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_to_pil_rejects_bad_shapes():
    with pytest.raises(ValueError):
        to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        to_pil(torch.zeros(1, 4, 4))


def test_save_to_file_object_is_png_and_left_open():
    arr = gradient()
    buf = io.BytesIO()
    save_image(expected(arr), buf)
    assert not buf.closed
    assert buf.getvalue().startswith(b"\x89PNG\r\n\x1a\n")
    assert torch.equal(load_image(io.BytesIO(buf.getvalue())), expected(arr))


def test_save_format_from_extension_and_parents_created(tmp_path):
    x = expected(gradient())
    save_image(x, tmp_path / "a" / "b" / "out.jpg")
    save_image(x, tmp_path / "a" / "noext")
    assert format_of(tmp_path / "a" / "b" / "out.jpg") == "JPEG"
    assert format_of(tmp_path / "a" / "noext") == "PNG"
    with pytest.raises(InputError, match=r"out\.xyz"):
        save_image(x, tmp_path / "out.xyz")
    assert sorted(os.listdir(tmp_path / "a")) == ["b", "noext"]


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_image(expected(gradient()), path)
    save_image(expected(gradient()), path)  # overwriting is fine
    assert os.listdir(tmp_path) == ["out.png"]
    before = path.read_bytes()

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(InputError, match="out.png: cannot write image"):
        save_image(torch.zeros(3, 4, 4), path)
    assert path.read_bytes() == before  # the old file is untouched
    assert os.listdir(tmp_path) == ["out.png"]  # and no temporary is left behind
