"""Load: a 200-image manifest of tiny images through the training job on the local 2-CPU Ray
cluster. The job completes with every row done, the driver never has more than --max-in-flight
tasks submitted, and its memory stays bounded; it prints images per minute and the driver's peak
RSS (`pytest -s` shows them).

The driver is jobs/train_manifest.py, unchanged, run as a subprocess against the cluster
(RAY_ADDRESS) under a small wrapper that counts, from outside fleet.stream, the tasks it submits
and the results it hands to the progress display, and records the process's peak RSS."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import fleet
from pipeline.catalog import write_manifest
from singan.data.examples import pebbles
from singan.data.image import to_pil

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 200
MAX_IN_FLIGHT = 3  # neither the cluster's 2 slots nor the default 2 x 2: the flag must be used
MiB = 1024 * 1024
# The driver holds one small result per image and the job's libraries (torch, Ray, pyarrow,
# fsspec): measured at about 370 MiB. A driver that kept images or models would grow far past
# this with 200 rows.
DRIVER_RSS_LIMIT = 800 * MiB
# Two scales of 16-20 px, the narrowest networks, one iteration, no samples, no metrics; one
# image per Ray task, so that 200 tasks go through the driver's bound.
TINY = ["--preset", "quick", "--set", "max_size=20", "--set", "min_size=12", "--set",
        "num_scales=2", "--set", "nfc=8", "--set", "max_nfc=8", "--set", "niter=1",
        "--num-samples", "0", "--sifid-samples", "0", "--quality-samples", "0",
        "--gpus-per-task", "0", "--no-tracking", "--images-per-task", "1"]

# The wrapper: argv is REPORT SCRIPT ARGS... It patches fleet.stream to count, then runs the job
# script as __main__; its exit status is the job's. The peak RSS is VmHWM from /proc, which
# belongs to this process's own address space: ru_maxrss (and wait4's) would start at the size
# of the pytest process, since Linux carries the high-water mark over fork and exec.
DRIVER = textwrap.dedent("""
    import json, runpy, sys
    from jobs import fleet

    report_path, script, *args = sys.argv[1:]
    seen = {"submitted": 0, "collected": 0, "max_in_flight": 0}
    stream = fleet.stream

    def counting_stream(submit, items, **options):
        progress = options["progress"]
        finished = progress.finished

        def submit_counted(item):
            seen["submitted"] += 1
            seen["max_in_flight"] = max(seen["max_in_flight"],
                                        seen["submitted"] - seen["collected"])
            return submit(item)

        def finished_counted(result, in_flight):
            seen["collected"] += 1
            finished(result, in_flight)

        progress.finished = finished_counted
        return stream(submit_counted, items, **options)

    def peak_rss():
        with open("/proc/self/status") as fp:
            return int(next(l for l in fp if l.startswith("VmHWM:")).split()[1]) * 1024

    fleet.stream = counting_stream
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        seen["peak_rss"] = peak_rss()
        with open(report_path, "w") as fp:
            json.dump(seen, fp)
""")


def tiny_png(index: int) -> bytes:
    buffer = io.BytesIO()
    to_pil(pebbles(16 + index % 5, 16 + index * 3 % 5, seed=index)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_driver(args: list[str], report: Path, log: Path, env: dict, timeout: float) -> int:
    """Run the wrapped driver to its end; its exit status. Killed (its whole session) when it
    outlives `timeout` or the test fails."""
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", DRIVER, str(report),
                                    "jobs/train_manifest.py", *args], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_stream_keeps_max_in_flight_when_waits_time_out(monkeypatch):
    """fleet.stream with Ray replaced: waits that time out (slow trainings) must not let it
    submit more. It used to add one task per timed-out wait."""
    state = {"in_flight": 0, "peak": 0, "waits": 0}

    def submit(item):
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        return item  # the "ObjectRef"

    def wait(refs, num_returns, timeout):
        state["waits"] += 1
        if state["waits"] % 4:  # three timeouts, then one finished task
            return [], refs
        state["in_flight"] -= 1
        return refs[:1], refs[1:]

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(wait=wait, get=lambda r: r))
    progress = types.SimpleNamespace(finished=lambda result, in_flight: None, any_finished=True,
                                     submitted=lambda items: None, show=lambda in_flight: None,
                                     close=lambda: None)
    placement = types.SimpleNamespace(window=lambda: 3, slots=3, refresh=lambda: None)
    results = fleet.stream(submit, range(10), placement=placement, on_crash=None,
                           progress=progress)
    assert sorted(results) == list(range(10))
    assert state["peak"] == 3


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_200_tiny_images_with_bounded_tasks_in_flight_and_driver_memory(tmp_path, ray_cluster):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for index in range(IMAGES):
        path = images / f"tiny_{index:03d}.png"
        path.write_bytes(tiny_png(index))
        rows.append({"image_id": f"tiny_{index:03d}", "uri": path.as_uri()})
    manifest, output = tmp_path / "manifest.parquet", tmp_path / "out"
    write_manifest(rows, str(manifest))

    report, log = tmp_path / "driver.json", tmp_path / "driver.log"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    code = run_driver(["--manifest", str(manifest), "--output", str(output),
                       "--max-in-flight", str(MAX_IN_FLIGHT), *TINY], report, log, env,
                      timeout=900)
    seconds = time.perf_counter() - start
    logs = log.read_text()
    assert code == 0, logs

    # Every row trained, each exactly once.
    table = pq.read_table(output / "_results.parquet").to_pylist()
    assert sorted(row["image_id"] for row in table) == [row["image_id"] for row in rows]
    assert all(row["status"] == "done" and row["num_scales"] == 2 for row in table), [
        row for row in table if row["status"] != "done"][:3]
    assert len(list(output.glob("*/_SUCCESS"))) == IMAGES
    assert f"{IMAGES} images in" in logs and f"{IMAGES} trained, 0 already done, 0 failed" in logs

    # Never more than --max-in-flight submitted and not yet collected; and that many were.
    seen = json.loads(report.read_text())
    assert seen["submitted"] == seen["collected"] == IMAGES
    assert seen["max_in_flight"] == MAX_IN_FLIGHT

    job_seconds = float(re.search(rf"{IMAGES} images in ([\d.]+) s", logs).group(1))
    print(f"\n{IMAGES} images: {IMAGES / job_seconds * 60:.0f} images/min in the job "
          f"({job_seconds:.1f} s), {IMAGES / seconds * 60:.0f} images/min with the driver's "
          f"start ({seconds:.1f} s); driver peak RSS {seen['peak_rss'] / MiB:.0f} MiB; "
          f"at most {seen['max_in_flight']} tasks in flight")
    assert seen["peak_rss"] < DRIVER_RSS_LIMIT
