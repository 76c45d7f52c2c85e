"""Every trained pyramid as an MLflow model: `mlflow.pyfunc.load_model("runs:/<run id>/model")`
and `mlflow models serve` sample from it.

The model is logged as code (MLflow's models from code): its folder holds mlflow_model_code.py,
which builds a PyramidModel, and a model_config with the pyramid's URL; loading it runs that
code and reads the pyramid through pipeline.storage, whose tensors load with weights_only=True.
No pickle is written or read.

The model references the pyramid where the job stored it instead of copying it: the pyramid is
already stored whole, once, as the job's resume point; a copy would double the storage of every
image and send its level files (megabytes at the paper preset) through the tracking server,
which the whole cluster shares. The price: loading needs read access to the job's output (the
same credentials as the job, e.g. AWS_* for S3), and deleting the output breaks the model.

Input: a table, one row per request of samples, every column optional:
    num (samples, default 1), scale_h, scale_v (the size relative to the training image,
    default 1), start_scale (default 0), seed (default: fresh randomness).
Output: a table, one row per sample: row (the input row), sample (its index in the row),
height, width, and png (the sample as an 8-bit PNG, base64).
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import torch

from pipeline.storage import load_pyramid
from singan.api import sample
from singan.base import package_version
from singan.data.image import png_bytes
from singan.errors import InputError

MODEL_NAME = "model"  # the run's model: runs:/<run id>/model
CODE = Path(__file__).with_name("mlflow_model_code.py")
# (column, whether it is a whole number, default; None: fresh randomness). Checked here, not by
# an input schema: a table whose rows leave a column out holds NaN there, which MLflow refuses
# in a long column, and it refuses whole numbers in a double one.
COLUMNS = (("num", True, 1), ("scale_h", False, 1.0), ("scale_v", False, 1.0),
           ("start_scale", True, 0), ("seed", True, None))
# What one request may ask for: a served model answers many users on one machine.
MAX_SAMPLES = 64
MAX_SCALE = 8.0


def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class PyramidModel(_pyfunc_base()):
    """The pyfunc model of one pyramid (built by mlflow_model_code.py when MLflow loads it)."""

    def load_context(self, context) -> None:
        config = context.model_config or {}
        device = config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pyramid = load_pyramid(config["pyramid_url"], device=device)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        rows = []
        for index, request in enumerate(requests(model_input)):
            generator = None
            if request["seed"] is not None:
                generator = torch.Generator(self.pyramid.device).manual_seed(request["seed"])
            samples = sample(self.pyramid, request["num"], start_scale=request["start_scale"],
                             scale_h=request["scale_h"], scale_v=request["scale_v"],
                             generator=generator)
            for k, picture in enumerate(samples):
                rows.append({"row": index, "sample": k, "height": picture.shape[-2],
                             "width": picture.shape[-1],
                             "png": base64.b64encode(png_bytes(picture.cpu())).decode()})
        return pd.DataFrame(rows, columns=["row", "sample", "height", "width", "png"])


def requests(model_input) -> list[dict[str, Any]]:
    """The input table's rows with their defaults, checked (an InputError names the row)."""
    records = model_input.to_dict("records") if hasattr(model_input, "to_dict") else model_input
    known = [name for name, _, _ in COLUMNS]
    out, total = [], 0
    for index, record in enumerate(records):
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise InputError(f"row {index}: unknown column(s) {', '.join(map(str, unknown))}; "
                             f"the columns are {', '.join(known)}")
        request = {}
        for name, whole, default in COLUMNS:
            value = record.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                value = default
            elif isinstance(value, (bool, str)) or not hasattr(value, "__float__"):
                raise InputError(f"row {index}: {name} must be a number, got {value!r}")
            elif whole:
                if float(value) != int(value):
                    raise InputError(f"row {index}: {name} must be a whole number, got {value}")
                value = int(value)
            else:
                value = float(value)
            request[name] = value
        if not 0 < request["scale_h"] <= MAX_SCALE or not 0 < request["scale_v"] <= MAX_SCALE:
            raise InputError(f"row {index}: scale_h and scale_v must be in (0, {MAX_SCALE:g}]")
        total += request["num"]
        if total > MAX_SAMPLES:
            raise InputError(f"at most {MAX_SAMPLES} samples per request, asked for {total}")
        out.append(request)
    return out


def signature():
    """The model's output schema (its input is checked by `requests`, see COLUMNS)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = Schema([ColSpec("long", "row"), ColSpec("long", "sample"),
                      ColSpec("long", "height"), ColSpec("long", "width"),
                      ColSpec("string", "png")])
    return ModelSignature(inputs=None, outputs=outputs)


def requirements() -> list[str]:
    """What loading the model needs: this package, with its fleet extra (storage, MLflow)."""
    return [f"singan-fleet[fleet]=={package_version()}"]


def save(path: str | Path, pyramid_url: str, mlflow_model=None) -> None:
    """Write the model's folder at `path` (a few small files: no pyramid in it)."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(str(path), python_model=str(CODE), mlflow_model=mlflow_model,
                             model_config={"pyramid_url": pyramid_url},
                             signature=signature(), pip_requirements=requirements())


def log(client, run_id: str, experiment_id: str, pyramid_url: str) -> str:
    """Log the pyramid at `pyramid_url` as the model of run `run_id` (runs:/<run id>/model);
    its model id. 9 requests: create, get (log_model_artifacts asks where its artifacts go), one
    upload per file of the folder (5), finalize, and the run's output."""
    import tempfile

    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    # The run's output goes last: a worker that dies before it leaves a PENDING model that the
    # replay does not see, and logs the model again.
    model = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_NAME
        save(folder, pyramid_url, Model(artifact_path=model.artifact_location, run_id=run_id,
                                        model_uuid=model.model_id, model_id=model.model_id))
        client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def register(client, name: str, model_id: str, run_id: str, image_id: str) -> str:
    """A new version of registered model `name` (created by the first image that needs it) for
    the model `model_id`, tagged with its image; the version."""
    from mlflow.exceptions import MlflowException

    def version() -> str:
        return client.create_model_version(name, f"models:/{model_id}", run_id=run_id,
                                           tags={"image_id": image_id}, model_id=model_id,
                                           await_creation_for=0).version
    try:
        return version()
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(name)
    except MlflowException as err:  # another worker made it in between
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return version()
