"""Build a Parquet manifest from a folder or glob of images (local or any fsspec URL).

    python jobs/make_manifest.py photos/ --out manifests/photos.parquet
    python jobs/make_manifest.py 's3://bucket/photos/**/*.jpg' --out s3://bucket/photos.parquet

Each image becomes a row of `image_id` (its file stem, made path-safe and unique) and `uri` (its
full URL). Add override columns (max_size, niter, seed, ...) afterwards with any Parquet tool.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import fsspec

from pipeline.manifest import manifest_rows_from, write_manifest
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
    args = parser.parse_args(argv)

    try:
        fs, out_path = fsspec.core.url_to_fs(args.out)
        if not args.overwrite and fs.exists(out_path):
            raise InputError(f"{args.out} already exists; pass --overwrite to replace it")
        rows = manifest_rows_from(args.source, recursive=args.recursive)
        if not rows:
            hint = "" if args.recursive or "*" in args.source else "; --recursive also looks in subfolders"
            raise InputError(f"no images found at {args.source} (extensions: png, jpg, jpeg, "
                             f"bmp, gif, tif, tiff, webp){hint}")
        write_manifest(rows, args.out)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(rows)} images -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
