"""Security properties of the fleet, each checked through the code paths the job really takes:

1. no image id makes a path escape the output root (refused by the manifest's check, or mapped
   by ImageStore strictly inside its own folder, on local disk and on S3);
2. a model or weights file is loaded as tensors only: every torch.load of the project passes
   weights_only=True, and a file holding a pickled object is refused by every load path without
   running it;
3. no credential from the environment or from a URL reaches MLflow (params, tags, metric keys,
   artifacts) or the job's output and logs;
4. the development services (infra/local/services.py) listen on loopback only, every Ray
   component included;
5. an s3:// URL without any AWS credentials is one clear error, said before any request.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import io
import ipaddress
import json
import logging
import os
import posixpath
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import singan
from jobs import fleet
from pipeline.catalog import write_manifest
from pipeline.inception import stem_weights
from pipeline.ledger import LEDGER, RESULTS
from pipeline.manifest import ManifestError, check_image_id, read_manifest
from pipeline.storage import SUCCESS, ImageStore, Storage, redact
from pipeline.tracking import TRACKING, points_file
from pipeline.train_image import FORCE_MARKER, train_image
from singan.base import scale_file_name
from singan.data.examples import pebbles
from singan.data.image import to_pil
from singan.errors import InputError
from singan.metrics.sifid import WEIGHTS_FILE, find_weights, load_stem
from singan.recipes.consingan.levels import plan_consingan
from singan.recipes.consingan.networks import ConSinGAN
from singan.recipes.singan.levels import plan_pyramid
from singan.recipes.singan.networks import SinGAN
from tests.faults import FAULT_MARKER
from tests.services import make_bucket

ROOT = Path(__file__).resolve().parents[1]


def load_job(name: str):
    """A script of jobs/ as a module (they are run as scripts, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(f"security_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    to_pil(pebbles(28, 36, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


# =============================================================================================
# 1. Image ids cannot leave the output root

# Every file name the layout writes inside an image's folder (pipeline/storage.py's docstring,
# singan/data/outputs.py, pipeline/tasks.py, pipeline/tracking.py, pipeline/train_image.py).
LAYOUT_FILES = (
    "model/config.json", f"model/{scale_file_name(0)}", f"model/{scale_file_name(12)}",
    "reals/scale_00.png", "samples/scale_00.png", "samples/sample_00.png",
    "samples/reconstruction.png", "sr/sr_x4.png", "sr/bicubic_x4.png",
    "animate/start_scale_0/beta_0.90.gif", points_file(0), points_file(12), TRACKING, SUCCESS,
    FAULT_MARKER, FORCE_MARKER, "samples/final.png",
)

# Texts built from the pieces of path tricks: separators, parent folders, drive letters, URL
# syntax, control characters, look-alike unicode.
PIECES = ["..", ".", "/", "\\", "a", "0", "-", "_", "C:", "~", "%2e", "%2f", "\x00", "\n", "\t",
          " ", "?", "#", "@", ":", "*", "\u2215", "\uff0f", "\u202e", "\u0301", "é", "\ud800",
          "s3://", "file://"]
nasty_ids = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
usable_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,140}", fullmatch=True)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
ids = st.one_of(any_text, nasty_ids, usable_ids, st.text(min_size=120, max_size=400))


def inside(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_id=ids)
@example(image_id="../escape")
@example(image_id="/etc/passwd")
@example(image_id="a/../../b")
@example(image_id="..")
@example(image_id="\\\\server\\share")
@example(image_id="C:\\Windows")
@example(image_id="ok\x00.png")
@example(image_id="x" * 129)
@example(image_id="x" * 128)
@example(image_id="a..b")
@example(image_id="s3:")
def test_no_image_id_reaches_outside_its_folder_in_the_output_root(image_id, tmp_path_factory):
    reason = check_image_id(image_id)
    event("refused" if reason else "usable")
    if reason is not None:
        # Refused: the manifest names the problem in one printable line (control characters
        # and odd unicode shown escaped, so a log cannot be forged through an id).
        assert reason and "\n" not in reason and reason.isprintable(), reason
        return
    local_root = os.path.realpath(tmp_path_factory.getbasetemp() / "security-out")
    for root in (local_root, "s3://bucket/outputs"):
        store = ImageStore(root, image_id)
        for name in LAYOUT_FILES:
            url = store.url_of(name)
            if root.startswith("s3://"):
                parts = urllib.parse.urlsplit(url)
                assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == (
                    "s3", "bucket", "", "")
                resolved = posixpath.normpath(parts.path)
                expected = f"/outputs/{image_id}/{name}"
                assert resolved == expected, url
                assert posixpath.normpath("/" + store.path(name)) == f"/bucket{expected}"
                # ... and the bucket and key s3fs will send.
                assert store.fs.split_path(store.path(name))[:2] == ("bucket", expected[1:])
            else:
                assert url.startswith("file://"), url
                resolved = os.path.realpath(url[len("file://"):])
                assert resolved == os.path.realpath(store.path(name))
                assert inside(resolved, local_root), (image_id, resolved)
                assert resolved == os.path.join(local_root, image_id, *name.split("/"))
        # The results table beside the image folders is never one of an image's files.
        assert not inside(Storage(root).path(RESULTS), store.root)
        assert not inside(Storage(root).path(LEDGER), store.root)


def test_refused_ids_stop_the_job_before_anything_is_written(tmp_path, capsys):
    nasty = ["../escape", "/etc/passwd", "a/../../b", "..", "\\\\server\\share", "C:\\x",
             "ok\x00nul", "line\nbreak", "x" * 129, "_results.parquet", ".hidden", "dir/file",
             "r\u202etl", "\uff0fetc"]
    image = tmp_path / "a.png"
    image.write_bytes(png(1))
    manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": i, "uri": str(image)} for i in nasty], str(manifest))
    with pytest.raises(ManifestError) as error:
        read_manifest(str(manifest))
    problems = error.value.problems
    assert len(problems) == len(nasty)
    for number, problem in enumerate(problems):
        assert problem.startswith(f"row {number} (image_id ") and ": image_id " in problem
        assert "\n" not in problem and problem.isprintable(), problem

    output = tmp_path / "out"
    job = load_job("train_manifest")
    code = job.main(["--manifest", str(manifest), "--output", str(output), "--no-tracking",
                     "--sifid-samples", "0"])
    assert code == 2
    assert f"{len(nasty)} problems" in capsys.readouterr().err
    assert not output.exists()


# =============================================================================================
# 2. Model and weights files load tensors only

# The callables that unpickle a file, by their full dotted name; each must get weights_only=True.
TORCH_LOADS = {"torch.load", "torch.serialization.load", "torch.hub.load_state_dict_from_url"}
# Loads that run arbitrary code whatever their arguments: never used.
FORBIDDEN = {"pickle.load", "pickle.loads", "torch.hub.load", "cloudpickle.load",
             "cloudpickle.loads", "dill.load", "dill.loads", "joblib.load"}
SOURCE_DIRS = ("singan", "pipeline", "jobs", "bench", "infra")


def unsafe_loads(source: str, filename: str) -> tuple[list[str], int]:
    """(problems, number of torch loads found) of one Python file: calls of TORCH_LOADS without a
    literal weights_only=True, and calls of FORBIDDEN, resolved through the file's imports."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> dotted name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = dotted(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    problems, found = [], 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        where = f"{filename}:{node.lineno}"
        if name in FORBIDDEN:
            problems.append(f"{where}: {name} runs arbitrary code")
        elif name in TORCH_LOADS:
            found += 1
            flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where}: {name} without weights_only=True")
    return problems, found


def test_the_checker_finds_unsafe_loads():
    problems, found = unsafe_loads(
        "import torch as t\nfrom torch import load\nimport pickle\n"
        "t.load(f, weights_only=True)\nload(f)\nt.hub.load_state_dict_from_url(u)\n"
        "t.load(f, weights_only=flag)\npickle.loads(b)\n", "example.py")
    assert found == 4
    assert problems == ["example.py:5: torch.load without weights_only=True",
                        "example.py:6: torch.hub.load_state_dict_from_url without "
                        "weights_only=True",
                        "example.py:7: torch.load without weights_only=True",
                        "example.py:8: pickle.loads runs arbitrary code"]


def test_every_torch_load_of_the_project_passes_weights_only_true():
    files = sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))
    problems, calls, loading = [], 0, set()
    for path in files:
        name = str(path.relative_to(ROOT))
        found_problems, found = unsafe_loads(path.read_text(), name)
        problems += found_problems
        calls += found
        if found:
            loading.add(name)
    assert problems == []
    # The scan sees the known load sites: model levels (both recipes) and Inception weights.
    assert {"singan/base.py", "singan/metrics/sifid.py"} <= loading
    print(f"{len(files)} files scanned, {calls} torch loads, all weights_only=True")


class WritesMarker:
    """Unpickled by a full unpickler, this creates the file at `path` (any code could run)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def booby_trapped(marker: Path) -> bytes:
    """A torch file holding a tensor and an object that writes `marker` when unpickled."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": WritesMarker(marker)}, buffer)
    return buffer.getvalue()


def model_folder(folder: Path, model, trap: bytes) -> Path:
    """config.json of `model` and a booby-trapped first scale file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**model.metadata(), "finished_scales": 1}))
    (folder / scale_file_name(0)).write_bytes(trap)
    return folder


def test_a_pickled_object_in_a_model_or_weights_file_is_refused_by_every_load_path(
        tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    trap = booby_trapped(marker)
    # The payload is live: a full unpickler runs it.
    control = tmp_path / "control"
    torch.load(io.BytesIO(booby_trapped(control)), weights_only=False)
    assert control.exists()

    paper = singan.config("paper", max_size=28, min_size=12)
    con = singan.config(recipe="consingan", num_scales=3)
    models = {"singan": SinGAN(paper, plan_pyramid(28, 36, paper), 1),
              "consingan": ConSinGAN(con, plan_consingan(60, 80, con), 1)}
    refusals = []
    for recipe, model in models.items():
        # singan.load (the `singan sample` command)
        folder = model_folder(tmp_path / recipe / "model", model, trap)
        with pytest.raises(InputError, match=f"{scale_file_name(0)} cannot be loaded"):
            singan.load(folder)
        refusals.append(f"singan.load {recipe}")
        # ImageStore.load_model (the job's resume)
        store = ImageStore(str(tmp_path), recipe)
        with pytest.raises(InputError, match=f"{scale_file_name(0)} cannot be loaded"):
            store.load_model()
        refusals.append(f"ImageStore.load_model {recipe}")

    # Inception weights: a path, a URL through the job's stem_weights, and torch hub's download.
    weights = tmp_path / "inception.pth"
    weights.write_bytes(trap)
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        load_stem(weights)
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        stem_weights(weights.as_uri(), required=True)
    monkeypatch.delenv("SINGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fake_download(url, dst, hash_prefix=None, progress=True):  # no network: the trap
        Path(dst).write_bytes(trap)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(InputError, match="download .* failed"):
        find_weights(download=True)
    assert (tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE).exists()  # it was "downloaded"
    refusals += ["load_stem", "stem_weights", "torch hub download"]

    assert not marker.exists(), "a load path ran the pickled payload"
    print(f"{len(refusals)} load paths refused the pickled object: {', '.join(refusals)}")


# =============================================================================================
# 3. No credentials in MLflow or the logs

# Distinctive fake secrets: moto and the MLflow test server accept anything.
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY7SECURITY",
    "AWS_SECRET_ACCESS_KEY": "fakeSecretAccessKey-0c9f2e7b41",
    "AWS_SESSION_TOKEN": "fakeSessionToken-5d18a3c6e2",
    "MLFLOW_TRACKING_PASSWORD": "fakeTrackingPassword-7e44b0",
    "MLFLOW_TRACKING_TOKEN": "fakeTrackingToken-2af93d",
}
URL_PASSWORD = "fakeUrlPassword-91b7c5"  # in http(s)://user:password@ image and manifest URLs
TRACKING_PASSWORD = "fakeTrackingUrlPassword-3e6d"  # in the tracking URI
SECRETS = {**SECRET_ENV, "url password": URL_PASSWORD, "tracking URI password": TRACKING_PASSWORD}
TINY = ["--preset", "quick", "--set", "max_size=28", "--set", "min_size=12", "--set", "nfc=8",
        "--set", "max_nfc=16", "--set", "niter=8", "--num-samples", "1", "--sifid-samples", "0",
        "--quality-samples", "0"]


def test_redact_hides_the_credentials_of_urls_only():
    assert redact("http://user:pa55@host:8080/a.png and https://TOKEN@h/x") == (
        "http://***@host:8080/a.png and https://***@h/x")
    for text in ("s3://bucket/key@2x.png", "mlflow-artifacts:/1/run/artifacts",
                 "mail me@example.com", "http://host/path?who=a@b", "/local/a@b.png"):
        assert redact(text) == text


class BasicAuthFiles:
    """An HTTP server on 127.0.0.1 serving `files` (name -> bytes) to `user`:`password` only, with
    range requests (fsspec reads Parquet footers by range)."""

    def __init__(self, files: dict[str, bytes], user: str, password: str):
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes | None:
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                data = files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return data

            def do_HEAD(self):
                data = self._body()
                if data is not None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()

            def do_GET(self):
                data = self._body()
                if data is None:
                    return
                first, last = 0, len(data) - 1
                wanted = self.headers.get("Range", "")
                if wanted.startswith("bytes="):
                    start, _, end = wanted[6:].partition("-")
                    first, last = int(start or 0), min(int(end or last), last)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(last + 1 - first))
                self.end_headers()
                self.wfile.write(data[first:last + 1])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def leaks(where: str, text: str | bytes) -> list[str]:
    """'where: secret name' for every secret found in `text`."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return [f"{where}: {name}" for name, value in SECRETS.items()
            if value.encode() in data or urllib.parse.quote(value).encode() in data]


@pytest.mark.slow
def test_no_credentials_reach_mlflow_or_the_logs(s3_server, mlflow_server, tmp_path, monkeypatch,
                                                 caplog, capsys):
    import s3fs
    from mlflow import MlflowClient

    for name, value in {**s3_server.env, **SECRET_ENV}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "fleet-user")
    s3fs.S3FileSystem.clear_instance_cache()  # instances made with other credentials
    bucket = f"security-{uuid.uuid4().hex[:8]}"
    make_bucket(s3_server.endpoint_url, bucket)
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    s3.pipe_file(f"{bucket}/images/stones.png", png(1))

    # One image on S3 (environment credentials), one behind HTTP basic auth (user:password@ in
    # its URL), the manifest behind basic auth too; the tracking URI carries a password.
    files = {"pebbles.png": png(2), "broken.png": png(3)[:300]}  # a truncated PNG
    server = BasicAuthFiles(files, "reader", URL_PASSWORD)
    try:
        authed = f"http://reader:{URL_PASSWORD}@{server.address}"
        manifest = tmp_path / "m.parquet"
        write_manifest([{"image_id": "from-s3", "uri": f"s3://{bucket}/images/stones.png"},
                        {"image_id": "from-http", "uri": f"{authed}/pebbles.png"},
                        {"image_id": "broken", "uri": f"{authed}/broken.png"}], str(manifest))
        files["m.parquet"] = manifest.read_bytes()
        host = mlflow_server.url.removeprefix("http://")
        experiment = f"security-{uuid.uuid4().hex[:8]}"
        job = load_job("train_manifest")

        def in_process(args, manifest, done, settings, inception, tally, started):
            """The trainings in this process, one after the other, as Ray's workers would."""
            placement = SimpleNamespace(gpus_per_task=0, slots=1)
            tally.progress = fleet.Progress(manifest.num_rows, placement, job.describe,
                                            started=started)
            for row in manifest.rows():
                entry = train_image(row, settings, inception)
                tally.progress.finished(entry, 0)
                tally.add(entry, placement)

        monkeypatch.setattr(job, "_fan_out", in_process)
        caplog.set_level(logging.INFO)
        code = job.main(["--manifest", f"{authed}/m.parquet", "--output", f"s3://{bucket}/out",
                         "--tracking-uri", f"http://tracker:{TRACKING_PASSWORD}@{host}",
                         "--experiment", experiment, "-v", *TINY])
    finally:
        server.close()
        s3fs.S3FileSystem.clear_instance_cache()
    out, err = capsys.readouterr()
    assert code == 1, out + err  # the broken image fails, with its URL in the reason
    assert "2 trained, 0 already done, 1 failed" in out

    found, counts = [], dict.fromkeys(("runs", "params", "tags", "metric keys", "artifacts"), 0)
    client = MlflowClient(mlflow_server.url)
    found_experiment = client.get_experiment_by_name(experiment)
    found += leaks("experiment", json.dumps(dict(found_experiment), default=str))
    runs = client.search_runs([found_experiment.experiment_id])
    assert sorted(r.data.tags.get("image_id", "job") for r in runs) == [
        "broken", "from-http", "from-s3", "job"]
    for run in runs:
        run_id = run.info.run_id
        counts["runs"] += 1
        found += leaks(f"run {run_id} info", json.dumps(dict(run.info)))
        for kind, values in (("params", run.data.params), ("tags", run.data.tags)):
            counts[kind] += len(values)
            found += [f"{kind} of {run_id}: {leak}" for key, value in values.items()
                      for leak in leaks(key, f"{key}={value}")]
        counts["metric keys"] += len(run.data.metrics)
        found += leaks(f"metric keys of {run_id}", " ".join(run.data.metrics))
        folder = tmp_path / "artifacts" / run_id
        folder.mkdir(parents=True)
        client.download_artifacts(run_id, "", str(folder))
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            counts["artifacts"] += 1
            found += leaks(f"artifact {path.relative_to(folder)} of {run_id}", path.read_bytes())
    logs = out + err + caplog.text
    found += [f"job output and logs: {leak}" for line in logs.splitlines()
              for leak in leaks(line, line)]
    assert found == [], "\n".join(found)
    # The runs hold what they should, so that the checks above looked at real content.
    image_run = next(r for r in runs if r.data.tags.get("image_id") == "from-http")
    assert image_run.data.params["uri"] == f"http://***@{server.address}/pebbles.png"
    broken_run = next(r for r in runs if r.data.tags.get("image_id") == "broken")
    assert broken_run.data.tags["error"].startswith(f"http://***@{server.address}/")
    assert counts["artifacts"] >= 2
    print(f"no secret in {counts} nor in {len(logs)} characters of output and logs")


# =============================================================================================
# 4. The development services listen on loopback only


def listening_sockets() -> dict[int, tuple[str, int]]:
    """{socket inode: (address, port)} of every listening TCP socket of this machine."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # The kernel prints the address as 32-bit words in the machine's byte order.
            if sys.byteorder == "little":
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (str(ipaddress.ip_address(raw)), int(hex_port, 16))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return (mapped or ip).is_loopback


def process_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces): state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(process_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue  # gone meanwhile
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def listening_of(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, command, address, port) of every listening TCP socket the processes hold."""
    table = listening_sockets()
    return sorted({(pid, command_line(pid)[:200], *table[inode])
                   for pid in pids for inode in socket_inodes(pid) if inode in table})


def service_leader(port: int) -> int:
    """The process group leader of the service listening on `port` on 127.0.0.1: services.py
    starts each service in its own session, so that is the process it launched."""
    table = listening_sockets()
    wanted = {inode for inode, (_, bound) in table.items() if bound == port}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and socket_inodes(int(entry)) & wanted:
            return int(process_stat(int(entry))[3])  # the session id
    raise AssertionError(f"nothing of ours listens on port {port}")


@pytest.mark.slow
def test_development_services_listen_on_loopback_only(s3_server, mlflow_server, ray_cluster):
    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.services import local_services

    # Ray starts most of its processes on demand: workers, an actor, and a submitted job's
    # driver (under the head), and this process as a driver, all listen too.
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    job_id = client.submit_job(entrypoint='python -c "import ray, time; ray.init(); '
                                          "print('driver connected', flush=True); time.sleep(300)\"")
    try:
        ray.init(address=ray_cluster.address)

        @ray.remote
        def task() -> int:
            return os.getpid()

        @ray.remote
        class Actor:
            def pid(self) -> int:
                return os.getpid()

        actor = Actor.remote()
        assert len(set(ray.get([task.remote(), task.remote(), actor.pid.remote()]))) >= 2
        deadline = time.monotonic() + 180
        while "driver connected" not in client.get_job_logs(job_id):
            status = client.get_job_status(job_id)
            assert not status.is_terminal(), client.get_job_logs(job_id)
            assert time.monotonic() < deadline, f"job {job_id} still {status}"
            time.sleep(0.5)

        ports = {"s3": urllib.parse.urlsplit(s3_server.endpoint_url).port,
                 "mlflow": urllib.parse.urlsplit(mlflow_server.url).port,
                 "ray": int(ray_cluster.address.rsplit(":", 1)[1])}
        leaders = {name: service_leader(port) for name, port in ports.items()}
        for name, leader in leaders.items():
            assert local_services._COMMAND_MARKERS[name] in command_line(leader)
        # The job's driver opens its port a moment after ray.init() returns.
        while not any("python -c import ray" in command
                      for _, command, _, _ in listening_of(process_tree(leaders["ray"]))):
            assert time.monotonic() < deadline, "the job's driver never listened"
            time.sleep(0.5)
        sockets = {name: listening_of(process_tree(leader)) for name, leader in leaders.items()}
        sockets["ray driver (this process)"] = listening_of([os.getpid()])
    finally:
        ray.shutdown()
        client.stop_job(job_id)
        deadline = time.monotonic() + 60
        while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)

    exposed = [(name, *found) for name, found in sockets.items() for found in found
               if not is_loopback(found[2])]
    assert exposed == []
    counts = {name: len(found) for name, found in sockets.items()}
    # Every component was seen: moto; MLflow's server; Ray's GCS, raylet (node and object
    # managers), dashboard, its agents, the client server, workers and both drivers.
    assert counts["s3"] >= 1 and counts["mlflow"] >= 1 and counts["ray driver (this process)"] >= 1
    ray_commands = " ".join(command for _, command, _, _ in sockets["ray"])
    for part in ("gcs_server", "raylet", "ray/dashboard/dashboard.py", "ray::DashboardAgent",
                 "ray::RuntimeEnvAgent", "ray.util.client.server", "ray::Actor",
                 "ray::JobSupervisor", "python -c import ray"):
        assert part in ray_commands, (part, sockets["ray"])
    assert client.get_job_status(job_id) in (JobStatus.STOPPED, JobStatus.FAILED,
                                             JobStatus.SUCCEEDED)
    print(f"listening sockets, all on loopback: {counts}")


# =============================================================================================
# 5. S3 without credentials: one clear error before any request


@pytest.fixture
def no_aws_credentials(s3_server, tmp_path, monkeypatch):
    """Nothing for botocore to find: no AWS_* credential variable, an empty home (no ~/.aws),
    no instance metadata probe (nothing may leave 127.0.0.1); requests, were any sent, would go
    to the local moto server. Yields a bucket there holding one image."""
    import s3fs

    bucket = f"security-{uuid.uuid4().hex[:8]}"
    make_bucket(s3_server.endpoint_url, bucket)
    with_keys = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=s3_server.endpoint_url,
                                  key="testing", secret="testing")
    with_keys.pipe_file(f"{bucket}/photos/stones.png", png(1))
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()  # instances made with credentials
    yield bucket
    s3fs.S3FileSystem.clear_instance_cache()
    assert with_keys.find(bucket) == [f"{bucket}/photos/stones.png"]  # nothing was written


def assert_no_credentials_error(stderr: str, url: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # one line, no traceback
    assert f"{url}: no AWS credentials found" in lines[0], stderr
    assert "AWS_ACCESS_KEY_ID" in lines[0] and "AWS_PROFILE" in lines[0], stderr


@pytest.mark.slow
def test_s3_without_credentials_is_one_clear_error_before_any_request(no_aws_credentials,
                                                                      tmp_path, monkeypatch,
                                                                      capsys):
    import botocore.session

    bucket = no_aws_credentials
    assert botocore.session.Session().get_credentials() is None  # the setting is right
    # The error below is the project's own check; botocore's, after a request was prepared,
    # says "Unable to locate credentials" (and moto might even answer unsigned requests).
    job = load_job("train_manifest")
    monkeypatch.setattr(job, "_fan_out", lambda *args: pytest.fail("the job started training"))
    make_manifest = load_job("make_manifest")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "stones.png").write_bytes(png(1))
    local_manifest = tmp_path / "m.parquet"
    write_manifest([{"image_id": "stones", "uri": str(photos / "stones.png")}],
                   str(local_manifest))

    cases = [  # (command, arguments, the URL the error names)
        (job.main, ["--manifest", f"s3://{bucket}/m.parquet", "--output", f"s3://{bucket}/out"],
         f"s3://{bucket}/m.parquet"),
        (job.main, ["--manifest", str(local_manifest), "--output", f"s3://{bucket}/out"],
         f"s3://{bucket}/out"),
        (make_manifest.main, [f"s3://{bucket}/photos", "--out", str(tmp_path / "new.parquet")],
         f"s3://{bucket}/photos"),
        (make_manifest.main, [str(photos), "--out", f"s3://{bucket}/new.parquet"],
         f"s3://{bucket}/new.parquet"),
    ]
    for command, args, url in cases:
        common = ["--no-tracking", "--sifid-samples", "0"] if command is job.main else []
        assert command([*args, *common]) == 2, args
        assert_no_credentials_error(capsys.readouterr().err, url)
    assert not (tmp_path / "new.parquet").exists()
