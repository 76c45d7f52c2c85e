"""What the drivers share (jobs/fleet.py) and the workers' MLflow sender, with Ray and MLflow
replaced: placement that follows a cluster that grows, the device a task trains on, and requests
sent in the background with jitter. The real thing runs in test_autoscaling.py and test_job.py."""

from __future__ import annotations

import logging
import sys
import threading
import time
import types

import pytest

from jobs import fleet
from pipeline.tracking import Sender


@pytest.fixture
def cluster(monkeypatch):
    """A fake `ray` whose cluster_resources() returns what the test sets."""
    state = {"resources": {}}
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(
        cluster_resources=lambda: dict(state["resources"])))
    monkeypatch.setattr(fleet, "RESOURCES_EVERY", 0.0)  # re-read at every call
    return state


def test_gpu_tasks_ask_for_gpus_before_any_joined_and_the_window_follows_the_cluster(
        cluster, capsys):
    placement = fleet.Placement(1.0, 1.0, local=False)
    assert placement.options() == {"num_gpus": 1.0, "num_cpus": 1.0}  # not 0: no fall-back
    assert placement.slots == 0 and placement.window() == fleet.DEMAND
    out = capsys.readouterr().out
    assert "no GPU in the Ray cluster yet: each task asks for 1 GPU and waits for one" in out
    cluster["resources"] = {"CPU": 64, "GPU": 8}  # nodes joined
    assert placement.window() == fleet.DEMAND and placement.slots == 8
    assert "Ray: the cluster now has 64 CPUs and 8 GPUs: 8 trainings at a time" in \
        capsys.readouterr().out
    cluster["resources"] = {"CPU": 256, "GPU": 32}
    assert placement.window() == 64  # twice what runs at once
    cluster["resources"] = {"CPU": 4, "GPU": 1}  # nodes left
    assert placement.window() == fleet.DEMAND
    fractional = fleet.Placement(0.25, 1.0, local=False)
    assert fractional.slots == 4  # 1 GPU, 4 tasks of a quarter
    assert fleet.Placement(1.0, 1.0, local=False, max_in_flight=3).window() == 3


def test_only_a_local_ray_on_a_machine_without_gpus_trains_on_cpu(cluster, capsys):
    cluster["resources"] = {"CPU": 2}
    local = fleet.Placement(1.0, 1.0, local=True)
    assert local.options() == {"num_gpus": 0.0, "num_cpus": 1.0} and local.slots == 2
    assert "no GPU on this machine: the local Ray runs the trainings on CPU" in \
        capsys.readouterr().out
    asked = fleet.Placement(0.0, 1.0, local=False)  # --gpus-per-task 0: CPU, said by the user
    assert asked.options()["num_gpus"] == 0.0
    assert capsys.readouterr().out == "Ray: 2 CPUs, 0 GPUs now, 2 trainings at a time\n"


def test_a_task_trains_on_the_gpu_ray_gave_it_and_says_when_torch_cannot_see_it(
        monkeypatch, caplog):
    import torch

    assert fleet.assigned_device([]) == "cpu"  # a task that asked for no GPU never takes one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert fleet.assigned_device([0]) == "cpu"
    assert "Ray gave this task GPU 0, but torch sees no CUDA device here" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fleet.assigned_device([3]) == "cuda"  # Ray shows the task its GPU as device 0


def test_the_sender_sends_in_the_background_after_a_random_delay_and_drains_at_once():
    sender = Sender()
    sent, started = [], time.monotonic()
    for n in range(20):
        sender.schedule(lambda n=n: sent.append((n, time.monotonic() - started)), jitter=0.5)
    time.sleep(0.02)
    assert len(sent) < 20  # the training did not wait for them
    time.sleep(0.8)
    assert sorted(n for n, _ in sent) == list(range(20))
    delays = [at for _, at in sent]
    assert max(delays) <= 0.8 and max(delays) - min(delays) > 0.1  # spread, not in step

    # A failing request does not stop the others; drain sends what waits, without its delay.
    sent.clear()
    sender.schedule(lambda: 1 / 0, jitter=0.0)
    for n in range(3):
        sender.schedule(lambda n=n: sent.append(n), jitter=60.0)
    assert sender.drain(timeout=5.0) and sorted(sent) == [0, 1, 2]


def test_drain_gives_up_after_its_timeout():
    sender = Sender()
    release = threading.Event()
    sender.schedule(release.wait, jitter=0.0)
    assert not sender.drain(timeout=0.2)
    release.set()
    assert sender.drain(timeout=5.0)


def test_a_driver_limits_its_malloc_arenas():
    # glibc's per-thread arenas grew a 150,000-image driver by 1.9 KB per image (jobs/fleet.py).
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = "from jobs.fleet import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    assert done.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, "MALLOC_ARENA_MAX": "4"}, check=True)
    assert chosen.stdout.strip() == "False"  # the user's own setting stays
