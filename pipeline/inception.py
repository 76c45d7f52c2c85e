"""The Inception weights for SIFID, resolved once by a job's driver and shipped to its workers.

Only the stem's weights (about 1.2 MB of the 100 MB checkpoint) travel, as a state dict, so that
every worker computes SIFID with exactly the weights the driver found, whatever is (or is not)
cached on its node.
"""

from __future__ import annotations

import io
import logging

from pipeline.storage import read_url
from singan.errors import InputError
from singan.metrics.sifid import load_stem

logger = logging.getLogger(__name__)


def stem_weights(url: str | None, *, required: bool) -> dict | None:
    """The Inception stem's state dict from `url` (any fsspec URL or path) or, when None, from
    the usual places (SINGAN_INCEPTION_WEIGHTS, torch hub's cache, a download).

    When nothing is found: raises InputError if `required` (the user asked for these weights),
    else logs one warning and returns None, and SIFID is skipped.
    """
    try:
        if url is None:
            stem = load_stem(None)
        else:
            try:
                data = read_url(url)
            except FileNotFoundError as err:
                raise InputError(f"{url}: no such file (Inception-v3 weights for SIFID)") from err
            try:
                stem = load_stem(io.BytesIO(data))
            except InputError as err:
                raise InputError(f"{url}: {err}") from err
    except InputError as err:
        if required:
            raise
        logger.warning("SIFID skipped: %s", err)
        print(f"SIFID skipped for this job: {err}")
        return None
    return {k: v.cpu() for k, v in stem.state_dict().items()}
