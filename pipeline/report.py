"""The evaluation's tables and pictures, built as the results stream in, so that 100,000 models
cost the driver a few numbers each: every sample's SIFID (sifid.parquet) and every image's means
(images.parquet), spooled to local files; the overall numbers (summary.json); a SIFID histogram
(matplotlib, which MLflow brings along); and an HTML report of the REPORT_IMAGES images with the
highest SIFID and as many with the lowest, beside their samples."""

from __future__ import annotations

import heapq
import html
import io
import json
import math
import tempfile
from array import array

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.evaluate import ROWS, EvalResult
from pipeline.ledger import Status
from pipeline.storage import Storage

REPORT_IMAGES = 50  # images shown in report.html at each end of the SIFID ranking
LISTED_FAILURES = 100  # failed models named in summary.json and the report (all are counted)
# One row per image and start scale: its samples' means.
IMAGES = pa.schema([("image_id", pa.string()), ("start", pa.string()),
                    ("sifid_mean", pa.float64()), ("sifid_std", pa.float64()),
                    ("diversity", pa.float64()), ("patch_swd_mean", pa.float64()),
                    ("nn_patch_distance_mean", pa.float64())])
MEANS = ("sifid_mean", "diversity", "patch_swd_mean", "nn_patch_distance_mean")


class Report:
    """The evaluation's outputs for `starts` (the paper's names of start scales) and Inception
    `dims`, fed one EvalResult at a time (`add`), written at the end (`write`)."""

    def __init__(self, starts: list[str], dims: int):
        self.starts, self.dims = starts, dims
        self._folder = tempfile.TemporaryDirectory(prefix="singan-eval-")
        self._rows = _Buffered(f"{self._folder.name}/sifid.parquet", ROWS)
        self._images = _Buffered(f"{self._folder.name}/images.parquet", IMAGES)
        self.sifids = {name: array("d") for name in starts}  # every sample's, for the histogram
        # Per start: the number of images, the sums of their means, and of squared SIFID means.
        self.count = dict.fromkeys(starts, 0)
        self.sums = {name: dict.fromkeys(MEANS, 0.0) for name in starts}
        self.squares = dict.fromkeys(starts, 0.0)
        self.failed: dict[str, str] = {}
        self.failed_count = 0
        self.evaluated = 0
        self._worst: list = []  # heaps of (key, order, result) at each end of the ranking
        self._best: list = []
        self._order = 0

    def add(self, result: EvalResult) -> None:
        if result.status == Status.FAILED:
            self.failed_count += 1
            if len(self.failed) < LISTED_FAILURES:
                self.failed[result.image_id] = result.error
            return
        self.evaluated += 1
        self._rows.extend(result.rows)
        for row in result.rows:
            self.sifids[row["start"]].append(row["sifid"])
        images = []
        for name, values in result.summary.items():
            images.append({"image_id": result.image_id, "start": name, **values})
            self.count[name] += 1
            for key in MEANS:
                self.sums[name][key] += values[key]
            self.squares[name] += values["sifid_mean"] ** 2
        self._images.extend(images)
        first = result.summary.get(self.starts[0])
        if first is not None:
            self._order += 1
            for heap, key in ((self._worst, first["sifid_mean"]),
                              (self._best, -first["sifid_mean"])):
                item = (key, self._order, result)
                if len(heap) < REPORT_IMAGES:
                    heapq.heappush(heap, item)
                else:
                    heapq.heappushpop(heap, item)

    def sifid_values(self) -> list[list[float]]:
        """Every sample's SIFID, one list per start scale (the histogram's values)."""
        return [list(self.sifids[name]) for name in self.starts]

    def summary(self) -> dict:
        """Per start scale: the mean over images of each image's mean SIFID, diversity, patch
        SWD and nearest-patch distance (as the paper reports), and the spread of SIFID between
        images; the failed models (the first LISTED_FAILURES) and the counts."""
        overall = {}
        for name in self.starts:
            n = self.count[name]
            if n:
                means = {key: total / n for key, total in self.sums[name].items()}
                spread = math.sqrt(max(0.0, self.squares[name] / n - means["sifid_mean"] ** 2))
                overall[name] = {**means, "sifid_std_between_images": spread, "images": n}
        return {"overall": overall, "failed": self.failed, "failed_count": self.failed_count,
                "evaluated": self.evaluated}

    def write(self, out: Storage) -> dict:
        """sifid.parquet, images.parquet, summary.json, sifid_histogram.png and report.html
        into `out`; returns the summary."""
        self._rows.close()
        self._images.close()
        for name in ("sifid.parquet", "images.parquet"):
            with open(f"{self._folder.name}/{name}", "rb") as file:
                out.put(name, file.read())
        summary = self.summary()
        out.put("summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        out.put("sifid_histogram.png", histogram(self.sifid_values(), self.starts))
        shown = [item[2] for item in sorted(self._worst, reverse=True)]
        best = [item[2] for item in sorted(self._best, reverse=True)]
        shown += [r for r in best if r.image_id not in {s.image_id for s in shown}]
        out.put("report.html", html_report(shown, summary, self.starts, self.dims).encode())
        self._folder.cleanup()
        return summary


class _Buffered:
    """A local Parquet file written BUFFER_ROWS rows at a time: a row group per model would grow
    the file's metadata (and the driver) by kilobytes per model."""

    BUFFER_ROWS = 10_000

    def __init__(self, path: str, schema: pa.Schema):
        self.schema = schema
        self.writer = pq.ParquetWriter(path, schema)
        self.rows: list[dict] = []

    def extend(self, rows: list[dict]) -> None:
        self.rows += rows
        if len(self.rows) >= self.BUFFER_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_batch(pa.RecordBatch.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def histogram(values: list[list[float]], starts: list[str]) -> bytes:
    """A PNG histogram of every sample's SIFID (`values`: one list per start scale), one colour
    per start scale (matplotlib)."""
    buffer = io.BytesIO()
    histogram_figure(values, starts).savefig(buffer, format="png")
    return buffer.getvalue()


def histogram_figure(values: list[list[float]], starts: list[str]):
    """The histogram of `histogram` as a matplotlib Figure (MLflow's log_figure takes one)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: workers and CI render to files
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    if any(values):
        axes.hist(values, bins=20, label=[f"start {name}" for name in starts])
        axes.legend()
    axes.set_xlabel("SIFID (lower: closer to the real image)")
    axes.set_ylabel("samples")
    return figure


def html_report(results: list[EvalResult], summary: dict, starts: list[str], dims: int) -> str:
    """One page: the overall numbers, the histogram, the failed models, and for each of
    `results` (the highest SIFID first, then the lowest) the real image beside its samples with
    their SIFID. Pictures are linked by relative paths inside the output."""
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
    parts.append("</table><p><img src='sifid_histogram.png' style='height:320px'></p>")
    if summary["failed_count"]:
        parts.append(f"<h2>{summary['failed_count']} failed</h2><ul>")
        parts += [f"<li>{esc(image_id)} failed: {esc(error or '')}</li>"
                  for image_id, error in summary["failed"].items()]
        parts.append("</ul>")
    parts.append(f"<h2>The {len(results)} images at the ends of the SIFID ranking</h2>"
                 "<p>The highest SIFID first, then the lowest; under each sample: SIFID / patch "
                 "SWD. Every image's numbers are in images.parquet, every sample's in "
                 "sifid.parquet.</p>")
    for r in results:
        parts.append(f"<h2>{esc(r.image_id)}</h2>")
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
