"""The evaluation's tables and pictures: every sample's SIFID, the summary, an HTML report and a
SIFID histogram (matplotlib, which MLflow brings along)."""

from __future__ import annotations

import html
import io
import json
import statistics

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.evaluate import ROWS, EvalResult
from pipeline.results import Status
from pipeline.storage import Storage


def summarise(results: list[EvalResult], starts: list[str]) -> dict:
    """Per image and overall, per start scale: mean SIFID and diversity (overall: mean of the
    per-image means, as the paper reports)."""
    done = [r for r in results if r.status != Status.FAILED]
    overall = {}
    for name in starts:
        per_image = [r.summary[name] for r in done if name in r.summary]
        if per_image:
            overall[name] = {
                "sifid_mean": statistics.fmean(p["sifid_mean"] for p in per_image),
                "sifid_std_between_images": statistics.pstdev(p["sifid_mean"] for p in per_image),
                "diversity": statistics.fmean(p["diversity"] for p in per_image),
                "patch_swd_mean": statistics.fmean(p["patch_swd_mean"] for p in per_image),
                "nn_patch_distance_mean": statistics.fmean(p["nn_patch_distance_mean"]
                                                           for p in per_image),
                "images": len(per_image)}
    return {"overall": overall, "images": {r.image_id: r.summary for r in done},
            "failed": {r.image_id: r.error for r in results if r.status == Status.FAILED}}


def histogram(rows: list[dict], starts: list[str]) -> bytes:
    """A PNG histogram of every sample's SIFID, one colour per start scale (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: workers and CI render to files
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    values = [[r["sifid"] for r in rows if r["start"] == name] for name in starts]
    if any(values):
        axes.hist(values, bins=20, label=[f"start {name}" for name in starts])
        axes.legend()
    axes.set_xlabel("SIFID (lower: closer to the real image)")
    axes.set_ylabel("samples")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def html_report(results: list[EvalResult], summary: dict, starts: list[str], dims: int) -> str:
    """One page: the overall numbers, the histogram, and per image the real image beside its
    samples with their SIFID. Pictures are linked by relative paths inside the output."""
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>SIFID evaluation</title>",
             "<style>body{font-family:sans-serif;margin:2em}img{image-rendering:pixelated;"
             "height:96px;margin:2px}figure{display:inline-block;margin:4px;text-align:center}"
             "figcaption{font-size:12px}table{border-collapse:collapse}td,th{border:1px solid "
             "#ccc;padding:4px 8px}</style>",
             f"<h1>SIFID evaluation (dims {dims})</h1><table><tr><th>start</th><th>images</th>"
             "<th>mean SIFID</th><th>diversity</th><th>patch SWD</th>"
             "<th>nearest-patch distance</th></tr>"]
    for name, values in summary["overall"].items():
        parts.append(f"<tr><td>{esc(name)}</td><td>{values['images']}</td>"
                     f"<td>{values['sifid_mean']:.4f}</td><td>{values['diversity']:.3f}</td>"
                     f"<td>{values['patch_swd_mean']:.4f}</td>"
                     f"<td>{values['nn_patch_distance_mean']:.4f}</td></tr>")
    parts.append("</table><p>Under each sample: SIFID / patch SWD.</p>"
                 "<p><img src='sifid_histogram.png' style='height:320px'></p>")
    for r in sorted(results, key=lambda r: r.image_id):
        parts.append(f"<h2>{esc(r.image_id)}</h2>")
        if r.status == Status.FAILED:
            parts.append(f"<p>failed: {esc(r.error or '')}</p>")
            continue
        for name in starts:
            values = r.summary.get(name)
            if values is None:
                continue
            parts.append(f"<p>start {esc(name)}: SIFID {values['sifid_mean']:.4f} ± "
                         f"{values['sifid_std']:.4f}, diversity {values['diversity']:.3f}, "
                         f"patch SWD {values['patch_swd_mean']:.4f}, nearest-patch distance "
                         f"{values['nn_patch_distance_mean']:.4f}</p><div>"
                         f"<figure><img src='{esc(r.image_id)}/real.png'><figcaption>real"
                         "</figcaption></figure>")
            for row in (x for x in r.rows if x["start"] == name):
                parts.append(f"<figure><img src='{esc(r.image_id)}/{esc(name)}/sample_"
                             f"{row['sample']:02d}.png'><figcaption>{row['sifid']:.4f} / "
                             f"{row['patch_swd']:.4f}</figcaption></figure>")
            parts.append("</div>")
    return "\n".join(parts)


def write_all(results: list[EvalResult], out: Storage, starts: list[str], dims: int) -> dict:
    """sifid.parquet (one row per sample), summary.json, sifid_histogram.png, report.html."""
    rows = [row for r in results for row in r.rows]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=ROWS), buffer)
    out.put("sifid.parquet", buffer.getvalue())
    summary = summarise(results, starts)
    out.put("summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    out.put("sifid_histogram.png", histogram(rows, starts))
    out.put("report.html", html_report(results, summary, starts, dims).encode())
    return summary
