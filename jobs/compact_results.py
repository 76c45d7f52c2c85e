"""Rebuild a training output's results table from its ledger, after a driver died before its end.

    python jobs/compact_results.py --output s3://bucket/outputs

The training job ends by compacting the output's ledger (`_results/`, one small file per
finished or failed image, written by the tasks as images end) into `_results.parquet`, one row
per image, its latest entry. A driver killed before that leaves the ledger complete and the
table stale: this command writes it again (one LIST per 1,000 ledger files, and one GET per file
not in the table yet, many at once).

--from-folders first adds to the ledger every image folder with a _SUCCESS that it lacks: for
outputs trained before the ledger existed. It lists every file of the output (one LIST per 1,000 files on S3): a one-time migration, not something to run
on every job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a script from a checkout, not installed (jobs.*)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ledger import Entry, Ledger, Status
from pipeline.storage import SUCCESS, ImageStore, Storage, TransientError
from singan.errors import InputError, one_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compact_results.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, metavar="URL",
                        help="the training job's output root")
    parser.add_argument("--from-folders", action="store_true",
                        help="first add the finished image folders the ledger lacks (outputs "
                             "trained before the ledger existed)")
    args = parser.parse_args(argv)
    ledger = Ledger(args.output)
    try:
        if args.from_folders:
            print(f"{add_finished_folders(ledger)} finished images added to the ledger")
        url = ledger.compact()
    except (InputError, TransientError) as err:
        print(f"compact_results: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"results: {url}")
    return 0


def add_finished_folders(ledger: Ledger) -> int:
    """Write a ledger file for every image folder of the output whose _SUCCESS it lacks; how
    many were added."""
    known = {image_id for _, (image_id, _, status, _) in ledger.names() if status == Status.DONE}
    added = 0
    for page in Storage(ledger.output).iter_names():
        for name in page:
            image_id, _, rest = name.partition("/")
            if rest != SUCCESS or image_id in known or image_id.startswith("_"):
                continue
            store = ImageStore(ledger.output, image_id)
            done = store.success() or {}
            ledger.record(Entry(image_id, Status.DONE, None, done.get("num_scales"),
                                done.get("seconds", 0.0), done.get("sifid"), done.get("run_id"),
                                store.url, task=done.get("task", "train"),
                                config_hash=done.get("config_hash"), job_id=done.get("job_id"),
                                finished_at=done.get("finished_at")))
            added += 1
    return added


if __name__ == "__main__":
    sys.exit(main())
