"""The training job's driver over a whole long job, in this process: jobs/train_manifest.main on
an N-row manifest, on the local Ray it starts itself, with every bucket replaced by a short sleep
that returns done results (bench/fleet_sim.sleeping_bucket: no storage, no tracking), so that
only the driver works. Prints one JSON (written to bench/results/ with --out NAME): the
process's RSS every --every results, and its growth per image after the first 10,000.

    python bench/driver_memory.py --rows 150000 --out driver_memory_150k
    MALLOC_ARENA_MAX=16 python bench/driver_memory.py --rows 150000   # glibc's default, 2 cores

About 4.5 minutes per 150,000 rows on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=150_000)
    p.add_argument("--every", type=int, default=10_000, help="results between two readings")
    p.add_argument("--bucket-seconds", type=float, default=0.05, help="each bucket's sleep")
    p.add_argument("--out", help="write bench/results/NAME.json")
    args = p.parse_args()
    os.environ["FLEET_SIM_BUCKET_SECONDS"] = str(args.bucket_seconds)

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.fleet_sim import sleeping_bucket
    from jobs import train_manifest

    folder = Path(tempfile.mkdtemp(prefix="driver-memory-"))
    n = args.rows
    pq.write_table(pa.table({"image_id": [f"img{i:07d}" for i in range(n)],
                             "uri": [f"file:///images/src{i % 1000:04d}.png" for i in range(n)],
                             "height": [250] * n, "width": [250] * n}), folder / "m.parquet")
    train_manifest.train_bucket = sleeping_bucket
    train_manifest.stem_weights = lambda *a, **k: None  # no SIFID: nothing to download
    readings: list[tuple[int, float]] = []  # (results so far, RSS MiB)
    results = iter(range(1, n + 1))
    add = train_manifest.Tally.add

    def counted(self, entry, placement):
        add(self, entry, placement)
        count = next(results)
        if count % args.every == 0:
            readings.append((count, round(rss_mib(), 1)))

    train_manifest.Tally.add = counted
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet:  # one progress line per image
        stdout, sys.stdout = sys.stdout, quiet
        try:
            code = train_manifest.main(["--manifest", str(folder / "m.parquet"), "--output",
                                        str(folder / "out"), "--no-tracking",
                                        "--gpus-per-task", "0", "--images-per-task", "16"])
        finally:
            sys.stdout = stdout
    seconds = time.perf_counter() - started
    base = next((mib for count, mib in readings if count >= 10_000), None)
    last_count, last = readings[-1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    result = {
        "command": "python bench/driver_memory.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX"),
        "rows": n, "exit": code, "seconds": round(seconds, 1),
        "rss_mib_by_results": readings,
        "bytes_per_image_after_10k": round((last - base) * 2**20 / (last_count - 10_000))
        if base is not None and last_count > 10_000 else None,
        "code": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
