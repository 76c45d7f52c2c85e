"""Shared fixtures: tiny configs and a tiny trained model, all procedural, CPU only.

Torch runs on one thread in every test (and in every process a test starts: OMP_NUM_THREADS is
set for them), unless a test asks for more with `@pytest.mark.threads(n)`. On tiny images a
second thread only costs time, and when other processes share the machine's cores, threads that
spin waiting for each other slow a training ten to twenty times instead of in proportion.
"""

from __future__ import annotations

import os

# Before torch is imported here, and inherited by every process the tests start (CLI runs, Ray
# heads and their workers, job drivers).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import singan  # noqa: E402
from singan.data.examples import pebbles  # noqa: E402

pytest_plugins = ["services"]  # tests/services.py: real local services as session fixtures

torch.set_num_threads(1)  # session fixtures train too, before any per-test fixture runs


def pytest_configure(config):
    config.addinivalue_line("markers", "threads(n): run torch on n threads in this test")


@pytest.fixture(autouse=True)
def torch_threads(request):
    """One torch thread per test, or the number a `threads(n)` marker asks for."""
    marker = request.node.get_closest_marker("threads")
    before = torch.get_num_threads()
    torch.set_num_threads(marker.args[0] if marker else 1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> singan.Config:
    """Three scales of narrow networks: trains in about a second on the CPU."""
    values = dict(min_size=12, max_size=28, nfc=8, max_nfc=16, nfc_double_every=2, niter=20,
                  lr_milestone=16, log_every=5)
    return singan.config("paper", **{**values, **overrides})


def as_8bit(image: torch.Tensor) -> torch.Tensor:
    """`image` as an 8-bit file would hold it, in float64. Golden trainings start from this:
    procedural images computed in float32 differ in their last bit between CPUs' kernels."""
    return torch.round((image.double() + 1) * 127.5) / 127.5 - 1


@pytest.fixture(scope="session")
def tiny_image():
    return pebbles(28, 36, seed=3)


@pytest.fixture(scope="session")
def tiny_model(tiny_image):
    return singan.train(tiny_image, tiny_config(), device="cpu", seed=7)


def assert_golden_corners(model, sample: list, reconstruction: list) -> None:
    """The last 3 x 3 pixels of every channel of a sample (generator seeded 0) and of the
    reconstruction, as pinned golden numbers (to 1e-4, diffusers-style)."""
    corners = {"sample": singan.sample(model, 1, generator=torch.Generator().manual_seed(0)),
               "reconstruction": singan.reconstruct(model)}
    for name, expected in (("sample", sample), ("reconstruction", reconstruction)):
        got = corners[name][0, :, -3:, -3:]
        torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), rtol=0,
                                   atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
