"""The scale of the weight-free metrics on real models: samples of a trained model next to a
horizontal flip and a Gaussian blur (sigma 1.5) of its training image at the same size.

    python bench/quality_scale.py runs/photo [runs/other ...] [--samples 8]

Prints JSON, one entry per model: patch SWD and nearest-patch distance ([0, 1] pixel units) of
the samples (mean), of the flip and of the blur, each against the real image of the finest scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

import singan
from singan.metrics.patches import nn_patch_distance, patch_swd


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def measure(real: torch.Tensor, others: list[torch.Tensor]) -> dict:
    return {"patch_swd": statistics.fmean(patch_swd(real, x[None] if x.dim() == 3 else x)
                                          for x in others),
            "nn_patch_distance": statistics.fmean(nn_patch_distance(real, x[None] if x.dim() == 3
                                                                    else x) for x in others)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model folders (singan train outputs)")
    p.add_argument("--samples", type=int, default=8)
    args = p.parse_args()
    report = {}
    for folder in args.models:
        model = singan.load(folder)
        real = model.reals[-1]
        fakes = singan.sample(model, args.samples,
                              generator=torch.Generator().manual_seed(model.seed))
        report[folder] = {
            "size": list(real.shape[-2:]),
            "samples": measure(real, list(fakes)),
            "flip": measure(real, [real.flip(-1)]),
            "blur_sigma_1.5": measure(real, [gaussian_blur(real, 1.5)]),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
