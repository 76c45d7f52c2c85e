"""Send to MLflow the metrics, params and pictures that trainings could not send.

    python jobs/sync_tracking.py --output s3://bucket/outputs [--tracking-uri URL] [--ids a,b]

Each image's metrics.jsonl is the source of truth. For every image folder under --output that
was tracked (has tracking.json), the points, params and per-scale pictures that the MLflow run
lacks are sent; points already there (same key, step and timestamp) are not sent again, so the
script can run any number of times. --tracking-uri sends to another server than the one the
training used (a new run is made there). Exit status 1 when some image could not be synced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.storage import ImageStore, Storage
from pipeline.tracking import TRACKING, sync_image
from singan.errors import one_line


def image_ids(output: Storage) -> list[str]:
    """The image folders under the output root that hold a tracking.json."""
    found = output.fs.glob(output.path(f"*/{TRACKING}"))
    return sorted(path.rstrip("/").split("/")[-2] for path in found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sync_tracking.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, metavar="URL", help="the training job's output root")
    p.add_argument("--tracking-uri", metavar="URL",
                   help="send to this server instead of the one recorded per image")
    p.add_argument("--ids", metavar="A,B", help="only these image ids")
    args = p.parse_args(argv)

    output = Storage(args.output)
    ids = args.ids.split(",") if args.ids else image_ids(output)
    failed = 0
    for image_id in ids:
        try:
            report = sync_image(ImageStore(args.output, image_id), args.tracking_uri)
        except Exception as err:  # noqa: BLE001 - report and go on with the other images
            print(f"{image_id}: not synced ({one_line(err)})", file=sys.stderr)
            failed += 1
            continue
        if report is None:
            print(f"{image_id}: never tracked (no {TRACKING})")
        else:
            print(f"{image_id}: run {report.run_id}{' (new)' if report.created_run else ''}, "
                  f"{report.points_sent} points and {report.artifacts_sent} pictures sent")
    print(f"{len(ids) - failed} of {len(ids)} images in sync")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
