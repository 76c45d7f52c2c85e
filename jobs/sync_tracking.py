"""Send to MLflow the metrics, params and pictures that trainings could not send.

    python jobs/sync_tracking.py --output s3://bucket/outputs [--tracking-uri URL] [--ids a,b]

Each image's stored points (metrics/) are the source of truth. For every image the output's
ledger lists (done or failed: pipeline.ledger, one LIST per 1,000 images, no glob of the image
folders) that was tracked (has tracking.json), the points, params and pictures that the MLflow
run lacks are sent; points already there (same key, step and timestamp) are not sent again, so
the script can run any number of times. --tracking-uri sends to another server than the one
the training used (a new run is made there). Exit status 1 when some image could not be synced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as a script from a checkout, not installed (jobs.*)
    sys.path.insert(0, str(ROOT))

from collections.abc import Iterator

from pipeline.ledger import Ledger
from pipeline.storage import ImageStore, TransientError
from pipeline.tracking import TRACKING, sync_image
from singan.errors import one_line


def image_ids(output: str) -> Iterator[str]:
    """The images of the output's ledger, each once, as its listing comes."""
    seen: set[str] = set()
    for _, (image_id, *_) in Ledger(output).names():
        if image_id not in seen:
            seen.add(image_id)
            yield image_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sync_tracking.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, metavar="URL", help="the training job's output root")
    p.add_argument("--tracking-uri", metavar="URL",
                   help="send to this server instead of the one recorded per image")
    p.add_argument("--ids", metavar="A,B", help="only these image ids")
    args = p.parse_args(argv)

    ids = args.ids.split(",") if args.ids else image_ids(args.output)
    failed = count = 0
    try:
        for image_id in ids:
            count += 1
            failed += not sync_one(args, image_id)
    except TransientError as err:  # the ledger's listing: storage kept failing
        print(f"sync_tracking: error: {err}", file=sys.stderr)
        return 1
    print(f"{count - failed} of {count} images in sync")
    return 1 if failed else 0


def sync_one(args: argparse.Namespace, image_id: str) -> bool:
    """Sync one image, printing what happened; whether it is in sync."""
    try:
        report = sync_image(ImageStore(args.output, image_id), args.tracking_uri)
    except Exception as err:  # noqa: BLE001 - report and go on with the other images
        print(f"{image_id}: not synced ({one_line(err)})", file=sys.stderr)
        return False
    if report is None:
        print(f"{image_id}: never tracked (no {TRACKING})")
    else:
        print(f"{image_id}: run {report.run_id}{' (new)' if report.created_run else ''}, "
              f"{report.points_sent} points and {report.artifacts_sent} pictures sent")
    return True


if __name__ == "__main__":
    sys.exit(main())
