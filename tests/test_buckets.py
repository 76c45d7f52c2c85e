"""Buckets of rows that train together: grouped by training plan, sizes from the manifest or
the images' headers, and in one process the bucket trains each image as it trains alone."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

import singan
from pipeline import buckets as bucketing
from pipeline.buckets import buckets, header_sizes, with_sizes
from pipeline.catalog import write_manifest
from pipeline.manifest import ManifestError, ManifestRow, manifest_row, read_manifest
from pipeline.train_image import JobSettings, train_bucket, train_image
from singan.data.decode import image_size
from singan.data.examples import pebbles
from singan.data.image import save_image
from singan.errors import InputError
from tests.conftest import tiny_config


def photo(tmp_path, name: str, height: int, width: int, seed: int = 0) -> str:
    path = tmp_path / f"{name}.png"
    save_image(pebbles(height, width, seed=seed), path)
    return path.as_uri()


def row(tmp_path, name: str, size=(28, 36), config=None, **kw) -> ManifestRow:
    return manifest_row(name, photo(tmp_path, name, *size), config or tiny_config(niter=4), 1, **kw)


def test_image_size_reads_the_header_only_and_applies_exif_rotation():
    image = Image.new("RGB", (30, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated a quarter: training sees 30 x 20 (height x width)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert image_size(io.BytesIO(buffer.getvalue())) == (30, 20)
    # A truncated file still has its header: the size reads; decoding would fail later.
    png = io.BytesIO()
    Image.effect_noise((30, 20), 64).convert("RGB").save(png, "PNG")
    assert image_size(io.BytesIO(png.getvalue()[:100])) == (20, 30)
    with pytest.raises(InputError, match="x.png: not an image"):
        image_size(io.BytesIO(b"text, not an image"), "x.png")


def test_rows_of_one_plan_share_buckets_of_at_most_k(tmp_path):
    rows = [row(tmp_path, f"a{i}") for i in range(5)]
    rows.insert(2, row(tmp_path, "big", size=(40, 60)))
    rows.append(row(tmp_path, "con", config=singan.config(recipe="consingan", num_scales=3,
                                                          nfc=8, niter=2)))
    rows.append(manifest_row("gone", (tmp_path / "missing.png").as_uri(), tiny_config(), 1))
    # A full bucket goes out when it fills, a row that trains alone at once, partial ones last.
    assert [[t.image_id for t in bucket] for bucket in buckets(rows, 4)] == [
        ["a0", "a1", "a2", "a3"], ["con"], ["gone"], ["big"], ["a4"]]
    with pytest.raises(InputError, match="at least 1"):
        next(buckets(rows, 0))


def test_buckets_stream_and_keep_few_partial_ones_open(tmp_path, monkeypatch):
    """The generator takes rows only as far as it needs: the first full bucket comes after K
    rows of a million, and past MAX_OPEN_BUCKETS waiting partial buckets the oldest goes."""
    cfg = tiny_config()

    def rows(count, sizes):
        for n in range(count):
            height, width = sizes(n)
            yield manifest_row(f"r{n}", f"file:///nowhere/r{n}.png", cfg, n, height=height,
                               width=width)

    taken = []
    stream = buckets((taken.append(r) or r for r in rows(10**6, lambda n: (28, 36))), 3)
    assert [r.image_id for r in next(stream)] == ["r0", "r1", "r2"]
    assert len(taken) <= 3 + bucketing.READ_AHEAD
    monkeypatch.setattr(bucketing, "MAX_OPEN_BUCKETS", 2)
    sizes = [(28, 36), (40, 40), (28, 36), (50, 60), (28, 36)]  # plans A B A C A
    # r0 and r2 fill a bucket; r4 opens a third one, so B's goes out partial; C and A at the end.
    assert [[r.image_id for r in b] for b in buckets(rows(5, lambda n: sizes[n]), 2)] == [
        ["r0", "r2"], ["r1"], ["r3"], ["r4"]]


def test_sizes_come_from_the_manifest_when_it_has_them(tmp_path):
    uri = photo(tmp_path, "p", 28, 36)
    rows = [manifest_row("p", uri, tiny_config(), 1),
            manifest_row("q", (tmp_path / "nowhere.png").as_uri(), tiny_config(), 1, height=28,
                      width=36)]
    assert [size for _, size in with_sizes(rows)] == [(28, 36), (28, 36)]  # q never read
    assert header_sizes([uri, (tmp_path / "nowhere.png").as_uri()]) == [(28, 36), None]
    url = str(tmp_path / "m.parquet")
    write_manifest([{"image_id": "p", "uri": uri, "height": 28, "width": 36},
                    {"image_id": "q", "uri": uri, "height": 0}], url)
    with pytest.raises(ManifestError, match="height must be a positive integer, got 0"):
        read_manifest(url)


def test_make_manifest_writes_each_images_size(tmp_path):
    from jobs.make_manifest import main

    photo(tmp_path / "photos", "wide", 20, 50) if (tmp_path / "photos").mkdir() is None else None
    out = str(tmp_path / "m.parquet")
    assert main([str(tmp_path / "photos"), "--out", out]) == 0
    (task,) = read_manifest(out)
    assert (task.height, task.width) == (20, 50)


def test_a_bucket_trains_each_image_as_it_trains_alone_and_fails_bad_ones_alone(tmp_path):
    cfg = tiny_config(niter=4)
    rows = [manifest_row(f"i{k}", photo(tmp_path, f"i{k}", 28, 36, seed=k), cfg, 10 + k)
            for k in range(3)]
    broken = tmp_path / "broken.png"
    broken.write_bytes((tmp_path / "i0.png").read_bytes()[:200])
    rows.insert(1, manifest_row("broken", broken.as_uri(), cfg, 5))
    job = JobSettings(output=str(tmp_path / "bucket"), num_samples=1, quality_samples=0,
                      sifid_samples=0, device="cpu", job_id="j1")
    results = train_bucket(rows, job)
    assert [(r.image_id, r.status) for r in results] == [
        ("i0", "done"), ("broken", "failed"), ("i1", "done"), ("i2", "done")]
    assert "truncated or corrupt image data" in results[1].error
    alone = JobSettings(output=str(tmp_path / "alone"), num_samples=1, quality_samples=0,
                        sifid_samples=0, device="cpu")
    assert train_image(rows[2], alone).status == "done"
    together, single = (torch.load(tmp_path / folder / "i1" / "model" / "scale_00.pt",
                                   weights_only=True) for folder in ("bucket", "alone"))
    # The image's own random stream and pyramid, whichever images share its bucket (its
    # weights after many float32 steps are compared in float64 in test_train_many).
    assert torch.equal(together["z_rec"], single["z_rec"])
    assert torch.equal(together["real"], single["real"])
    assert sorted(p.name for p in (tmp_path / "bucket" / "i1").rglob("*.p*")) == \
        sorted(p.name for p in (tmp_path / "alone" / "i1").rglob("*.p*"))
    # A retry of the same job reports what an earlier attempt finished as done.
    again = train_bucket(rows, job)
    assert [r.status for r in again] == ["done", "failed", "done", "done"]
    assert [r.status for r in train_bucket(rows, JobSettings(**{**job.__dict__,
                                                                "job_id": "j2"}))] == [
        "skipped", "failed", "skipped", "skipped"]
    record = json.loads((tmp_path / "bucket" / "i0" / "_SUCCESS").read_text())
    assert record["job_id"] == "j1"
