"""One storage layer (pipeline/storage.py): one retry layer with jitter and a deadline, S3
requests sent once each (s3fs and botocore add no attempts), listings a LIST request per 1000
keys, and the module's functions on local disk and on moto's S3. Endpoints that fail are real
sockets on 127.0.0.1: one that accepts connections and never answers, one that answers 500."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.catalog import ROW_GROUP_ROWS, write_manifest
from pipeline.storage import Storage, TransientError, with_retries
from singan.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "storage-layer"


# --- endpoints that fail ------------------------------------------------------------------------

class FailingEndpoint:
    """An HTTP endpoint on 127.0.0.1 that counts connections and requests: "hang" accepts
    connections and never answers; "500" answers every request with S3's InternalError."""

    def __init__(self, mode: str):
        self.mode = mode
        self.connections = 0
        self.requests = 0
        self._held: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            self.connections += 1
            if self.mode == "hang":
                self._held.append(client)
            else:
                threading.Thread(target=self._answer_500, args=(client,), daemon=True).start()

    def _answer_500(self, client: socket.socket) -> None:
        with client, client.makefile("rb") as request:
            line = request.readline()
            headers = []
            while (header := request.readline()) not in (b"\r\n", b""):
                headers.append(header.lower())
            self.requests += 1
            # The answer comes before any body: a PUT waiting for "100 Continue" gets it too.
            body = b"" if line.startswith(b"HEAD") else (
                b"<Error><Code>InternalError</Code><Message>boom</Message></Error>")
            client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self._server.close()
        for client in self._held:
            client.close()


@pytest.fixture
def endpoint(request, monkeypatch):
    """A FailingEndpoint (mode from the test's parameter) that s3fs talks to, with a short retry
    schedule: 3 attempts, pauses of about 50 ms."""
    import s3fs

    server = FailingEndpoint(request.param)
    for name, value in fake_credentials(server.url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(storage.RETRY_DELAYS_ENV, "0.05,0.05")
    s3fs.S3FileSystem.clear_instance_cache()  # cached instances keep their old endpoint
    yield server
    server.close()
    s3fs.S3FileSystem.clear_instance_cache()


def fake_credentials(endpoint_url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def attempts_in(message: str) -> int:
    return int(re.search(r"\((\d+) attempts? ", message).group(1))


# --- one retry layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["500"], indirect=True)
def test_each_s3_request_is_sent_once_per_attempt_of_ours(endpoint):
    """Against an endpoint that answers 500 every time, each operation makes exactly as many
    requests as with_retries makes attempts (3): botocore's retries (3 more in its standard
    mode, 4 in legacy) and s3fs's loop add none. The error is one line naming the URL and the
    variable that sets the pauses."""
    url = f"s3://{BUCKET}/m.parquet"
    operations = {
        "write": lambda: storage.write_url(url, b"manifest"),
        "check": lambda: storage.exists(url),
        "kind": lambda: storage.kind(url),
        "read": lambda: storage.read_url(url),
        "list": lambda: next(Storage(f"s3://{BUCKET}/out").iter_names()),
    }
    for what, operation in operations.items():
        before = endpoint.requests
        with pytest.raises(TransientError) as caught:
            operation()
        message = str(caught.value)
        assert endpoint.requests - before == 3 == attempts_in(message), what
        assert "\n" not in message and f"s3://{BUCKET}/" in message, message
        assert storage.RETRY_DELAYS_ENV in message, message
    assert endpoint.connections == endpoint.requests  # one request per connection: none unseen


def test_the_s3_filesystem_sends_once_and_keeps_what_the_user_configured(monkeypatch):
    import fsspec

    monkeypatch.setitem(fsspec.config.conf, "s3", {
        "config_kwargs": {"read_timeout": 30, "max_pool_connections": 7,
                          "retries": {"max_attempts": 10}},
        "requester_pays": True})
    monkeypatch.setenv(storage.TIMEOUT_ENV, "20")
    fs, path = storage.filesystem(f"s3://{BUCKET}/a/b.png")
    assert path == f"{BUCKET}/a/b.png" and fs.retries == 1
    assert fs.config_kwargs == {"read_timeout": 20, "connect_timeout": 5,
                                "max_pool_connections": 7, "retries": storage.ONE_ATTEMPT}
    assert fs.requester_pays
    # botocore's client counts the first attempt in: one attempt, no retry.
    assert fs.s3.meta.config.retries["total_max_attempts"] == 1
    with pytest.raises(InputError, match="^nope://x: cannot open"):
        storage.filesystem("nope://x")


@pytest.mark.parametrize("endpoint", ["hang"], indirect=True)
def test_make_manifest_against_s3_that_never_answers(endpoint, tmp_path):
    """make_manifest writing to an S3 endpoint that accepts connections and never answers: exit
    status 2 within the deadline (4 x the 1 s limit here), one line on stderr naming the URL
    and the variable, no traceback; the endpoint saw one connection per attempt of ours."""
    out = f"s3://{BUCKET}/photos.parquet"
    (tmp_path / "photos").mkdir()
    env = {**os.environ, **fake_credentials(endpoint.url), storage.TIMEOUT_ENV: "1",
           storage.RETRY_DELAYS_ENV: "0.05,0.05"}
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "make_manifest.py"),
                           str(tmp_path / "photos"), "--out", out], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    print(f"stderr: {done.stderr!r}; {endpoint.connections} connections")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.fullmatch(rf"error: check {out}: no answer within [\d.]+ s \(\d attempts of up to "
                        rf"1\.0 s; {storage.TIMEOUT_ENV} sets the limit per attempt\)\n",
                        done.stderr), done.stderr
    assert endpoint.connections == attempts_in(done.stderr) >= 2


@pytest.mark.parametrize("endpoint", ["hang"], indirect=True)
def test_a_write_to_s3_that_never_answers_is_cut_by_our_limit(endpoint, monkeypatch):
    """The case that took 413 s: a PUT waits for an answer that never comes. Each attempt is
    cut by our per-call limit, one connection each."""
    monkeypatch.setenv(storage.TIMEOUT_ENV, "1")
    url = f"s3://{BUCKET}/m.parquet"
    with pytest.raises(TransientError) as caught:
        storage.write_url(url, b"x" * 1000)
    message = str(caught.value)
    assert message.startswith(f"write {url}: no answer within ") and storage.TIMEOUT_ENV in message
    assert endpoint.connections == attempts_in(message) >= 2


class FakeClock:
    """time.monotonic and time.sleep for storage.with_retries, without waiting."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("jitter", [0.5, 1.5])  # the extremes of the random factor
@pytest.mark.parametrize("answer_after", [None, 15.0, 1.0])  # the limit, s3fs's read timeout
def test_default_limits_end_a_never_answering_operation_within_five_minutes(
        monkeypatch, jitter, answer_after):
    """With the default limit, schedule and deadline, an operation whose every attempt times out
    (after the full per-call limit, or sooner at s3fs's read timeout) ends within the deadline,
    4 x 60 s + 1.5 x 15.5 s, inside 5 minutes. Computed on a fake clock, not waited for."""
    monkeypatch.delenv(storage.TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(storage.RETRY_DELAYS_ENV, raising=False)
    clock = FakeClock()
    monkeypatch.setattr(storage, "time", clock)
    monkeypatch.setattr(storage._jitter, "uniform", lambda low, high: jitter)
    limit = storage.operation_timeout()
    assert limit == 60 and storage.operation_deadline() == 240 + 1.5 * 15.5 <= 5 * 60

    def never_answers():
        clock.now += answer_after or limit
        raise TimeoutError("no answer")

    with pytest.raises(TransientError) as caught:
        with_retries("write s3://b/m.parquet", never_answers)
    attempts = len(clock.sleeps) + 1
    assert clock.now <= storage.operation_deadline()
    assert clock.sleeps == [jitter * delay for delay in storage.RETRY_DELAYS[:attempts - 1]]
    # Attempts that take the whole minute: a fifth could not end in time. Shorter ones: the
    # schedule runs out first.
    assert attempts == (4 if answer_after is None else 6)
    print(f"attempts of {answer_after or limit:g} s, jitter x{jitter}: {attempts} attempts, "
          f"{clock.now:.1f} s")
    assert str(caught.value) == (
        f"write s3://b/m.parquet: no answer within {clock.now:.0f} s ({attempts} attempts of up "
        f"to 60 s; {storage.TIMEOUT_ENV} sets the limit per attempt)")


def test_fast_failures_get_the_whole_schedule_whatever_the_limit(monkeypatch):
    """A short per-call limit does not cut the pauses short: refused connections are retried
    for the whole schedule (5 pauses), though it outlasts 4 x the limit."""
    monkeypatch.setenv(storage.TIMEOUT_ENV, "0.5")
    monkeypatch.delenv(storage.RETRY_DELAYS_ENV, raising=False)
    clock = FakeClock()
    monkeypatch.setattr(storage, "time", clock)
    with pytest.raises(TransientError, match=r"\(6 attempts in \d+ s; "):
        with_retries("op", lambda: (_ for _ in ()).throw(ConnectionRefusedError("refused")))
    assert len(clock.sleeps) == 5 and clock.now > 4 * 0.5


def test_pauses_are_jittered_within_bounds(monkeypatch):
    samples = [storage.backoff(2.0) for _ in range(2000)]
    assert all(1.0 <= pause <= 3.0 for pause in samples)
    assert len(set(samples)) > 1000  # drawn, not fixed
    assert storage.backoff(0) == 0
    clock = FakeClock()
    monkeypatch.setattr(storage, "time", clock)
    monkeypatch.setenv(storage.RETRY_DELAYS_ENV, "0.5,1,2,4")
    with pytest.raises(TransientError, match=r"op: ConnectionError: down \(5 attempts in"):
        with_retries("op", lambda: (_ for _ in ()).throw(ConnectionError("down")))
    for pause, delay in zip(clock.sleeps, (0.5, 1, 2, 4), strict=True):
        assert 0.5 * delay <= pause <= 1.5 * delay


def test_retry_messages_hide_url_passwords(monkeypatch):
    monkeypatch.setenv(storage.RETRY_DELAYS_ENV, "0")
    with pytest.raises(TransientError) as caught:
        with_retries("read https://user:secret@host/x.png",
                     lambda: (_ for _ in ()).throw(TimeoutError()))
    assert "secret" not in str(caught.value) and "https://***@host/x.png" in str(caught.value)


# --- listings of the ledger: one LIST per 1000 keys ---------------------------------------------

def test_iter_names_on_local_disk_pages_of_1000(tmp_path):
    root = tmp_path / "out"
    names = {f"_results/{i % 7}/{i:05d}.json" for i in range(2500)} | {"_results/top.json"}
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"{}")
    (root / "_results" / "0" / ".00007.json.0a1b2c3d.tmp").write_bytes(b"half")  # a write
    (root / "img" / "model").mkdir(parents=True)
    (root / "img" / "model" / "config.json").write_bytes(b"{}")
    store = Storage(str(root))
    pages = list(store.iter_names("_results"))
    assert [len(page) for page in pages] == [1000, 1000, 501]
    assert {name for page in pages for name in page} == names
    assert {n for page in store.iter_names() for n in page} == names | {"img/model/config.json"}
    assert list(store.iter_names("missing/")) == []
    store.remove(sorted(names)[:1500] + ["_results/never-there.json"])
    assert sum(len(page) for page in store.iter_names("_results/")) == len(names) - 1500


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """An empty bucket on moto's S3 (BUCKET), and moto's backend to fill it without requests."""
    import boto3
    import s3fs
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    for name, value in fake_credentials(moto_endpoint).items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    s3fs.S3FileSystem().rm(BUCKET, recursive=True)  # every key, "folder" markers too, and it
    s3fs.S3FileSystem.clear_instance_cache()


def count_requests(store: Storage, operation: str) -> list[int]:
    """A counter of the `operation` requests (ListObjectsV2, DeleteObjects...) that `store`'s S3
    client sends, from botocore's own event as each request leaves."""
    counter = [0]
    store.fs.s3.meta.events.register(f"before-send.s3.{operation}",
                                     lambda **_: counter.__setitem__(0, counter[0] + 1))
    return counter


def test_iter_names_on_s3_sends_one_list_per_1000_keys(s3):
    """2,500 result files under _results/: 3 LIST requests, pages of about 1000 names,
    nothing left in s3fs's listing cache; removing them takes 3 DeleteObjects requests."""
    names = {f"_results/{i:05d}.json" for i in range(2500)}
    for name in names | {"img/_SUCCESS", "_results/"}:  # and a "folder" marker object
        s3.put_object(BUCKET, f"out/{name}", b"{}")
    store = Storage(f"s3://{BUCKET}/out")
    lists, deletes = count_requests(store, "ListObjectsV2"), count_requests(store, "DeleteObjects")
    pages = []
    for page in store.iter_names("_results"):
        pages.append(page)
        assert lists[0] == len(pages)  # each page is one request, made when it is needed
    print(f"2,500 keys: {lists[0]} LIST requests, pages of {[len(p) for p in pages]}")
    # The folder marker "_results/" takes a key of the first page, and is no file.
    assert [len(page) for page in pages] == [999, 1000, 501]
    assert {name for page in pages for name in page} == names
    assert len(store.fs.dircache) == 0
    for page in pages:
        store.remove(page)
    print(f"removed: {deletes[0]} DeleteObjects requests")
    assert deletes[0] == 3
    assert list(store.iter_names("_results")) == [] and lists[0] == 4
    assert [n for page in store.iter_names() for n in page] == ["img/_SUCCESS"]


# --- the module's functions ---------------------------------------------------------------------

def test_functions_on_local_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage.write_url("a/b/m.bin", b"manifest")  # missing folders are made
    assert os.listdir(tmp_path / "a" / "b") == ["m.bin"]  # no temporary file left
    assert storage.exists("a/b/m.bin") and not storage.exists("a/nope")
    assert storage.kind("a/b/m.bin") == "file" and storage.kind(f"file://{tmp_path}/a") == "directory"
    assert storage.kind("a/nope") is None
    assert storage.is_local("a/b") and storage.is_local("file:///x") and not storage.is_local("s3://b/k")
    assert storage.absolute_url("a/../a/b.png") == f"file://{tmp_path}/a/b.png"
    assert storage.absolute_url("s3://b/k.png") == "s3://b/k.png"
    assert storage.full_url("a/./b/") == f"file://{tmp_path}/a/b"
    (tmp_path / "a" / "c.png").write_bytes(b"png")
    assert storage.list_files("a") == [f"file://{tmp_path}/a/c.png"]
    assert storage.list_files("a", recursive=True) == [f"file://{tmp_path}/a/b/m.bin",
                                                        f"file://{tmp_path}/a/c.png"]
    assert storage.glob_files("a/**/*.bin") == [f"file://{tmp_path}/a/b/m.bin"]
    assert storage.glob_files("a/*") == [f"file://{tmp_path}/a/c.png"]  # files only
    with pytest.raises(InputError, match=f"^{tmp_path}/nope does not exist$"):
        storage.list_files(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="c.png is not a folder$"):
        storage.list_files("a/c.png")
    monkeypatch.setattr(storage, "DOWNLOAD_CHUNK", 3)
    storage.download("a/b/m.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == b"manifest"
    with storage.local_copy("a/b/m.bin") as path:
        assert path == f"{tmp_path}/a/b/m.bin"
    with pytest.raises(FileNotFoundError), storage.local_copy("a/nope"):
        pass
    with pytest.raises(IsADirectoryError), storage.local_copy("a"):
        pass


def test_functions_on_s3(s3, tmp_path, monkeypatch):
    """Downloads come in chunks of DOWNLOAD_CHUNK bytes, one GET each."""
    url = f"s3://{BUCKET}/photos/m.bin"
    data = bytes(range(256)) * 40  # 10,240 bytes
    storage.write_url(url, data)
    s3.put_object(BUCKET, "photos/sub/a.png", b"png")
    assert storage.exists(url) and storage.kind(url) == "file"
    assert storage.kind(f"s3://{BUCKET}/photos") == "directory"
    assert storage.kind(f"s3://{BUCKET}/nope") is None
    assert storage.list_files(f"s3://{BUCKET}/photos") == [url]
    assert storage.list_files(f"s3a://{BUCKET}/photos/", recursive=True) == [
        url, f"s3://{BUCKET}/photos/sub/a.png"]
    assert storage.glob_files(f"s3://{BUCKET}/photos/**/*.png") == [
        f"s3://{BUCKET}/photos/sub/a.png"]
    monkeypatch.setattr(storage, "DOWNLOAD_CHUNK", 4096)
    gets = count_requests(Storage(f"s3://{BUCKET}"), "GetObject")
    with storage.local_copy(url) as path:
        assert Path(path).read_bytes() == data
    assert gets[0] == 3  # 4096 + 4096 + 2048 bytes
    assert not Path(path).exists()  # the temporary copy is gone
    with pytest.raises(FileNotFoundError), storage.local_copy(f"s3://{BUCKET}/nope"):
        pass
    with pytest.raises(IsADirectoryError), storage.local_copy(f"s3://{BUCKET}/photos"):
        pass


def test_write_manifest_writes_row_groups_of_65536_rows(tmp_path):
    rows = [{"image_id": f"img{i}", "uri": f"s3://b/{i}.png"} for i in range(ROW_GROUP_ROWS + 10)]
    write_manifest(rows, str(tmp_path / "m.parquet"))
    metadata = pq.ParquetFile(tmp_path / "m.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [
        ROW_GROUP_ROWS, 10]
    assert os.listdir(tmp_path) == ["m.parquet"]
