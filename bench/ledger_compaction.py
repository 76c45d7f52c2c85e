"""The end of a job at N images: the driver's spool of N results and the ledger's compaction into
`_results.parquet` (pipeline.ledger), on local files, in this process, as jobs/train_manifest.py
does them. Prints one JSON (written to bench/results/ with --out NAME): seconds and the process's
peak RSS growth for each step, and the table's size.

    python bench/ledger_compaction.py --rows 100000,300000,1000000 --out ledger_compaction_1m

Each N runs in its own process, so that one N's peak does not hide the next. The peak RSS is
VmHWM, reset before each step (/proc/self/clear_refs, Linux).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS


def one(rows: int) -> dict:
    """Spool and compact `rows` results in this process."""
    import pyarrow.parquet as pq

    from pipeline.ledger import Entry, Ledger, Spool, Status, now_iso

    def step(name: str, work) -> dict:
        reset_peak()
        before = rss_mib("VmRSS")
        started = time.perf_counter()
        value = work()
        figures[name] = {"seconds": round(time.perf_counter() - started, 2),
                         "rss_before_mib": round(before, 1),
                         "peak_growth_mib": round(rss_mib("VmHWM") - before, 1)}
        return value

    figures: dict = {"rows": rows}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as output:
        spool = Spool()

        def fill():
            for i in range(rows):
                spool.add(Entry(image_id=f"img{i:07d}", status=Status.DONE, error=None,
                                num_scales=11, seconds=120.5, sifid=0.05, mlflow_run_id=f"{i:032x}",
                                output_url=f"s3://bucket/out/img{i:07d}", config_hash="ab12cd34ef56",
                                job_id="raysubmit_0123456789", node="f" * 56, device="cuda",
                                finished_at=now_iso()))

        step("spool", fill)
        url = step("compact", lambda: Ledger(output).compact(spool.batches()))
        spool.close()
        table = Path(output) / url.rsplit("/", 1)[1]
        figures["table_rows"] = pq.ParquetFile(table).metadata.num_rows
        figures["table_mib"] = round(table.stat().st_size / 2**20, 1)
    figures["process_peak_rss_mib"] = round(rss_mib("VmHWM"), 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated N")
    parser.add_argument("--out", help="write bench/results/NAME.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's N
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [json.loads(subprocess.run([sys.executable, __file__, "--one", n], check=True,
                                      capture_output=True, text=True, env=env).stdout)
            for n in args.rows.split(",")]
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()
    result = {"command": "python bench/ledger_compaction.py " + " ".join(sys.argv[1:]),
              "code": code, "runs": runs, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(result, indent=2))
    if args.out:
        (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
