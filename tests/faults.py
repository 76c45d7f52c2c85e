"""Faults the tests inject into a job's workers, as callbacks the job takes in code
(jobs/train_manifest.main's `on_scale_stored`, JobSettings.on_scale_stored), never an option of
the product. `python tests/faults.py KILL_AFTER_SCALE <train_manifest args>` is the job with the
worker killed once per image after that scale is stored: what the fault tests `ray job submit`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tests/faults.py`

from pipeline.storage import ImageStore  # noqa: E402

logger = logging.getLogger(__name__)

FAULT_MARKER = ".fault-fired"  # in the image's folder: the kill already happened for it


class KillAfterScale:
    """SIGKILL the worker right after scale `scale` of an image is stored, once per image (a
    marker file in the image's folder says it already fired), to prove that the retry resumes
    there."""

    def __init__(self, scale: int, kill=os.kill):
        self.scale, self.kill = scale, kill

    def __call__(self, store: ImageStore, scale: int) -> None:
        if scale != self.scale or store.exists(FAULT_MARKER):
            return
        store.put(FAULT_MARKER, b"")
        logger.warning("tests.faults: killing this worker after scale %d", scale)
        self.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    from jobs.train_manifest import main

    # By its module's name, so that Ray's workers unpickle it (not as __main__'s).
    from tests.faults import KillAfterScale as Kill

    sys.exit(main(sys.argv[2:], on_scale_stored=Kill(int(sys.argv[1]))))
