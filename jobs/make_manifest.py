"""Build a Parquet manifest from a folder or glob of images (local or any fsspec URL).

    python jobs/make_manifest.py photos/ --out manifests/photos.parquet
    python jobs/make_manifest.py 's3://bucket/photos/**/*.jpg' --out s3://bucket/photos.parquet
    python jobs/make_manifest.py photos/ --out sr.parquet --task sr --sr-factor 4
    python jobs/make_manifest.py photos/ --out gifs.parquet --task animate --frames 50

Each image becomes a row of `image_id` (its file stem, made path-safe and unique), `uri` (its
full URL) and `height` and `width` (read from its header; the job buckets images of one size
with them); with --task, every row also gets that task and its parameters. Add override columns
(max_size, niter, seed, ...) afterwards with any Parquet tool.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if not __package__:  # run as a script from a checkout, not installed (jobs.*)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.buckets import header_sizes
from pipeline.catalog import manifest_rows_from, write_manifest
from pipeline.storage import TransientError, check_credentials, exists
from pipeline.tasks import TASKS, row_task, task_named
from singan.errors import InputError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, list the images, write the manifest; the exit status (2: bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a folder, a folder URL (s3://bucket/prefix) or a glob "
                                       "(photos/*.jpg, s3://b/p/**/*.png); quote globs")
    parser.add_argument("--out", required=True, help="where to write the manifest (any fsspec URL)")
    parser.add_argument("--recursive", action="store_true",
                        help="also list images in subfolders of a folder SOURCE")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--task", choices=list(TASKS), default="train",
                        help="what every row does after training: nothing more (train), "
                             "super-resolution (sr, needs --sr-factor) or GIFs (animate); "
                             "default: %(default)s")
    parser.add_argument("--sr-factor", type=float, metavar="F",
                        help="sr: the upscaling factor, above 1 (such as 2, 4 or 8)")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="animate: frames per GIF (default: the job's, 100)")
    parser.add_argument("--fps", type=float, metavar="FPS",
                        help="animate: GIF frame rate (default: the job's, 10)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log each storage retry and each image whose size is unknown")
    args = parser.parse_args(argv)
    # Quiet by default: a failure is the one line below, whatever retries led to it.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")

    try:
        params = task_params(args)
        check_credentials(args.source)  # S3 without credentials: one line, not a traceback
        check_credentials(args.out)
        if not args.overwrite and exists(args.out):
            raise InputError(f"{args.out} already exists; pass --overwrite to replace it")
        rows = manifest_rows_from(args.source, recursive=args.recursive)
        if not rows:
            hint = "" if args.recursive or "*" in args.source else "; --recursive also looks in subfolders"
            raise InputError(f"no images found at {args.source} (extensions: png, jpg, jpeg, "
                             f"bmp, gif, tif, tiff, webp){hint}")
        sizes = header_sizes([row["uri"] for row in rows])
        write_manifest([{**row, **params, **size_columns(size)}
                        for row, size in zip(rows, sizes, strict=True)], args.out)
    except (InputError, TransientError) as error:  # bad input, or storage that kept failing
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(rows)} images -> {args.out}" + (f" (task {args.task})" if params else ""))
    return 0


def size_columns(size: tuple[int, int] | None) -> dict:
    """height and width of a row; null (left for the job to read) when the header is bad."""
    height, width = size if size is not None else (None, None)
    return {"height": height, "width": width}


def task_params(args: argparse.Namespace) -> dict:
    """The task columns every row gets (none for train), checked as the job will check them;
    an InputError names the options at fault."""
    row = {"task": args.task, "sr_factor": args.sr_factor, "frames": args.frames, "fps": args.fps}
    _, _, problems = row_task(row)
    if problems:  # in the manifest's words: the option --sr-factor fills the column sr_factor
        raise InputError(f"--task {args.task}: " + "; ".join(problems))
    task = task_named(args.task)
    # The values given; the others stay null in the manifest (the job's defaults).
    return task.identity({p.name: row[p.name] for p in task.params if row[p.name] is not None})


if __name__ == "__main__":
    sys.exit(main())
