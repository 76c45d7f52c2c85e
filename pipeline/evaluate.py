"""Evaluate one trained pyramid as in the paper's table: samples generated from the coarsest scale
("N") and from finer ones ("N-1", ...), the SIFID of every sample against the real image, and the
diversity of the samples. The evaluation job fans this function out, one Ray task per model.

Per image, under the evaluation's output URL:

    {out}/{image_id}/real.png
    {out}/{image_id}/N/sample_00.png ...       the samples of each start scale
    {out}/{image_id}/rows.parquet              one row per sample (image_id, start, sample, sifid)
    {out}/{image_id}/_SUCCESS                  written last: the settings hash and the summary
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.ledger import Ledger, Status
from pipeline.storage import SUCCESS, ImageStore, Storage, TransientError, local_copy, redact
from pipeline.tracking import DEFAULT_EXPERIMENT, client_for, experiment_id_for, now_ms
from singan.api import sample
from singan.errors import InputError, one_line
from singan.metrics.patches import nn_patch_distance, patch_swd
from singan.metrics.sifid import load_stem, sifid_each

logger = logging.getLogger(__name__)

# `recipe` (singan | consingan, read from each model) lets one evaluation compare the recipes.
ROWS = pa.schema([("image_id", pa.string()), ("start", pa.string()), ("start_scale", pa.int32()),
                  ("sample", pa.int32()), ("sifid", pa.float64()), ("patch_swd", pa.float64()),
                  ("nn_patch_distance", pa.float64()), ("recipe", pa.string())])


def parse_starts(text: str) -> list[tuple[str, int]]:
    """"N,N-1" -> [("N", 0), ("N-1", 1)]: the paper's names of start scales (N the coarsest)
    and their index in the pyramid (0 the coarsest)."""
    starts = []
    for token in (t.strip() for t in text.split(",")):
        if token == "N":
            starts.append((token, 0))
        elif token.startswith("N-") and token[2:].isdigit() and int(token[2:]) > 0:
            starts.append((token, int(token[2:])))
        else:
            raise InputError(f"start scale {token!r}: write N (the coarsest) or N-k")
    if not starts or len({s for _, s in starts}) != len(starts):
        raise InputError(f"start scales {text!r}: give distinct ones, e.g. N,N-1")
    return starts


@dataclass(frozen=True)
class EvalSettings:
    """What every model of an evaluation shares."""

    out: str  # output URL of the evaluation
    starts: tuple[tuple[str, int], ...] = (("N", 0), ("N-1", 1))
    samples: int = 10
    dims: int = 64
    seed: int = 0
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    device: str | None = None

    def digest(self) -> str:
        keep = {k: v for k, v in asdict(self).items() if k not in ("out", "tracking_uri", "device")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalResult:
    image_id: str
    status: Status
    error: str | None
    rows: list = field(default_factory=list)  # one dict per sample (ROWS)
    summary: dict = field(default_factory=dict)  # per start: sifid_mean, sifid_std, diversity
    seconds: float = 0.0
    eval_run_id: str | None = None


def diversity(samples: torch.Tensor, real: torch.Tensor) -> float:
    """The paper's diversity: the std over samples of each pixel, averaged over pixels, divided
    by the std of the real image's pixels."""
    return float(samples.std(dim=0).mean() / real.std())


def evaluate_models(items: list[tuple[str, str]], settings: EvalSettings, inception: dict, *,
                    device: str | None = None, node: str | None = None) -> list[EvalResult]:
    """Evaluate the models (image_id, models root) one after another on `device` (default: the
    settings', else CPU): what one Ray task of the evaluation job runs. `node` is where it runs
    (unused but by the job's display)."""
    chosen = torch.device(device or settings.device or "cpu")
    return [evaluate_image(image_id, models, settings, inception, chosen)
            for image_id, models in items]


def evaluate_image(image_id: str, models: str, settings: EvalSettings, inception: dict,
                   device: torch.device | str = "cpu") -> EvalResult:
    """Evaluate the model `{models}/{image_id}` (a training output) on `device`; never raises
    for a bad model, only for storage that keeps failing (TransientError, retried by Ray)."""
    start = time.perf_counter()
    try:
        return _evaluate(image_id, models, settings, inception, start, torch.device(device))
    except TransientError:
        raise
    except Exception as err:  # noqa: BLE001 - a bad model fails its own row
        if not isinstance(err, InputError):
            logger.exception("evaluating %s failed", image_id)
        return EvalResult(image_id, Status.FAILED, one_line(err),
                          seconds=time.perf_counter() - start)


def _evaluate(image_id: str, models: str, settings: EvalSettings, inception: dict,
              start: float, device: torch.device) -> EvalResult:
    out = ImageStore(settings.out, image_id)
    digest = settings.digest()
    done = out.get_json(SUCCESS)
    if done is not None and done.get("settings") == digest:
        rows = pq.read_table(io.BytesIO(out.get("rows.parquet"))).to_pylist()
        return EvalResult(image_id, Status.SKIPPED, None, rows, done["summary"], 0.0,
                          done.get("eval_run_id"))

    trained = ImageStore(models, image_id)
    training = trained.success()
    if training is None:
        raise InputError(f"{trained.url}: not a finished training (no _SUCCESS)")
    model = trained.load_model(device)
    stem = load_stem(inception, device=device)
    real = model.reals[-1]
    out.put_png("real.png", real)

    rows, summary = [], {}
    for name, index in settings.starts:
        if index >= model.num_scales:
            raise InputError(f"{image_id}: start scale {name} needs more than the model's "
                             f"{model.num_scales} scales")
        rng = torch.Generator(device=device).manual_seed(settings.seed * 1000 + index)
        fakes = sample(model, settings.samples, start_scale=index, generator=rng)
        values = sifid_each(real, fakes, dims=settings.dims, stem=stem)
        new = []
        for k, (fake, value) in enumerate(zip(fakes, values)):
            out.put_png(f"{name}/sample_{k:02d}.png", fake[None])
            new.append({"image_id": image_id, "start": name, "start_scale": index, "sample": k,
                        "sifid": value, "patch_swd": patch_swd(real, fake, seed=k),
                        "nn_patch_distance": nn_patch_distance(real, fake, seed=k),
                        "recipe": model.config.recipe})
        rows += new
        summary[name] = {"sifid_mean": statistics.fmean(values),
                         "sifid_std": statistics.pstdev(values),
                         "diversity": diversity(fakes, real),
                         "patch_swd_mean": statistics.fmean(r["patch_swd"] for r in new),
                         "nn_patch_distance_mean": statistics.fmean(r["nn_patch_distance"]
                                                                    for r in new)}

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=ROWS), buffer)
    out.put("rows.parquet", buffer.getvalue())
    run_id = track(settings, image_id, training.get("run_id"), summary)
    out.put_json(SUCCESS, {"settings": digest, "summary": summary, "eval_run_id": run_id,
                           "model": trained.url_of("model")})
    return EvalResult(image_id, Status.DONE, None, rows, summary, time.perf_counter() - start,
                      run_id)


def track(settings: EvalSettings, image_id: str, training_run_id: str | None,
          summary: dict) -> str | None:
    """An evaluation run nested under the image's training run (eval/sifid_N, ...). Tracking
    trouble is logged, never raised: the numbers are in the evaluation's files."""
    if settings.tracking_uri is None:
        return None
    from mlflow.entities import Metric, Param

    try:
        client = client_for(settings.tracking_uri)
        experiment_id = None
        if training_run_id is not None:
            try:
                experiment_id = client.get_run(training_run_id).info.experiment_id
            except Exception:  # noqa: BLE001 - trained on another server: a top-level run
                training_run_id = None
        if experiment_id is None:
            experiment_id = experiment_id_for(settings.tracking_uri, settings.experiment)
        tags = {"kind": "eval", "image_id": image_id}
        if training_run_id is not None:
            tags.update({"mlflow.parentRunId": training_run_id, "training_run_id": training_run_id})
        run_id = client.create_run(experiment_id, tags=tags, run_name=f"eval {image_id}").info.run_id
        stamp = now_ms()
        metrics = [Metric(f"eval/{key}_{name}", value, stamp, 0)
                   for name, values in summary.items()
                   for key, value in (("sifid", values["sifid_mean"]),
                                      ("sifid_std", values["sifid_std"]),
                                      ("diversity", values["diversity"]),
                                      ("patch_swd", values["patch_swd_mean"]),
                                      ("nn_patch_distance", values["nn_patch_distance_mean"]))]
        params = [Param("samples", str(settings.samples)), Param("dims", str(settings.dims)),
                  Param("starts", ",".join(n for n, _ in settings.starts))]
        client.log_batch(run_id, metrics=metrics, params=params, synchronous=True)
        client.set_terminated(run_id, "FINISHED")
        return run_id
    except Exception as err:  # noqa: BLE001
        logger.warning("MLflow: no evaluation run for %s (%s)", image_id, one_line(err))
        return None


def start_job_run(settings: EvalSettings, models: str, tags: dict[str, str]) -> str | None:
    """The evaluation job's run: nested under the run of the training job that wrote `models`
    (the latest job run whose output it is), else top-level; its id. Tracking trouble is
    logged, never raised."""
    if settings.tracking_uri is None:
        return None
    from mlflow.entities import Param

    try:
        client = client_for(settings.tracking_uri)
        experiment_id = experiment_id_for(settings.tracking_uri, settings.experiment)
        output = redact(models.removesuffix("/_results.parquet"))
        found = client.search_runs([experiment_id], "tags.kind = 'job' and params.output = "
                                   f"'{output}'", max_results=1, order_by=["start_time DESC"])
        tags = {**tags, "kind": "evaluation", "models": output}
        if found:
            tags.update({"mlflow.parentRunId": found[0].info.run_id,
                         "training_run_id": found[0].info.run_id})
        run_id = client.create_run(experiment_id, tags=tags,
                                   run_name=f"evaluation {time.strftime('%Y-%m-%d %H:%M:%S')}"
                                   ).info.run_id
        params = {"models": output, "out": redact(settings.out), "samples": settings.samples,
                  "dims": settings.dims, "starts": ",".join(n for n, _ in settings.starts),
                  "seed": settings.seed}
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                         synchronous=True)
        return run_id
    except Exception as err:  # noqa: BLE001
        logger.warning("MLflow: no evaluation run (%s)", one_line(err))
        return None


def end_job_run(settings: EvalSettings, run_id: str | None, summary: dict, figure,
                table: dict[str, list], report_html: bytes) -> None:
    """The evaluation's numbers on its run: per start scale the means (eval/sifid_N, ...), the
    counts, the SIFID histogram (log_figure), every image's means (log_table: images.json) and
    the HTML report; then the run ends. Tracking trouble is logged, never raised."""
    if run_id is None:
        return
    from mlflow.entities import Metric

    try:
        client = client_for(settings.tracking_uri)
        stamp = now_ms()
        metrics = [Metric(f"eval/{key.removesuffix('_mean')}_{name}", value, stamp, 0)
                   for name, values in summary["overall"].items()
                   for key, value in values.items()]
        metrics += [Metric("models_evaluated", summary["evaluated"], stamp, 0),
                    Metric("models_failed", summary["failed_count"], stamp, 0)]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
        client.log_figure(run_id, figure, "sifid_histogram.png")
        client.log_table(run_id, table, "images.json")
        client.log_text(run_id, report_html.decode(), "report.html")
        client.log_dict(run_id, summary, "summary.json")
        client.set_terminated(run_id, "FAILED" if summary["failed_count"] else "FINISHED")
    except Exception as err:  # noqa: BLE001
        logger.warning("MLflow: the evaluation run %s is incomplete (%s)", run_id, one_line(err))


def trained_image_ids(models: str) -> Iterator[tuple[str, str]]:
    """(image_id, models root) of every finished training of a training output, from its ledger
    (pipeline.ledger: one LIST per 1,000 images, no glob of the image folders), or of the done
    rows of a results table (a .parquet URL), read a record batch at a time."""
    if models.endswith(".parquet"):
        try:
            with local_copy(models) as path:
                table = pq.ParquetFile(path)
                for batch in table.iter_batches(columns=["image_id", "status", "output_url"]):
                    for row in batch.to_pylist():
                        if row["status"] in (Status.DONE, Status.SKIPPED):
                            parent, _, image_id = row["output_url"].rstrip("/").rpartition("/")
                            yield image_id, parent
        except FileNotFoundError:
            raise InputError(f"{models}: no such results table") from None
        return
    root = Storage(models).url
    for image_id in Ledger(models).done_ids():
        yield image_id, root
