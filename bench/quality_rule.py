"""The quality verdict's rule (singan.metrics.verdict.judge) measured on the fidelity runs
already recorded in bench/results/fidelity_48px_*.json (both sides, official and ours, every
photo and seed): which runs it calls suspect, against the runs bench/fidelity.py's own rule calls failed (patch
SWD above FAILED x the median of the other side's runs on that photo: a rule that needs other
runs, which a single training does not have).

    python bench/quality_rule.py --out quality_rule_fidelity

The recorded runs hold patch SWD, nearest-patch distance and diversity per run; the rule's
yardstick (the blurred real image's patch SWD) is computed here from the photos, with the
runs' own pyramid settings. The blank-sample and NaN rules need the samples, which the records
do not keep: they are not exercised here (tests/test_verdict.py checks them on made-up samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import singan
from bench.fidelity import DEFAULT_PHOTOS, failed_runs
from singan.data.image import load_image
from singan.metrics.verdict import MAX_SWD_RATIO, MIN_DIVERSITY, blur_swd, judge
from singan.recipes import recipe_named

RESULTS = ROOT / "bench" / "results"


def records(paths: list[Path]) -> list[dict]:
    """Every run once: (side, settings, photo, seed) with its metrics and whether fidelity's
    rule failed it. Combined reports repeat their parts and are skipped."""
    runs: dict[tuple, dict] = {}
    for path in paths:
        report = json.loads(path.read_text())
        if report.get("combined"):
            continue
        failed = failed_runs(report["runs"])
        ours = json.dumps([report["ours_config"], report.get("ours_quirks", [])], sort_keys=True)
        for run in report["runs"]:
            for side, settings in (("official", "official"), ("ours", ours)):
                key = (side, settings, run["photo"], run["seed"])
                name = f"{run['photo']}:{run['seed']}"
                was_failed = name in failed[side]
                if key in runs:  # the same cached run in another report
                    runs[key]["failed"] |= was_failed
                    continue
                runs[key] = {"side": side, "report": path.name, "photo": run["photo"],
                             "seed": run["seed"], "failed": was_failed,
                             "max_size": report["settings"]["max_size"], **run[side]}
    return list(runs.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reports", type=Path, nargs="+",
                   default=sorted(RESULTS.glob("fidelity_48px_*.json")))
    p.add_argument("--photo-dir", type=Path, default=DEFAULT_PHOTOS)
    p.add_argument("--out", help="write bench/results/NAME.json")
    args = p.parse_args()
    torch.set_num_threads(1)

    runs = records(args.reports)
    yardsticks = {}
    for photo, max_size in sorted({(r["photo"], r["max_size"]) for r in runs}):
        cfg = singan.config("paper", max_size=max_size)
        image = load_image(args.photo_dir / photo)
        reals = recipe_named(cfg.recipe).build_reals(image, singan.plan(*image.shape[-2:], cfg))
        yardsticks[photo, max_size] = blur_swd(reals)
    for run in runs:
        run["blur_swd"] = yardsticks[run["photo"], run["max_size"]]
        run["swd_ratio"] = run["patch_swd"] / run["blur_swd"]
        verdict = judge({"patch_swd": run["patch_swd"], "diversity": run["diversity"],
                         "blur_swd": run["blur_swd"]})
        run["quality"], run["reason"] = verdict.quality, verdict.reason

    def names(chosen):
        return sorted(f"{r['side']} {r['report']} {r['photo']}:{r['seed']}" for r in chosen)

    flagged = [r for r in runs if r["quality"] != "ok"]
    failed = [r for r in runs if r["failed"]]
    ratios = sorted((r["swd_ratio"] for r in runs), reverse=True)
    result = {
        "command": "python bench/quality_rule.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "rule": {"max_swd_ratio": MAX_SWD_RATIO, "min_diversity": MIN_DIVERSITY},
        "runs": len(runs), "failed_by_fidelity_rule": len(failed), "suspect": len(flagged),
        "failed_and_suspect": names(r for r in failed if r in flagged),
        "failed_not_suspect": names(r for r in failed if r not in flagged),
        "false_alarms": names(r for r in flagged if not r["failed"]),
        "highest_swd_ratios": [round(x, 2) for x in ratios[:5]],
        "median_swd_ratio": round(ratios[len(ratios) // 2], 2),
        "lowest_diversity": round(min(r["diversity"] for r in runs), 3),
        "yardsticks": {f"{photo}@{size}": round(v, 4) for (photo, size), v in yardsticks.items()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
