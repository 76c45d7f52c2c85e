"""Faults of the cluster itself, end to end with jobs/train_manifest.py as users run it:

- a worker node removed mid-job (a multi-node cluster built in this process with
  ray.cluster_utils.Cluster, all nodes on 127.0.0.1): Ray retries the trainings it ran on the
  surviving node, and they resume at their last finished scale;
- the job's driver SIGKILLed after some images finished, then the job submitted again (the
  session's `ray start --head` cluster and `mlflow server`): Ray stops the orphaned trainings, the
  second job skips what was done, resumes what was interrupted, and MLflow ends with one
  FINISHED run per image.

Each test prints its figures (`pytest -s`): docs/reliability.md quotes them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.catalog import write_manifest
from pipeline.storage import ImageStore
from pipeline.tracking import stored_points
from singan.data.examples import pebbles
from singan.data.image import to_pil

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
HOST = "127.0.0.1"
NUM_SCALES = 4
# Tiny trainings as in test_job.py (4 scales up to 28 px, narrow networks), with more
# iterations: a scale takes about a second, so that a fault lands between two stored scales
# rather than after the last one. One image per Ray task: these faults hit single trainings
# (test_job.py kills a worker in the middle of a bucket).
FAST = ["--preset", "quick", "--set", "max_size=28", "--set", "min_size=12", "--set", "nfc=8",
        "--set", "max_nfc=16", "--set", "niter=16", "--num-samples", "1", "--sifid-samples", "0",
        "--images-per-task", "1", "--gpus-per-task", "0"]
# Worker processes on two shared cores: one torch thread each, and no cloud metadata probes.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "AWS_EC2_METADATA_DISABLED": "true"}
SUBMISSION = "faults-driver"  # the submission ids of this module's jobs on the session cluster


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    to_pil(pebbles(28, 36, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_manifest(folder: Path, count: int) -> Path:
    rows = []
    for i in range(count):
        image = folder / f"stones_{i}.png"
        image.write_bytes(png(i))
        rows.append({"image_id": f"stones_{i}", "uri": str(image)})
    manifest = folder / "manifest.parquet"
    write_manifest(rows, str(manifest))
    return manifest


def wait_for(what: str, condition: Callable[[], object], timeout: float,
             interval: float = 0.1, alive: Callable[[], str | None] | None = None):
    """Poll `condition` until it returns something true (returned); `alive()` returning a text
    means the thing being waited on ended: fail with that text at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if alive is not None and (ended := alive()) is not None:
            pytest.fail(f"while waiting for {what}: {ended}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def finished_scales(folder: Path) -> int:
    """The scales config.json counts as stored (0 before the first)."""
    try:
        return json.loads((folder / "model" / "config.json").read_text())["finished_scales"]
    except FileNotFoundError:
        return 0


def stored_scales(folder: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime, bytes) of the scale files config.json counts: what a resume must keep."""
    files = {}
    for index in range(finished_scales(folder)):
        path = folder / "model" / f"scale_{index:02d}.pt"
        files[path.name] = (path.stat().st_mtime_ns, path.read_bytes())
    return files


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file()}


def noise_amp_steps(folder: Path) -> list[int]:
    points = stored_points(ImageStore(str(folder.parent), folder.name))
    return [p["step"] for p in points if p["key"] == "noise_amp"]


def results_by_id(output: Path) -> dict[str, dict]:
    table = pq.read_table(output / "_results.parquet")
    return {row["image_id"]: row for row in table.to_pylist()}


def assert_resumed(folder: Path, kept: dict[str, tuple[int, bytes]], since_ns: int) -> None:
    """The training of `folder` finished, keeping the scale files stored before `since_ns` and
    training only the scales after them."""
    assert (folder / "_SUCCESS").exists()
    assert finished_scales(folder) == NUM_SCALES
    for name, (mtime, data) in kept.items():
        path = folder / "model" / name
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, data), \
            f"{folder.name}/{name} was trained again"
    for index in range(len(kept), NUM_SCALES):
        path = folder / "model" / f"scale_{index:02d}.pt"
        assert path.stat().st_mtime_ns > since_ns, f"{folder.name}/{path.name} not retrained"
    # Every scale's points once: the partial scale's were dropped and logged again.
    assert noise_amp_steps(folder) == list(range(NUM_SCALES))


# --- 1. A node removed mid-job ---------------------------------------------------------------

@pytest.fixture
def three_nodes(monkeypatch):
    """A head without CPUs (the drivers' node) and two worker nodes of 2 CPUs, a and b, all on
    127.0.0.1, with this process connected as a driver. Node b has a custom resource `node_b`,
    so that a test can reserve its CPUs. Yields (cluster, node_a, node_b)."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray's sessions and its `ray_current_cluster` file go here, not in the machine-wide
    # /tmp/ray, where a bare ray.init() elsewhere would find this cluster. Short: Ray's unix
    # sockets live under it.
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp" if os.path.isdir("/tmp") else None)
    monkeypatch.setenv("RAY_TMPDIR", temp)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway cluster on loopback
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name, value in QUIET_ENV.items():  # the nodes' processes inherit this environment
        monkeypatch.setenv(name, value)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, node_ip_address=HOST, include_dashboard=False))
        node_a = cluster.add_node(num_cpus=2, node_ip_address=HOST)
        node_b = cluster.add_node(num_cpus=2, node_ip_address=HOST, resources={"node_b": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, node_a, node_b
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_node_removed_mid_job_resumes_its_trainings_elsewhere(tmp_path, three_nodes):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    cluster, node_a, _ = three_nodes
    images = 4
    manifest = make_manifest(tmp_path, images)
    output = tmp_path / "out"
    # Node b's CPUs reserved: the first trainings can only start on node a, so the images on
    # node a are the ones with files when it is removed.
    reserve_b = placement_group([{"CPU": 2, "node_b": 1}])
    ray.get(reserve_b.ready(), timeout=120)

    log = tmp_path / "driver.log"
    command = [sys.executable, "jobs/train_manifest.py", "--manifest", str(manifest),
               "--output", str(output), "--no-tracking", *FAST]
    with open(log, "w") as out:
        driver = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "RAY_ADDRESS": cluster.address})
    try:
        def exited() -> str | None:
            return None if driver.poll() is None else \
                f"the driver exited ({driver.returncode}):\n{log.read_text()}"

        def mid_training_on_a() -> list[Path]:
            # Both trainings of node a with a stored scale; or, should the second lag far
            # behind (a loaded machine), the first one at its last scale.
            busy = [f for f in output.glob("stones_*") if finished_scales(f) >= 1]
            late = any(finished_scales(f) >= NUM_SCALES - 1 for f in busy)
            return busy if len(busy) == 2 or late else []

        # 1. The trainings of node a have stored scales: remove node a.
        on_a = wait_for("trainings with a stored scale", mid_training_on_a, timeout=300,
                        alive=exited)
        removed_ns = time.time_ns()
        cluster.remove_node(node_a)
        removal_s = (time.time_ns() - removed_ns) / 1e9
        kept = {f.name: stored_scales(f) for f in on_a}
        assert sorted(p.name for p in output.iterdir()) == sorted(kept)  # nothing ran elsewhere
        for folder in on_a:  # the removal landed mid-training: otherwise make FAST slower
            assert not (folder / "_SUCCESS").exists(), f"{folder.name} finished before removal"
        remove_placement_group(reserve_b)  # node b takes the retries and the rest

        # 2. The job finishes on node b: every image done, the interrupted ones resumed.
        driver.wait(timeout=600)
        logs = log.read_text()
        assert driver.returncode == 0, logs
        assert f"{images} images in" in logs and f"{images} trained, 0 already done, 0 failed" \
            in logs, logs
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    rows = results_by_id(output)
    assert sorted(rows) == [f"stones_{i}" for i in range(images)]
    assert all(r["status"] == "done" and r["num_scales"] == NUM_SCALES for r in rows.values())
    for image_id, scales in kept.items():
        assert_resumed(output / image_id, scales, removed_ns)
    for image_id in set(rows) - set(kept):
        assert finished_scales(output / image_id) == NUM_SCALES
        assert noise_amp_steps(output / image_id) == list(range(NUM_SCALES))
    print(f"\nnode removed mid-job: {images} images, node a (of 2 worker nodes) removed in "
          f"{removal_s:.1f} s while {len(on_a)} trainings with stored scales ran on it; "
          f"{images}/{images} done; resumed at scales {sorted(len(s) for s in kept.values())}")


# --- 2. The driver killed, the job submitted again ---------------------------------------------

def training_workers(gcs_address: str) -> list[int]:
    """PIDs of the processes running a train_image task under the raylets of the cluster at
    `gcs_address` (Linux /proc; Ray titles a busy worker by its task's name, `ray::train <id>`)."""
    argv, parent = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv[int(entry.name)] = (entry / "cmdline").read_bytes().decode().split("\0")
            # The parent's pid is the 2nd field after the command name, which may hold spaces.
            parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    raylets = {pid for pid, args in argv.items()
               if args[0].endswith("raylet") and f"--gcs-address={gcs_address}" in args}
    return [pid for pid, args in argv.items()
            if args[0].strip().startswith("ray::train ") and parent.get(pid) in raylets]


def submit(ray_cluster, args: list[str], submission_id: str, wait: bool) -> tuple[int, str]:
    """`ray job submit` of the training job: (exit code, output); of the job itself when
    waiting, of the submission otherwise."""
    command = [RAY, "job", "submit", "--address", ray_cluster.dashboard_url,
               "--submission-id", submission_id, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps({"env_vars": QUIET_ENV}),
               *([] if wait else ["--no-wait"]), "--", "python", "jobs/train_manifest.py", *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def jobs(ray_cluster, monkeypatch):
    """A JobSubmissionClient of the session's cluster. The jobs this module submitted are stopped
    after the test, whatever happened: a failed test must not leave trainings on the cluster."""
    from ray.job_submission import JobSubmissionClient

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    yield client
    for job in client.list_jobs():
        if (job.submission_id or "").startswith(SUBMISSION) and not job.status.is_terminal():
            client.stop_job(job.submission_id)


def test_killed_driver_then_resubmit_trains_each_image_once(tmp_path, ray_cluster,
                                                            mlflow_server, jobs):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus

    first, second = f"{SUBMISSION}-1", f"{SUBMISSION}-2"
    images = 4
    manifest = make_manifest(tmp_path, images)
    output = tmp_path / "out"
    experiment = "faults-driver"
    args = ["--manifest", str(manifest), "--output", str(output),
            "--tracking-uri", mlflow_server.url, "--experiment", experiment, *FAST]

    # 1. First submit; SIGKILL its driver once some images are done and another one has stored
    #    a scale (it must resume there).
    code, logs = submit(ray_cluster, args, first, wait=False)
    assert code == 0, logs

    def job_ended() -> str | None:
        status = jobs.get_job_status(first)
        return None if not status.is_terminal() else \
            f"the job ended ({status}):\n{jobs.get_job_logs(first)}"

    def done_ids() -> set[str]:
        return {p.parent.name for p in output.glob("stones_*/_SUCCESS")}

    def some_done_one_partial() -> bool:
        done = done_ids()
        return len(done) >= 2 and any(finished_scales(f) >= 1 for f in output.glob("stones_*")
                                      if f.name not in done)

    wait_for("2 images done and 1 mid-training", some_done_one_partial, timeout=600,
             alive=job_ended)
    driver = jobs.get_job_info(first).driver_info
    assert driver is not None and driver.pid
    wait_for("trainings running", lambda: training_workers(ray_cluster.address), timeout=60)
    os.kill(int(driver.pid), signal.SIGKILL)
    killed = time.monotonic()
    before_kill = done_ids()
    assert 2 <= len(before_kill) < images, "all images finished before the kill: more images"
    wait_for("the first job to end", lambda: jobs.get_job_status(first)
             in (JobStatus.FAILED, JobStatus.STOPPED), timeout=120)
    # Ray stops the trainings of a dead driver (their owner): none may race the second job.
    wait_for("the orphaned trainings to stop",
             lambda: not training_workers(ray_cluster.address), timeout=120, interval=0.2)
    orphans_gone_s = time.monotonic() - killed

    finished = done_ids()  # the kill's and, had one finished meanwhile, an orphan's
    unchanged = {i: folder_state(output / i) for i in finished}
    success = {i: (output / i / "_SUCCESS").read_bytes() for i in finished}
    partial = {f.name: stored_scales(f) for f in output.glob("stones_*")
               if f.name not in finished and finished_scales(f) >= 1}
    assert partial or len(finished) > len(before_kill)  # resumed below, or an orphan finished it
    resubmitted_ns = time.time_ns()
    # The ledger at the resubmit: a finished image is in it unless its task died between its
    # _SUCCESS and the end of its bucket (then the resubmit sends it, and its task skips it).
    ledgered = {name.split("@")[0] for name in os.listdir(output / "_results")}
    assert ledgered <= finished

    # 2. Submitted again: the rest is trained, what was done is skipped and left alone.
    code, logs = submit(ray_cluster, args, second, wait=True)
    assert code == 0, logs
    rest = images - len(finished)
    assert f"{images} images in" in logs, logs
    assert f"{rest} trained, {len(finished)} already done, 0 failed" in logs, logs
    # No task for an image the ledger listed as done (one image per task here).
    assert f"{images - len(ledgered)} Ray tasks of up to 1 images" in logs, logs
    rows = results_by_id(output)
    assert {i: r["status"] for i, r in rows.items()} == {f"stones_{i}": "done"
                                                          for i in range(images)}
    first_job = {rows[i]["job_id"] for i in finished}
    assert len(first_job) == 1 and first_job.isdisjoint(rows[i]["job_id"] for i in partial)
    for image_id in finished:
        assert folder_state(output / image_id) == unchanged[image_id], f"{image_id} touched"
        assert (output / image_id / "_SUCCESS").read_bytes() == success[image_id]
    for image_id, scales in partial.items():
        assert_resumed(output / image_id, scales, resubmitted_ns)

    # 3. MLflow: one run per image, FINISHED, the one _SUCCESS names, each point once; the
    #    second job's parent run counts what it skipped and trained.
    client = MlflowClient(mlflow_server.url)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    for i in range(images):
        image_id = f"stones_{i}"
        runs = client.search_runs([experiment_id], filter_string=f"tags.image_id = '{image_id}'")
        assert len(runs) == 1, f"{image_id}: {len(runs)} MLflow runs"
        assert runs[0].info.status == "FINISHED"
        record = json.loads((output / image_id / "_SUCCESS").read_text())
        assert record["run_id"] == runs[0].info.run_id == rows[image_id]["mlflow_run_id"]
        history = client.get_metric_history(runs[0].info.run_id, "noise_amp")
        assert sorted(m.step for m in history) == list(range(NUM_SCALES))
    image_runs = client.search_runs([experiment_id], filter_string="tags.image_id != ''")
    parents = client.search_runs([experiment_id], filter_string="tags.kind = 'job'",
                                 order_by=["attributes.start_time ASC"])
    assert len(image_runs) == images
    assert len(parents) == 2 and parents[1].info.status == "FINISHED"
    assert parents[1].data.metrics["images_skipped"] == len(finished)
    assert parents[1].data.metrics["images_done"] == rest
    # The killed job's run was ended when the second job started (its driver was gone), and
    # an image resumed by the second job is under it and lists both.
    first_run, second_run = (p.info.run_id for p in parents)
    killed_run = client.get_run(first_run)
    assert killed_run.info.status == "KILLED"
    assert killed_run.data.tags["superseded_by"] == second_run
    for image_id in partial:
        (run,) = client.search_runs([experiment_id], filter_string=f"tags.image_id = '{image_id}'")
        assert run.data.tags["mlflow.parentRunId"] == second_run
        assert run.data.tags["job_runs"] == f"{first_run},{second_run}"
    print(f"\ndriver killed: {images} images, {len(before_kill)} done at the kill "
          f"({len(finished) - len(before_kill)} more finished by orphans), orphaned trainings "
          f"stopped {orphans_gone_s:.1f} s after; {len(ledgered)} in the ledger at the "
          f"resubmit; resubmitted: {rest} trained ({len(partial)} "
          f"resumed at scales {sorted(len(s) for s in partial.values())}), {len(finished)} "
          f"skipped untouched; MLflow: {len(image_runs)} image runs for {images} images, all "
          f"FINISHED; the killed job's parent run: {killed_run.info.status}")
