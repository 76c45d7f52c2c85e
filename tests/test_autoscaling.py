"""The training job on a cluster that starts as our cloud ones do (infra/k8s/rayjob.yaml,
infra/aws/cluster.yaml): a head with no CPU for tasks and no GPU, GPU worker nodes added by Ray's
autoscaler as tasks wait for them. Here the autoscaler is Ray's own with its fake_multinode
provider (tests/services.py: up to 3 nodes of 1 CPU and 1 fake GPU, processes on 127.0.0.1).

Asked for 1 GPU per task, the job must ask Ray for GPUs although none has joined yet (not fall
back to CPU for the whole job, as it did when it read the cluster once at its start), keep
enough tasks in flight for the autoscaler to see the demand, grow the cluster to its 3 nodes and
finish every image: trained on CPU there, since the GPUs are fake, with one line saying so.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.catalog import write_manifest
from singan.data.examples import pebbles
from singan.data.image import to_pil

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
IMAGES = 6
# Trainings of several seconds each, so that the nodes join while there is work.
TRAINING = ["--preset", "quick", "--set", "max_size=28", "--set", "min_size=12", "--set", "nfc=8",
            "--set", "max_nfc=8", "--set", "niter=60", "--num-samples", "1",
            "--sifid-samples", "0", "--quality-samples", "0", "--no-tracking"]


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    to_pil(pebbles(28, 36, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_gpu_job_grows_a_cluster_that_starts_without_gpus_to_its_three_nodes(
        tmp_path, fake_autoscaling_cluster):
    from ray.util.state import list_nodes, list_tasks

    cluster = fake_autoscaling_cluster
    rows = []
    for i in range(IMAGES):
        path = tmp_path / f"stones_{i}.png"
        path.write_bytes(png(i))
        rows.append({"image_id": f"stones_{i}", "uri": path.as_uri(), "height": 28, "width": 36})
    manifest, output = tmp_path / "manifest.parquet", tmp_path / "out"
    write_manifest(rows, str(manifest))
    # The project from its checkout (PYTHONPATH), not uploaded as a working dir: the fake
    # provider's nodes are processes sharing the head's temporary folder, and the removal of a
    # node the autoscaler started one too many deletes the uploaded package under the workers
    # of the others (their imports then fail with "No such file or directory"). On real nodes
    # each has its own copy.
    command = [RAY, "job", "submit", "--address", cluster.dashboard_url,
               "--submission-id", "autoscaling", "--runtime-env-json",
               json.dumps({"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}}),
               "--", "python", str(ROOT / "jobs" / "train_manifest.py"), "--manifest", str(manifest),
               "--output", str(output), "--gpus-per-task", "1", "--images-per-task", "1",
               *TRAINING]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "job.log"
    workers_seen = 0
    with open(log, "w") as out:
        job = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while job.poll() is None and time.monotonic() < deadline:
                alive = list_nodes(address=cluster.dashboard_url,
                                   filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
                workers_seen = max(workers_seen, sum(not node.is_head_node for node in alive))
                time.sleep(1.0)
        finally:
            if job.poll() is None:
                job.kill()
            job.wait(30)
    logs = log.read_text()
    assert job.returncode == 0, logs

    # The job asked for GPUs before any had joined, and said so; it never fell back to CPU.
    assert "no GPU in the Ray cluster yet: each task asks for 1 GPU" in logs, logs
    assert "runs the trainings on CPU" not in logs
    tasks = list_tasks(address=cluster.dashboard_url, detail=True,
                       raise_on_missing_output=False)
    trainings = [task for task in tasks if task.name.startswith("train stones_")]
    assert len(trainings) >= IMAGES  # one per image (more with retries)
    assert all(task.required_resources.get("GPU") == 1 for task in trainings), trainings
    # The autoscaler saw the demand and grew the cluster to its maximum.
    assert workers_seen == 3, logs
    assert "Ray: the cluster now has" in logs  # the job followed the cluster as nodes joined
    # Every image trained, on CPU behind the fake GPUs, with one line saying so.
    assert f"{IMAGES} trained, 0 already done, 0 failed" in logs, logs
    assert logs.count("torch sees no CUDA device on node") == 1, logs
    table = pq.read_table(output / "_results.parquet").to_pylist()
    assert sorted(r["image_id"] for r in table) == [r["image_id"] for r in rows]
    assert {r["status"] for r in table} == {"done"} and {r["device"] for r in table} == {"cpu"}
    print(f"worker nodes: {workers_seen}; nodes that trained: "
          f"{len({r['node'] for r in table})}")
