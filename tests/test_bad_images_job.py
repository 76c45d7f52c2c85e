"""Every kind of bad or odd image a user's manifest may hold, through the real job: one
`ray job submit` of jobs/train_manifest.py on the local cluster with all of them in one manifest.

Each row either trains on the image as converted (greyscale, 16-bit, palette with transparency,
CMYK, EXIF-rotated, animated, a 24-megapixel photo) or fails on its own with a one-line reason
that names the problem (empty, truncated, not an image, too small, a decompression bomb). The
job finishes with exit status 1 (some rows failed), not a crash. tests/test_image.py has the unit
tests of each conversion; here they meet the pipeline (fsspec, Ray, storage, results table).

A worker's memory stays bounded too: loading the 6000x4000 photo and the bomb's header is
measured in fresh processes."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.catalog import write_manifest
from pipeline.storage import ImageStore
from singan.data.examples import pebbles
from singan.data.image import to_pil

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
# Tiny trainings: 4 scales (the quick preset) up to 28 px, narrow networks, a few iterations.
TINY = ["--preset", "quick", "--set", "max_size=28", "--set", "min_size=12", "--set", "nfc=8",
        "--set", "max_nfc=16", "--set", "niter=4", "--num-samples", "1", "--sifid-samples", "0",
        "--quality-samples", "0", "--gpus-per-task", "0", "--no-tracking"]
MiB = 1024 * 1024
RED, BLUE = (220, 20, 20), (20, 20, 220)


# --------------------------------------------------------------------------------------------
# the images, made here


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def halves(width: int, height: int, left, right) -> Image.Image:
    """RGB, the left half one colour and the right half another."""
    img = Image.new("RGB", (width, height), left)
    img.paste(right, (width // 2, 0, width, height))
    return img


def png_claiming(width: int, height: int) -> bytes:
    """A real 4x4 PNG whose IHDR says width x height (CRC fixed): a few dozen bytes on disk."""
    data = bytearray(encode(Image.new("RGB", (4, 4)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # after the signature, length and "IHDR"
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def sixteen_bit() -> bytes:
    y, x = np.mgrid[0:24, 0:32]
    return encode(Image.fromarray((x * 2000 + y * 37).astype(np.uint16)), "PNG")


def palette_with_transparency() -> bytes:
    """Left half transparent (its palette colour is black), right half dark blue."""
    img = Image.new("P", (32, 24), 0)
    img.putpalette([0, 0, 0, 0, 0, 160])
    img.paste(1, (16, 0, 32, 24))
    return encode(img, "PNG", transparency=0)


def exif_rotated() -> bytes:
    """Stored landscape 32x24, red left and blue right, with EXIF orientation 6 ("rotate 90
    degrees clockwise to display"): upright it is portrait, red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(halves(32, 24, RED, BLUE), "JPEG", quality=95, exif=exif)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 24), colour) for colour in (RED, BLUE, (20, 200, 20))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def photo_6000x4000() -> bytes:
    """A 24-megapixel JPEG: smooth noise upsampled to full size."""
    return encode(noise(40, 60).resize((6000, 4000), Image.BICUBIC), "JPEG", quality=90)


def truncated(fmt: str) -> bytes:
    data = encode(noise(64, 64), fmt)
    return data[: len(data) // 2]


def good_png() -> bytes:
    return encode(to_pil(pebbles(24, 32, seed=1)), "PNG")


# --------------------------------------------------------------------------------------------
# what each row must end as


def failed(reason: str, names_file: bool = True):
    """A row that fails with `reason` in its error (after "<uri>: " for a file's problem)."""
    return ("failed", reason, names_file)


def done(height: int, width: int, check=None):
    """A row that trains on an image of height x width at the finest scale; `check(pixels)` on
    the stored real image (H x W x 3 uint8) checks the conversion."""
    return ("done", (height, width), check)


def grey(pixels: np.ndarray) -> None:
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def transparent_left_is_white(pixels: np.ndarray) -> None:
    width = pixels.shape[1]
    assert pixels[:, : width // 2 - 3].min() >= 245  # composited over white
    assert pixels[:, width // 2 + 3:, 2].mean() > 120 and pixels[:, width // 2 + 3:, 0].max() < 40


def reddish(pixels: np.ndarray) -> None:
    red, green, blue = pixels.reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 80 and blue < 80, (red, green, blue)


def red_on_top(pixels: np.ndarray) -> None:
    height = pixels.shape[0]
    top = pixels[: height // 2 - 3].mean(axis=(0, 1))
    bottom = pixels[height // 2 + 3:].mean(axis=(0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)


# image_id -> (file name, contents, expected outcome). At max_size 28 a 32x24 image trains at
# 21x28 (h x w); the 6000x4000 photo at 19x28 (ceil(4000 * 28 / 6000)).
KINDS = {
    "empty": ("empty.png", lambda: b"", failed("empty file")),
    "truncated_png": ("cut.png", lambda: truncated("PNG"),
                      failed("truncated or corrupt image data")),
    "truncated_jpeg": ("cut.jpg", lambda: truncated("JPEG"),
                       failed("truncated or corrupt image data")),
    "text": ("notes.png", lambda: b"just some notes, not a picture\n",
             failed("not an image (unknown format or corrupt header)")),
    # Never upscaled (SINGAN.md in the project's shared reference folder: scale1 =
    # min(max_size / max(H, W), 1)): an image
    # below min_size has no pyramid, and says what to change.
    "one_pixel": ("dot.png", lambda: encode(Image.new("RGB", (1, 1), RED), "PNG"),
                  failed("image 1x1 is smaller than min_size=12; use a larger image or lower "
                         "min_size", names_file=False)),
    "below_min_size": ("strip.png", lambda: encode(noise(11, 30), "PNG"),
                       failed("image 11x30 is smaller than min_size=12", names_file=False)),
    # Refused from the header: 400 million pixels are never decoded.
    "bomb": ("bomb.png", lambda: png_claiming(20_000, 20_000),
             failed("image has 400,000,000 pixels, more than the limit of 64,000,000")),
    "sixteen_bit": ("deep.png", sixteen_bit, done(21, 28, grey)),
    "palette_transparency": ("palette.png", palette_with_transparency,
                             done(21, 28, transparent_left_is_white)),
    "cmyk": ("cmyk.jpg", lambda: encode(Image.new("RGB", (32, 24), RED).convert("CMYK"), "JPEG",
                                        quality=95), done(21, 28, reddish)),
    "greyscale": ("grey.png", lambda: encode(noise(24, 32).convert("L"), "PNG"),
                  done(21, 28, grey)),
    "exif_rotated": ("phone.jpg", exif_rotated, done(28, 21, red_on_top)),  # portrait
    "animated": ("anim.gif", animated_gif, done(21, 28, reddish)),  # the first frame
    "photo_6000x4000": ("photo.jpg", photo_6000x4000, done(19, 28)),
    "good": ("stones.png", good_png, done(21, 28)),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-images")
    paths = {}
    for image_id, (name, make, _) in KINDS.items():
        paths[image_id] = folder / name
        paths[image_id].write_bytes(make())
    return paths


# --------------------------------------------------------------------------------------------
# the job


def test_every_bad_image_fails_its_own_row_and_every_odd_one_trains(images, tmp_path,
                                                                     ray_cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    manifest, output = tmp_path / "manifest.parquet", tmp_path / "out"
    write_manifest([{"image_id": image_id, "uri": path.as_uri()}
                    for image_id, path in images.items()], str(manifest))
    submission_id = "bad-images"
    command = [RAY, "job", "submit", "--address", ray_cluster.dashboard_url,
               "--submission-id", submission_id, "--working-dir", str(ROOT), "--",
               "python", "jobs/train_manifest.py", "--manifest", str(manifest),
               "--output", str(output), *TINY]
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900,
                         cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    logs = run.stdout + run.stderr

    # The job ran to its end and chose its exit status: 1, some rows failed. A crash of the
    # driver would exit otherwise, without the summary or the results table.
    info = JobSubmissionClient(ray_cluster.dashboard_url).get_job_info(submission_id)
    assert info.status == JobStatus.FAILED and info.driver_exit_code == 1, logs
    expected_failures = sum(outcome[0] == "failed" for _, _, outcome in KINDS.values())
    assert (f"{len(KINDS)} images in" in logs and f"{len(KINDS) - expected_failures} trained, "
            f"0 already done, {expected_failures} failed" in logs), logs

    table = pq.read_table(output / "_results.parquet").to_pylist()
    rows = {row["image_id"]: row for row in table}
    assert len(table) == len(KINDS) and rows.keys() == KINDS.keys()
    for image_id, (_, _, outcome) in KINDS.items():
        row, store = rows[image_id], ImageStore(str(output), image_id)
        if outcome[0] == "failed":
            _, reason, names_file = outcome
            assert row["status"] == "failed", row
            # Its own reason, on one line; not a worker crash or a retried exception.
            prefix = f"{images[image_id].as_uri()}: " if names_file else ""
            assert row["error"].startswith(prefix + reason), row
            assert "\n" not in row["error"] and "worker died" not in row["error"]
            assert f"failed {image_id}: {row['error']}" in logs
            assert store.success() is None
        else:
            _, shape, check = outcome
            assert row["status"] == "done" and row["error"] is None, row
            assert store.success() is not None and row["num_scales"] == 4
            model = store.load_model("cpu")
            assert model.is_complete and model.num_scales == 4
            assert tuple(model.reals[-1].shape[-2:]) == shape, image_id
            with Image.open(io.BytesIO(store.get("reals/scale_03.png"))) as stored:
                pixels = np.asarray(stored.convert("RGB"))
            assert pixels.shape == (*shape, 3), image_id
            if check is not None:
                check(pixels)


# --------------------------------------------------------------------------------------------
# a worker's memory

# A fresh process does what a worker does with a row's image before training: read it through
# storage and convert it (pipeline.train_image.read_image, i.e. singan.data.image.load_image), then
# build the training pyramid from it. It prints its resident memory after the imports and its
# peak after the load, in bytes. Both come from /proc/self/status (VmRSS, VmHWM), which belong
# to this process's own address space: ru_maxrss would start at the pytest process's size,
# since Linux carries the high-water mark of the parent over fork and exec.
MEASURE = textwrap.dedent("""
    import json, sys
    from pipeline.manifest import manifest_row
    from pipeline.train_image import read_image
    from singan.api import config
    from singan.errors import InputError
    from singan.recipes.singan.levels import build_reals, plan_pyramid

    def status(field):
        with open("/proc/self/status") as fp:
            line = next(line for line in fp if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024  # kB

    settings = config("quick", max_size=28, min_size=12)
    before = status("VmRSS")
    try:
        image = read_image(manifest_row("x", sys.argv[1], settings, 0))
        real = build_reals(image, plan_pyramid(*image.shape[-2:], settings))[-1]
        outcome = list(real.shape)
    except InputError as err:
        outcome = str(err)
    print(json.dumps({"before": before, "peak": status("VmHWM"), "outcome": outcome}))
""")


def load_cost(uri: str) -> tuple[int, object]:
    """(peak resident memory above the imports' in bytes, the finest level's shape or the
    error)."""
    done = subprocess.run([sys.executable, "-c", MEASURE, uri], check=True, capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads(done.stdout.splitlines()[-1])
    return report["peak"] - report["before"], report["outcome"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_loading_a_huge_photo_or_a_bomb_header_keeps_memory_bounded(images):
    # The bomb is refused from its header: nothing is decoded.
    bomb, outcome = load_cost(images["bomb"].as_uri())
    assert "400,000,000 pixels" in outcome
    # The photo is decoded at full size (the pyramid is the reference's bicubic resize of the
    # whole image): its float tensor alone is 6000 * 4000 * 3 * 4 bytes = 275 MiB. The load
    # may cost at most two such copies.
    photo, outcome = load_cost(images["photo_6000x4000"].as_uri())
    assert outcome == [1, 3, 19, 28]
    print(f"\npeak RSS above imports: bomb header {bomb / MiB:.0f} MiB, "
          f"6000x4000 JPEG {photo / MiB:.0f} MiB")
    assert bomb < 50 * MiB
    assert photo < 2 * 6000 * 4000 * 3 * 4
