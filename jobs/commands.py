"""The jobs' commands, as `pip install 'singan-fleet[fleet]'` provides them: each runs the job's
`main` (the same as `python jobs/NAME.py` from a checkout). Without the fleet extra a command
says what to install, in one line, instead of an ImportError's traceback."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# The top-level modules of the fleet extra's packages (pyproject.toml).
FLEET_MODULES = frozenset({"ray", "mlflow", "pyarrow", "fsspec", "s3fs", "matplotlib", "tqdm"})


def run(module: str) -> int:
    """Import jobs.`module` and run its main(); 2 when the fleet extra is missing."""
    try:
        job = importlib.import_module(f"jobs.{module}")
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in FLEET_MODULES:
            raise
        print(f"{Path(sys.argv[0]).name}: the batch jobs need the fleet extra (no module "
              f"{err.name!r}): pip install 'singan-fleet[fleet]'", file=sys.stderr)
        return 2
    return job.main()


def train() -> int:
    return run("train_manifest")


def evaluate() -> int:
    return run("evaluate_sifid")


def manifest() -> int:
    return run("make_manifest")


def sync() -> int:
    return run("sync_tracking")


def compact() -> int:
    return run("compact_results")
