"""The code MLflow runs to load a pyramid's model (models from code: pipeline.mlflow_model)."""

from mlflow.models import set_model

from pipeline.mlflow_model import PyramidModel

set_model(PyramidModel())
