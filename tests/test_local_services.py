"""infra/local/services.py: its command line (fast), and the three real services it starts, used
the way the pipeline uses them (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.services import local_services, make_bucket

# A process id above Linux's maximum (2**22): never a running process.
DEAD_PID = 2**22 + 1


def write_records(state, **records):
    state.mkdir(exist_ok=True)
    (state / "services.json").write_text(json.dumps(records))


# ---------------------------------------------------------------------------------------------
# Command line


def test_parse_start_defaults_to_all_services_on_default_ports():
    args = local_services.parse_args(["start"])
    assert args.services == ["ray", "mlflow", "s3"]
    assert (args.ray_port, args.dashboard_port, args.mlflow_port, args.s3_port) == (
        6379, 8265, 5000, 5002)
    assert args.num_cpus is None and args.num_gpus is None
    assert str(args.state_dir) == ".local-services"


def test_parse_start_some_services_with_options(tmp_path):
    args = local_services.parse_args(["start", "--s3-port", "0", "s3", "ray", "--num-cpus", "1",
                                      "--state-dir", str(tmp_path)])
    assert args.services == ["s3", "ray"]
    assert (args.s3_port, args.num_cpus, args.state_dir) == (0, 1, tmp_path)


def test_parse_refuses_an_unknown_service(capsys):
    with pytest.raises(SystemExit):
        local_services.parse_args(["stop", "redis"])
    assert "unknown service redis" in capsys.readouterr().err


def test_env_prints_shell_exports_of_the_recorded_services(tmp_path, capsys):
    write_records(
        tmp_path,
        ray={"address": "127.0.0.1:6379", "dashboard_url": "http://127.0.0.1:8265",
             "pid": DEAD_PID, "log": "ray.log"},
        mlflow={"url": "http://127.0.0.1:5000", "pid": DEAD_PID, "log": "mlflow.log"},
        s3={"endpoint_url": "http://127.0.0.1:5002", "pid": DEAD_PID, "log": "s3.log"},
    )
    assert local_services.main(["env", "--state-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "export RAY_ADDRESS=http://127.0.0.1:8265",
        "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0",
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
        "export AWS_ENDPOINT_URL=http://127.0.0.1:5002",
        "export AWS_ACCESS_KEY_ID=testing",
        "export AWS_SECRET_ACCESS_KEY=testing",
        "export AWS_DEFAULT_REGION=us-east-1",
    ]
    assert "mlflow is recorded but not running" in err
    # What `eval "$(services.py env)"` does.
    shell = subprocess.run(["sh", "-c", out + 'echo "$MLFLOW_TRACKING_URI $AWS_ENDPOINT_URL"'],
                           capture_output=True, text=True, check=True)
    assert shell.stdout == "http://127.0.0.1:5000 http://127.0.0.1:5002\n"


def test_env_without_services_is_an_error(tmp_path, capsys):
    assert local_services.main(["env", "--state-dir", str(tmp_path)]) == 1
    assert "run `start` first" in capsys.readouterr().err


def test_stale_records_read_as_stopped_and_stop_forgets_them(tmp_path, capsys):
    write_records(tmp_path, s3={"endpoint_url": "http://127.0.0.1:5002", "pid": DEAD_PID,
                                "log": "s3.log"})
    assert local_services.running(tmp_path) == {}
    assert local_services.main(["status", "--state-dir", str(tmp_path)]) == 0
    assert "s3      stopped" in capsys.readouterr().out
    assert local_services.stop(["s3"], tmp_path) == []
    assert local_services.recorded(tmp_path) == {}


def test_a_port_in_use_is_refused_before_starting(tmp_path):
    with local_services.socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(local_services.ServiceError, match=f"port {port} .* is in use"):
            local_services.start_s3(tmp_path, port=port)
    assert local_services.recorded(tmp_path) == {}


def test_a_service_that_exits_while_starting_shows_its_log(tmp_path, monkeypatch):
    broken = tmp_path / "broken_server"
    broken.write_text('#!/bin/sh\necho "unknown option $1"\nexit 3\n')
    broken.chmod(0o755)
    monkeypatch.setattr(local_services, "_executable", lambda name: str(broken))
    with pytest.raises(local_services.ServiceError) as error:
        local_services.start_s3(tmp_path / "state", port=0)
    message = str(error.value)
    assert "s3 exited with status 3 while starting" in message
    assert f"last lines of {tmp_path / 'state' / 's3.log'}:\nunknown option -H" in message
    assert local_services.recorded(tmp_path / "state") == {}


def test_health_says_which_service_is_down_with_its_log(tmp_path):
    server = local_services.start_s3(tmp_path, port=0)
    try:
        assert local_services.health("s3", tmp_path) is None
        pid = json.loads((tmp_path / "services.json").read_text())["s3"]["pid"]
        local_services.os.killpg(pid, local_services.signal.SIGKILL)
        problem = local_services.health("s3", tmp_path, timeout=5)
        assert problem.startswith(f"s3 (pid {pid}) is not running; last lines of ")
        assert local_services.health("mlflow", tmp_path) == f"mlflow is not recorded in {tmp_path}"
    finally:
        local_services.stop(["s3"], tmp_path)
    assert server.endpoint_url.startswith("http://127.0.0.1:")


def test_a_shared_test_service_that_died_starts_again_on_its_port_with_a_warning(tmp_path):
    """What the session fixtures (tests/services.py) do before each test that uses a service."""
    from tests.services import SharedService, _start_s3

    states = iter(tmp_path / f"state{i}" for i in range(3))
    shared = SharedService("s3", _start_s3, lambda: next(states))
    try:
        first = shared.get()
        assert shared.get() is first  # alive: reused
        pid = json.loads((shared.state / "services.json").read_text())["s3"]["pid"]
        local_services.os.killpg(pid, local_services.signal.SIGKILL)
        assert "is not running" in shared.problem()
        with pytest.warns(UserWarning, match=r"shared s3 service is down; starting it again\. "
                                             r"s3 \(pid \d+\) is not running; last lines of"):
            second = shared.get()
        assert second.endpoint_url == first.endpoint_url  # module fixtures keep working
        assert shared.problem() is None and len(shared.restarts) == 1
    finally:
        shared.stop()


# ---------------------------------------------------------------------------------------------
# Real services


@pytest.mark.slow
def test_s3_server_round_trip_through_s3fs(s3_server, monkeypatch):
    import s3fs

    bucket = f"services-{uuid.uuid4().hex[:8]}"
    make_bucket(s3_server.endpoint_url, bucket)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    # No endpoint argument: s3fs (through botocore) reads AWS_ENDPOINT_URL, as workers will.
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{bucket}/dir/hello.txt", b"hello, moto")
    assert fs.cat(f"{bucket}/dir/hello.txt") == b"hello, moto"
    assert fs.ls(f"{bucket}/dir") == [f"{bucket}/dir/hello.txt"]


@pytest.mark.slow
def test_mlflow_server_keeps_metrics_and_artifacts(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment(f"services-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 0.25, step=3)
    note = tmp_path / "note.txt"
    note.write_text("artifact body")
    client.log_artifact(run_id, str(note), artifact_path="notes")
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.data.metrics == {"loss": 0.25}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(3, 0.25)]
    # Proxied artifacts: the run stores an mlflow-artifacts: URI, the server holds the file.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
    back = tmp_path / "back"
    back.mkdir()
    downloaded = client.download_artifacts(run_id, "notes/note.txt", str(back))
    assert Path(downloaded).read_text() == "artifact body"


@pytest.mark.slow
def test_ray_cluster_runs_a_submitted_job(ray_cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    job_id = client.submit_job(
        entrypoint='python -c "import ray; ray.init(); print(ray.cluster_resources())"')
    deadline = time.monotonic() + 300  # only so that a broken cluster cannot hang the suite
    while not (status := client.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert "'CPU': 2.0" in logs
    assert "'node:127.0.0.1': 1.0" in logs  # the node is on loopback


@pytest.mark.slow
def test_ray_cluster_accepts_a_driver_from_this_process(ray_cluster):
    import ray

    ray.init(address=ray_cluster.address)
    try:
        assert ray.get(ray.put("through the object store")) == "through the object store"
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_fake_autoscaling_cluster_starts_with_no_cpu_and_no_gpu(fake_autoscaling_cluster):
    import ray

    ray.init(address=fake_autoscaling_cluster.address)
    resources = ray.cluster_resources()
    assert "CPU" not in resources and "GPU" not in resources
    assert resources["node:127.0.0.1"] == 1  # the head alone, on loopback


@pytest.mark.slow
@pytest.mark.xdist_group("shared-services")  # as the fixture's tests: no two clusters at once
def test_stopping_a_fake_autoscaling_cluster_stops_its_worker_nodes():
    """The autoscaler starts worker nodes outside `ray start`'s process tree: stop gets them too."""
    import ray
    from ray.autoscaler.sdk import request_resources

    from tests.services import _ray_state

    state = _ray_state()
    try:
        head = local_services.start_fake_autoscaling_cluster(state)
        pid = json.loads((state / "services.json").read_text())["ray"]["pid"]
        ray.init(address=head.address)
        try:
            request_resources(num_cpus=1)  # the autoscaler adds a node, as for a pending task
            deadline = time.monotonic() + 300  # only so that a broken cluster cannot hang
            while ray.cluster_resources().get("CPU") != 1:
                assert time.monotonic() < deadline, "no worker node joined"
                time.sleep(0.5)
            assert ray.cluster_resources()["GPU"] == 1
        finally:
            ray.shutdown()
        worker_raylets = [member for member, parent, command in local_services._group_members(pid)
                          if "/raylet/raylet " in command and parent != pid]
        assert len(worker_raylets) == 1
        assert local_services.stop(["ray"], state) == ["ray"]
        assert local_services._group_members(pid) == []
        assert local_services.recorded(state) == {}
    finally:
        local_services.stop(["ray"], state)
        shutil.rmtree(state, ignore_errors=True)
