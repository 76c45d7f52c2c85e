"""Where the `singan` command reads a trained model besides a local folder (registered in the
entry point group singan.model_sources, see singan/cli/common.py): any fsspec URL, and MLflow's
runs:/ and models:/ URIs."""

from __future__ import annotations

import torch

from pipeline.storage import load_pyramid
from singan.base import Pyramid
from singan.errors import InputError, one_line


def from_storage(url: str, device: torch.device) -> Pyramid:
    """The model folder at `url`, or the model/ of an image's folder there."""
    return load_pyramid(url, device=device)


def from_mlflow(uri: str, device: torch.device) -> Pyramid:
    """The pyramid of an MLflow model (pipeline.mlflow_model), on the server of
    $MLFLOW_TRACKING_URI."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(uri, model_config={"device": str(device)})
    except MlflowException as err:
        raise InputError(f"{uri}: {one_line(err)}") from err
    pyramid = getattr(model.unwrap_python_model(), "pyramid", None)
    if pyramid is None:
        raise InputError(f"{uri}: not a SinGAN model (logged by the batch job)")
    return pyramid
