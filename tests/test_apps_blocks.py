"""Building blocks of the applications: mask loading, dilation/blur/blend, k-means, GIFs.

Every image is made with numpy/Pillow in tmp_path or in memory.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from singan.apps.gif import save_gif
from singan.apps.masks import (
    EDITING_RADIUS,
    HARMONIZATION_RADIUS,
    blend,
    dilate,
    disk,
    gaussian_blur,
    prepare_mask,
)
from singan.apps.quantise import image_centers, kmeans, quantise
from singan.data.image import load_mask, to_pil
from singan.errors import InputError

# --------------------------------------------------------------------------------------------
# load_mask

H, W = 12, 16


def inside() -> np.ndarray:
    """The H x W boolean pattern every test mask encodes: a block and a lone pixel."""
    pattern = np.zeros((H, W), dtype=bool)
    pattern[2:7, 3:11] = True
    pattern[10, 14] = True
    return pattern


def pick(pattern: np.ndarray, yes, no) -> np.ndarray:
    """`yes` where the pattern is set, `no` elsewhere (values may be per-channel tuples)."""
    yes, no = np.asarray(yes), np.asarray(no)
    cond = pattern.reshape(pattern.shape + (1,) * yes.ndim)
    return np.where(cond, yes, no)


def rgb_mask() -> Image.Image:
    # Outside has a bright red channel but a dark mean: brightness is the mean of R, G, B.
    return Image.fromarray(pick(inside(), (255, 200, 100), (200, 30, 10)).astype(np.uint8))


def l_mask() -> Image.Image:
    # 128/255 is just above half, 127/255 just below.
    return Image.fromarray(pick(inside(), 128, 127).astype(np.uint8), "L")


def one_bit_mask() -> Image.Image:
    return Image.fromarray(inside())  # bool -> mode "1"


def p_mask() -> Image.Image:
    img = Image.fromarray(pick(inside(), 1, 0).astype(np.uint8), "P")
    img.putpalette([0, 0, 0, 250, 250, 250])
    return img


def p_transparent_mask() -> Image.Image:
    """Index 0 is white but transparent (tRNS), index 1 opaque white, index 2 opaque black."""
    pattern = inside()
    idx = np.where(pattern, 1, 0).astype(np.uint8)
    idx[0, :] = 2
    img = Image.fromarray(idx, "P")
    img.putpalette([255, 255, 255, 255, 255, 255, 0, 0, 0])
    img.info["transparency"] = 0
    return img


def la_mask() -> Image.Image:
    # White everywhere: only the alpha decides.
    return Image.fromarray(pick(inside(), (255, 128), (255, 127)).astype(np.uint8), "LA")


def rgba_mask() -> Image.Image:
    # Transparent pixels are outside even when bright; opaque ones follow their brightness.
    pattern = inside()
    arr = pick(pattern, (255, 255, 255, 200), (255, 255, 255, 0)).astype(np.uint8)
    arr[11, 0] = (10, 10, 10, 255)  # opaque and dark: outside
    return Image.fromarray(arr, "RGBA")


def i16_mask() -> Image.Image:
    # 32768/65535 is above half, 32767 below: the full 16 bits are used.
    return Image.fromarray(pick(inside(), 32768, 32767).astype(np.uint16))


def i32_mask() -> Image.Image:
    return Image.fromarray(pick(inside(), 40000, 20000).astype(np.int32), "I")


def f_mask() -> Image.Image:
    return Image.fromarray(pick(inside(), 0.75, 0.25).astype(np.float32), "F")


def cmyk_mask() -> Image.Image:
    # No ink is white (inside), full black ink is black (outside).
    return Image.fromarray(pick(inside(), (0, 0, 0, 0), (0, 0, 0, 255)).astype(np.uint8), "CMYK")


MASKS = {
    "RGB": (rgb_mask, "PNG"),
    "L": (l_mask, "PNG"),
    "1": (one_bit_mask, "PNG"),
    "P": (p_mask, "PNG"),
    "P+transparency": (p_transparent_mask, "PNG"),
    "LA": (la_mask, "PNG"),
    "RGBA": (rgba_mask, "PNG"),
    "I;16": (i16_mask, "PNG"),
    "I": (i32_mask, "TIFF"),
    "F": (f_mask, "TIFF"),
    "CMYK": (cmyk_mask, "TIFF"),
}


@pytest.mark.parametrize("kind", MASKS)
def test_load_mask_every_mode(tmp_path, kind):
    make, fmt = MASKS[kind]
    img = make()
    path = tmp_path / f"mask.{fmt.lower()}"
    img.save(path, fmt)
    with Image.open(path) as check:  # the file really holds the mode under test
        assert check.mode.split(";")[0] == img.mode.split(";")[0]

    mask = load_mask(path)
    assert mask.shape == (1, 1, H, W) and mask.dtype == torch.float32
    assert torch.equal(mask[0, 0], torch.from_numpy(inside().astype(np.float32)))


def test_load_mask_file_object_and_device():
    buf = io.BytesIO()
    l_mask().save(buf, "PNG")
    mask = load_mask(buf, device="cpu")
    assert torch.equal(mask[0, 0].bool(), torch.from_numpy(inside()))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_load_mask_noisy_jpeg(tmp_path, mode):
    # Large blocks of black and white: JPEG's noise moves values by tens, not across half.
    pattern = np.zeros((64, 80), dtype=bool)
    pattern[8:40, 16:56] = True
    arr = pick(pattern, 255, 0).astype(np.uint8)
    img = Image.fromarray(arr, "L").convert(mode)
    path = tmp_path / "mask.jpg"
    img.save(path, "JPEG", quality=40)
    with Image.open(path) as check:  # the noise is there
        decoded = np.asarray(check.convert("L")).astype(int)
        assert 0 < np.abs(decoded - arr.astype(int)).max() < 100

    assert torch.equal(load_mask(path)[0, 0].bool(), torch.from_numpy(pattern))


def test_load_mask_empty(tmp_path):
    path = tmp_path / "black.png"
    Image.new("L", (8, 8), 127).save(path)
    with pytest.raises(InputError) as err:
        load_mask(path)
    assert str(err.value) == f"{path}: the mask is empty (no pixel brighter than half)"

    # White but fully transparent is empty too.
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 255, 255, 0)).save(clear)
    with pytest.raises(InputError, match="the mask is empty"):
        load_mask(clear)


def test_load_mask_truncated(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError) as err:
        load_mask(path)
    message = str(err.value)
    assert message.startswith(f"{path}: truncated or corrupt image data") and "\n" not in message


def test_load_mask_missing_and_too_large(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_mask(tmp_path / "nope.png")
    path = tmp_path / "big.png"
    Image.new("L", (20, 20), 255).save(path)
    with pytest.raises(InputError, match="more than the limit of 100"):
        load_mask(path, max_pixels=100)


# --------------------------------------------------------------------------------------------
# dilate, gaussian_blur, prepare_mask, blend


def random_mask(h: int, w: int, p: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, h, w, generator=g) < p).float()


def brute_dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilation by stamping the disk {i^2 + j^2 <= r^2} around every set pixel."""
    src = mask[0, 0].numpy()
    h, w = src.shape
    out = np.zeros_like(src)
    for y, x in zip(*np.nonzero(src)):
        for i in range(-radius, radius + 1):
            for j in range(-radius, radius + 1):
                if i * i + j * j <= radius * radius and 0 <= y + i < h and 0 <= x + j < w:
                    out[y + i, x + j] = 1
    return torch.from_numpy(out)[None, None]


def test_disk_shape():
    # Gauss's circle counts: integer points with i^2 + j^2 <= r^2.
    assert disk(7).sum() == 149 and disk(20).sum() == 1257
    d = disk(7)
    assert d.shape == (15, 15)
    assert d[0].tolist() == [0.0] * 7 + [1.0] + [0.0] * 7  # only (−7, 0) on the top row
    assert d[1].sum() == 7  # j^2 <= 49 - 36: |j| <= 3
    assert torch.equal(disk(0), torch.ones(1, 1))


@pytest.mark.parametrize("radius", [HARMONIZATION_RADIUS, EDITING_RADIUS])
def test_dilate_matches_brute_force(radius):
    mask = random_mask(45, 60, 0.01, seed=radius)
    assert mask.sum() > 0
    assert torch.equal(dilate(mask, radius), brute_dilate(mask, radius))


@pytest.mark.parametrize("radius", [HARMONIZATION_RADIUS, EDITING_RADIUS])
def test_dilate_single_pixel_is_the_disk(radius):
    size = 2 * radius + 11
    mask = torch.zeros(1, 1, size, size)
    mask[0, 0, size // 2, size // 2] = 1
    out = dilate(mask, radius)[0, 0]
    lo, hi = size // 2 - radius, size // 2 + radius + 1
    assert torch.equal(out[lo:hi, lo:hi], disk(radius))
    assert out.sum() == disk(radius).sum()  # nothing outside the disk's box


def test_dilate_radius_zero_and_bad_radius():
    mask = random_mask(10, 10, 0.3, seed=1)
    assert torch.equal(dilate(mask, 0), mask)
    with pytest.raises(InputError):
        dilate(mask, -1)


def direct_blur(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """2-D correlation with the outer product of the Gaussian, edge-padded, in float64."""
    r = int(truncate * sigma + 0.5)
    offsets = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = np.outer(g, g) / g.sum() ** 2
    h, w = x.shape[-2:]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)], mode="edge")
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            out += kernel[i, j] * padded[..., i : i + h, j : j + w]
    return out


@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0])
def test_gaussian_blur_vs_direct_convolution(sigma):
    # 5.0 gives a radius of 20, wider than the 14-pixel height: edges repeat far out.
    x = torch.rand(2, 3, 14, 25, generator=torch.Generator().manual_seed(0))
    want = direct_blur(x.numpy().astype(np.float64), sigma)
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), want, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0])
def test_gaussian_blur_vs_scipy(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 2, 14, 25, generator=torch.Generator().manual_seed(1))
    want = ndimage.gaussian_filter(
        x.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="nearest"
    )
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), want, atol=1e-6)


def test_gaussian_blur_constant_and_zero_sigma():
    x = torch.full((1, 3, 9, 11), 0.3)
    out = gaussian_blur(x, 5.0)
    torch.testing.assert_close(out, x)  # weights sum to 1, borders replicate
    torch.testing.assert_close(out.sum(), x.sum())
    y = torch.rand(1, 1, 5, 5)
    assert torch.equal(gaussian_blur(y, 0.0), y)


def chebyshev_distance(mask: torch.Tensor) -> torch.Tensor:
    """Each pixel's max(|dy|, |dx|) distance to the nearest set pixel of a 1 x 1 x H x W mask."""
    h, w = mask.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ones = torch.nonzero(mask[0, 0])
    dist = [torch.maximum((ys - y).abs(), (xs - x).abs()) for y, x in ones.tolist()]
    return torch.stack(dist).min(0).values


@pytest.mark.parametrize("radius", [HARMONIZATION_RADIUS, EDITING_RADIUS])
def test_prepare_mask_range_and_support(radius):
    mask = torch.zeros(1, 1, 100, 110)
    mask[0, 0, 40:46, 50:53] = 1
    mask[0, 0, 10, 12] = 1
    soft = prepare_mask(mask, radius)
    assert soft.shape == mask.shape
    assert soft.min() == 0 and soft.max() == 1
    reach = radius + int(4 * 5.0 + 0.5)
    far = chebyshev_distance(mask) > reach
    assert far.any() and torch.all(soft[0, 0][far] == 0)  # exactly zero, not just small
    assert torch.all(soft[dilate(mask, radius) > 0] > 0)


def test_prepare_mask_constant_results():
    assert torch.equal(prepare_mask(torch.ones(1, 1, 8, 9), 7), torch.ones(1, 1, 8, 9))
    # One central pixel whose disk covers the whole small image.
    mask = torch.zeros(1, 1, 9, 9)
    mask[0, 0, 4, 4] = 1
    assert torch.equal(prepare_mask(mask, 7), torch.ones(1, 1, 9, 9))
    assert torch.equal(prepare_mask(torch.zeros(1, 1, 6, 6), 7), torch.zeros(1, 1, 6, 6))


def test_blend():
    out, real = torch.full((1, 3, 4, 5), 1.0), torch.full((1, 3, 4, 5), -1.0)
    mask = torch.zeros(1, 1, 4, 5)
    mask[..., 0, :] = 1
    mask[..., 1, :] = 0.25
    mixed = blend(out, real, mask)
    assert mixed.shape == (1, 3, 4, 5)
    assert torch.all(mixed[..., 0, :] == 1) and torch.all(mixed[..., 2:, :] == -1)
    torch.testing.assert_close(mixed[..., 1, :], torch.full((1, 3, 5), -0.5))
    with pytest.raises(ValueError):
        blend(out, real, torch.zeros(1, 1, 3, 5))


# --------------------------------------------------------------------------------------------
# k-means


def three_clusters(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """300 noisy RGB points around three well separated colours (points, true colours)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[0.8, -0.7, -0.6], [-0.5, 0.7, -0.8], [-0.6, -0.4, 0.9]])
    points = colours.repeat_interleave(100, 0) + 0.05 * torch.randn(300, 3, generator=g)
    return points[torch.randperm(300, generator=g)], colours


def sort_rows(x: torch.Tensor) -> torch.Tensor:
    return x[torch.argsort(x[:, 0])]


def test_kmeans_deterministic_under_a_seed():
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    a = kmeans(points, 5, generator=torch.Generator().manual_seed(7))
    b = kmeans(points, 5, generator=torch.Generator().manual_seed(7))
    assert a.shape == (5, 3) and torch.equal(a, b)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_three_clusters(seed):
    points, colours = three_clusters(seed)
    centers = kmeans(points, 3, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(sort_rows(centers), sort_rows(colours), atol=0.03, rtol=0)


def test_kmeans_fewer_distinct_points_than_k():
    # Ties go to the first centre, so duplicated centres have empty clusters: they must keep
    # their centre rather than become NaN.
    points = torch.tensor([[0.5, 0.5, 0.5]] * 6 + [[-1.0, 0.0, 1.0]] * 4)
    centers = kmeans(points, 4, generator=torch.Generator().manual_seed(0))
    assert centers.shape == (4, 3) and torch.isfinite(centers).all()
    distinct = {tuple(c) for c in centers.tolist()}
    assert distinct == {(0.5, 0.5, 0.5), (-1.0, 0.0, 1.0)}


def test_kmeans_too_few_points():
    with pytest.raises(InputError, match="only 3 pixels"):
        kmeans(torch.rand(3, 3), 5)


def test_image_centers_and_quantise():
    _, colours = three_clusters()
    # A 1 x 3 x 6 x 10 image in three flat bands.
    image = colours.repeat_interleave(20, 0).T.reshape(1, 3, 6, 10)
    centers = image_centers(image, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sort_rows(centers), sort_rows(colours))
    assert torch.equal(quantise(image, colours), image)


def test_quantise_maps_onto_nearest_centres_only():
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 16, 20, generator=g) * 2 - 1
    centers = image_centers(image, 5, generator=g)
    out = quantise(image, centers)
    assert out.shape == image.shape
    pixels = out[0].reshape(3, -1).T
    assert all(any(torch.equal(p, c) for c in centers) for p in pixels)
    # Each is the nearest centre of its original pixel.
    original = image[0].reshape(3, -1).T
    chosen = ((original - pixels) ** 2).sum(1)
    best = ((original[:, None] - centers[None]) ** 2).sum(-1).min(1).values
    assert torch.equal(chosen, best)


# --------------------------------------------------------------------------------------------
# save_gif


def flat_frames(seed: int, count: int) -> torch.Tensor:
    """`count` 3 x 10 x 14 frames of 6 flat colours (few enough that GIF keeps them exact)."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.randint(0, 256, (6, 3), generator=g).float() / 255 * 2 - 1
    index = torch.randint(0, 6, (count, 10, 14), generator=g)
    return palette[index].permute(0, 3, 1, 2).contiguous()


def read_gif(path) -> tuple[list[np.ndarray], list[int], dict]:
    with Image.open(path) as img:
        info = dict(img.info)
        frames, durations = [], []
        for i in range(img.n_frames):
            img.seek(i)
            frames.append(np.asarray(img.convert("RGB")))
            durations.append(img.info["duration"])
    return frames, durations, info


def test_save_gif_frames_durations_loop(tmp_path):
    a, b = flat_frames(0, 2)
    clip = torch.stack([a, a, b, b, b, a])  # repeats that Pillow would merge
    path = tmp_path / "clip.gif"
    save_gif(clip, path, fps=4)
    frames, durations, info = read_gif(path)
    assert len(frames) == 6
    assert durations == [250] * 6
    assert info["loop"] == 0
    for got, want in zip(frames, clip):
        assert np.array_equal(got, np.asarray(to_pil(want)))
    assert os.listdir(tmp_path) == ["clip.gif"]  # no temporary file left behind


def test_save_gif_options(tmp_path):
    clip = flat_frames(1, 3)
    save_gif(clip, tmp_path / "ten.gif")
    _, durations, info = read_gif(tmp_path / "ten.gif")
    assert durations == [100] * 3 and info["loop"] == 0
    save_gif(clip, tmp_path / "thrice.gif", fps=25, loop=3)
    _, durations, info = read_gif(tmp_path / "thrice.gif")
    assert durations == [40] * 3 and info["loop"] == 3
    save_gif(clip, tmp_path / "once.gif", loop=None)
    assert "loop" not in read_gif(tmp_path / "once.gif")[2]
    with Image.open(tmp_path / "ten.gif") as img:
        img.seek(1)
        assert img.disposal_method == 1  # each frame stays until the next covers it


def test_save_gif_errors(tmp_path):
    clip = flat_frames(2, 2)
    for fps in (0, -5):
        with pytest.raises(InputError, match="frame rate"):
            save_gif(clip, tmp_path / "x.gif", fps=fps)
    with pytest.raises(InputError, match="no frames"):
        save_gif(clip[:0], tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()
    (tmp_path / "folder.gif").mkdir()
    with pytest.raises(InputError, match="cannot write GIF"):
        save_gif(clip, tmp_path / "folder.gif")
