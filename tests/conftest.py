"""Shared fixtures: tiny configs and a tiny trained model, all procedural, CPU only."""

from __future__ import annotations

import pytest
import torch

import singan
from singan.examples import pebbles

pytest_plugins = ["services"]  # tests/services.py: real local services as session fixtures


def tiny_config(**overrides) -> singan.Config:
    """Three scales of narrow networks: trains in about a second on the CPU."""
    values = dict(min_size=12, max_size=28, nfc=8, max_nfc=16, nfc_double_every=2, niter=20,
                  lr_milestone=16, log_every=5)
    return singan.config("paper", **{**values, **overrides})


@pytest.fixture(scope="session")
def tiny_image():
    return pebbles(28, 36, seed=3)


@pytest.fixture(scope="session")
def tiny_model(tiny_image):
    return singan.train(tiny_image, tiny_config(), device="cpu", seed=7)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    on tiny images a second thread only costs time, and when other processes share the two
    cores it spins, slowing these trainings 10-20 times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
