"""The README's picture of `make demo`: each image's final picture (the real image, its
reconstruction, then samples) one under the other, enlarged without smoothing so that the
64-px pixels show as they are.

    python infra/local/demo_picture.py runs/demo/outputs docs/images/demo_balloons.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

GAP = 6  # white pixels between rows, before enlarging


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outputs", type=Path, help="the job's output folder")
    p.add_argument("picture", type=Path, help="the PNG to write")
    p.add_argument("--zoom", type=int, default=3, help="enlargement (default: %(default)s)")
    args = p.parse_args(argv)
    finals = sorted(args.outputs.glob("*/samples/final.png"))
    if not finals:
        raise SystemExit(f"{args.outputs}: no */samples/final.png (run make demo first)")
    rows = [Image.open(path).convert("RGB") for path in finals]
    width = max(row.width for row in rows)
    sheet = Image.new("RGB", (width, sum(row.height for row in rows) + GAP * (len(rows) - 1)),
                      "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + GAP
    sheet = sheet.resize((sheet.width * args.zoom, sheet.height * args.zoom), Image.NEAREST)
    args.picture.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.picture, optimize=True)
    print(f"{args.picture}: {len(rows)} images, {sheet.width} x {sheet.height}")


if __name__ == "__main__":
    main()
