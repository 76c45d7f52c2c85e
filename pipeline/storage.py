"""All remote storage of the project goes through this module: the only one that imports fsspec
(and, through it, s3fs and botocore). Local disk, S3, any fsspec URL.

One image's folder under the output URL (README.md, "Outputs"):

    {output}/{image_id}/model/config.json      config, pyramid plan, seed, finished_scales
    {output}/{image_id}/model/scale_00.pt ...  one file per finished scale (the resume point)
    {output}/{image_id}/reals/scale_00.png ...
    {output}/{image_id}/samples/...            scale_XX.png per scale, final samples
    {output}/{image_id}/sr/...                 task sr: sr_xF.png and bicubic_xF.png (F: factor)
    {output}/{image_id}/animate/...            task animate: start_scale_S/beta_B.gif
    {output}/{image_id}/metrics/scale_XX.jsonl every metric point of a scale, written once
    {output}/{image_id}/tracking.json          the image's MLflow run, so a retry reuses it
    {output}/{image_id}/_SUCCESS               written last: the image is done
    {output}/_results/, _results.parquet       the ledger and its compaction (pipeline.ledger)

Every write is whole or absent: a temporary file renamed into place on local disk, a single PUT
on object stores (an S3 object appears whole or not at all). `config.json` is written after the
scale file it counts, so a reader never sees a finished scale without its file.

Time limits and retries, one layer (ours):
- `filesystem` makes every filesystem. On S3 it turns s3fs's own retry loop and botocore's off
  (one attempt per request; stacked, they turned one stalled write into 413 s and two
  tracebacks) and caps s3fs's connect and read timeouts at the per-call limit.
- Each remote call has a time limit, SINGAN_FLEET_STORAGE_TIMEOUT (60 s): fsspec cancels an
  asynchronous filesystem's call after it (an endpoint that accepts connections and never
  answers would otherwise hold a write forever: aiohttp waits for S3's 100-continue reply with no
  limit of its own).
- `with_retries` tries a failing operation again after the pauses of
  SINGAN_FLEET_STORAGE_RETRY_DELAYS (0.5, 1, 2, 4, 8 s), each times a random factor in
  [0.5, 1.5] (workers that failed together do not retry together), and starts no attempt that
  could end after the operation's deadline: DEADLINE_ATTEMPTS (4) x the per-call limit plus room
  for the pauses (1.5 x their sum), 240 + 23 s by default. Fast failures (refused connections,
  5xx) get the whole schedule; an endpoint that never answers gets 4 attempts of 60 s and ends
  the operation after about 4 minutes (reads and checks give up sooner: botocore stops waiting
  for an answer after s3fs's 15 s read timeout, 6 attempts in under 2 minutes). Then it raises
  TransientError, one line naming the URL and the variable to change; Ray retries the row's task
  on it, and a write cut off midway leaves no object.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import posixpath
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import fsspec
import torch
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.local import LocalFileSystem

from singan.api import load_files
from singan.base import Pyramid, scale_file_name
from singan.data.files import atomic_write
from singan.data.image import png_bytes
from singan.errors import InputError, one_line

logger = logging.getLogger(__name__)

T = TypeVar("T")

SUCCESS = "_SUCCESS"
# Seconds between attempts at one storage operation: 15.5 s of back-off rides out a short
# outage or throttling. SINGAN_FLEET_STORAGE_RETRY_DELAYS sets others ("1,5,30": longer).
RETRY_DELAYS = (0.5, 1, 2, 4, 8)
RETRY_DELAYS_ENV = "SINGAN_FLEET_STORAGE_RETRY_DELAYS"
# Each pause is the schedule's times a factor drawn in this range, so that the workers that one
# outage failed together do not all come back in the same instant.
JITTER = (0.5, 1.5)
# Seconds one remote storage call may take, whole (connect, send, wait, read); enough for a
# scale file of a few MB over a slow link, or a 100 MB manifest at 2 MB/s. Slower links:
# SINGAN_FLEET_STORAGE_TIMEOUT sets another.
OPERATION_TIMEOUT = 60.0
TIMEOUT_ENV = "SINGAN_FLEET_STORAGE_TIMEOUT"
# An operation (all its attempts and pauses) ends within this many per-call limits plus room for
# its pauses: no attempt starts that could end later. An endpoint that never answers costs
# 4 x 60 s and 3 pauses, about 4 minutes; fast failures get the whole schedule.
DEADLINE_ATTEMPTS = 4
S3_PROTOCOLS = ("s3", "s3a")
# Keys per S3 LIST and DeleteObjects request (S3's maximum), and names per page on other disks.
PAGE = 1000
DOWNLOAD_CHUNK = 8 * 2**20  # bytes per request of `download`: its memory, whatever the size
# What botocore must do with a request: send it once (its "max_attempts" option means retries,
# so 1 there would be 2 attempts; "total_max_attempts" counts the first one).
ONE_ATTEMPT = {"total_max_attempts": 1, "mode": "standard"}


def _env_seconds(name: str, text: str, positive: bool) -> tuple[float, ...]:
    """The comma-separated seconds in `text`, the value of the environment variable `name`."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"{name}={text!r}: {part.strip()!r} is not seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "above 0" if positive else "0 or more"
            raise InputError(f"{name}={text!r}: {part.strip()!r} must be {bound} and finite")
        values.append(value)
    return tuple(values)


def operation_timeout() -> float:
    """The time limit of one remote storage call, in seconds (OPERATION_TIMEOUT or the env)."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return OPERATION_TIMEOUT
    values = _env_seconds(TIMEOUT_ENV, text, positive=True)
    if len(values) != 1:
        raise InputError(f"{TIMEOUT_ENV}={text!r}: expected one number of seconds")
    return values[0]


def operation_deadline(delays: tuple[float, ...] | None = None) -> float:
    """The seconds within which one storage operation ends, all attempts and pauses included:
    DEADLINE_ATTEMPTS x the per-call limit, plus the longest the pauses of `delays` (by default
    retry_delays()) can take with jitter."""
    delays = retry_delays() if delays is None else delays
    return DEADLINE_ATTEMPTS * operation_timeout() + JITTER[1] * sum(delays)


def retry_delays() -> tuple[float, ...]:
    """The seconds between attempts at one storage operation: RETRY_DELAYS, or the env's comma-
    separated list (n delays, at most n + 1 attempts), before jitter."""
    text = os.environ.get(RETRY_DELAYS_ENV)
    return _env_seconds(RETRY_DELAYS_ENV, text, positive=False) if text else RETRY_DELAYS


_jitter = random.Random()  # its own generator: seeding the global one elsewhere changes nothing


def backoff(delay: float) -> float:
    """The pause before the next attempt: `delay` times a random factor in JITTER."""
    return delay * _jitter.uniform(*JITTER)


def limits(fs: fsspec.AbstractFileSystem) -> dict[str, float]:
    """Keyword arguments that bound one call of `fs` in time: fsspec runs an asynchronous
    filesystem's calls (S3, GCS, HTTP...) on its event loop and cancels them after `timeout`
    seconds (FSTimeoutError, a TimeoutError); local calls need none."""
    return {"timeout": operation_timeout()} if isinstance(fs, AsyncFileSystem) else {}


def _s3_options() -> dict[str, Any]:
    """s3fs options that leave retrying to `with_retries`, on top of what the user configured
    through fsspec's configuration (fsspec.config.conf, FSSPEC_S3_* variables); credentials,
    endpoint (AWS_ENDPOINT_URL) and region still come from the AWS_* variables and ~/.aws."""
    cls = fsspec.get_filesystem_class("s3")
    configured: dict[str, Any] = {}
    for protocol in S3_PROTOCOLS:
        configured.update(fsspec.config.conf.get(protocol, {}))
    config = dict(configured.get("config_kwargs") or {})
    limit = operation_timeout()
    # s3fs's defaults are 5 s to connect and 15 s between bytes read: kept when shorter.
    for name in ("connect_timeout", "read_timeout"):
        config[name] = min(config.get(name, getattr(cls, name)), limit)
    config["retries"] = dict(ONE_ATTEMPT)
    # No listing cache: a long-running worker would hold every listing it ever made, and answer
    # later questions from stale ones.
    return {"use_listings_cache": False, **configured, "config_kwargs": config}


def split_protocol(url: str) -> tuple[str | None, str]:
    """(protocol, rest) of `url`; the protocol is None for a plain local path."""
    return fsspec.core.split_protocol(url)


def is_local(url: str) -> bool:
    """Whether `url` is on local disk (a plain path or file://)."""
    return split_protocol(url)[0] in (None, "file", "local")


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return bool(set(protocols) & set(S3_PROTOCOLS))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `url` and the path in it: the one place where filesystems are made.

    On S3, each request is sent once (s3fs's and botocore's retries off) and s3fs waits no
    longer than the per-call limit to connect or between bytes read; `with_retries` is the only
    retry layer. A local path comes back absolute and normalised (fsspec keeps '..'). A URL
    whose protocol is unknown, or whose driver is not installed, is an InputError naming it.
    """
    protocol, _ = split_protocol(url)
    try:
        if protocol in S3_PROTOCOLS:
            fs, path = fsspec.core.url_to_fs(url, **_s3_options())
            # A class attribute of s3fs (5), read at each request: one attempt per request.
            fs.retries = 1
        else:
            fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as err:
        raise InputError(f"{redact(url)}: cannot open ({one_line(err)})") from err
    if isinstance(fs, LocalFileSystem):
        path = os.path.normpath(path)
    return fs, path


class TransientError(RuntimeError):
    """A storage operation kept failing in a way that may pass (network, throttling, 5xx).

    The Ray task is retried on this error, and the retry resumes at the last finished scale.
    """


def is_transient(err: BaseException) -> bool:
    """Whether retrying `err` may succeed: network and server trouble yes, a missing file or a
    refused permission no."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, FileExistsError)):
        return False
    # s3fs and most fsspec backends report network and 5xx trouble as OSError subclasses;
    # aiohttp's and botocore's own connection errors are matched by name to avoid importing them.
    # botocore's HTTPClientError is the base of its ConnectionClosedError (the server hung up
    # without an answer), which s3fs passes on untranslated.
    names = {cls.__name__ for cls in type(err).__mro__}
    return (isinstance(err, (ConnectionError, TimeoutError, OSError))
            or bool(names & {"ClientConnectionError", "ServerDisconnectedError", "EndpointConnectionError",
                             "ConnectTimeoutError", "ReadTimeoutError", "ClientPayloadError",
                             "HTTPClientError"}))


def _is_timeout(err: BaseException) -> bool:
    """Whether `err` says the other side did not answer in time (ours, aiohttp's or botocore's
    time limit)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    return isinstance(err, TimeoutError) or bool(names & {"ConnectTimeoutError",
                                                          "ReadTimeoutError"})


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def with_retries(what: str, operation: Callable[[], T],
                 delays: tuple[float, ...] | None = None) -> T:
    """Run `operation`, retrying transient failures after the pauses of `delays` (by default
    retry_delays()), each jittered (`backoff`), for as long as the next attempt can end within
    operation_deadline(delays) of the start. Raise the original error at once when it is not
    transient, and TransientError, one line starting with `what` (redacted), when they persist.
    """
    delays = retry_delays() if delays is None else delays
    limit, deadline = operation_timeout(), operation_deadline(delays)
    what = redact(what)
    start = time.monotonic()
    for attempt in range(1, len(delays) + 2):
        try:
            return operation()
        except Exception as err:
            if not is_transient(err):
                raise
            elapsed = time.monotonic() - start
            pause = backoff(delays[attempt - 1]) if attempt <= len(delays) else None
            if pause is None or elapsed + pause + limit > deadline:
                raise TransientError(_gave_up(what, err, attempt, elapsed, limit)) from err
            logger.warning("%s failed (%s); attempt %d, retrying in %.2fs", what, one_line(err),
                           attempt, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _gave_up(what: str, err: BaseException, attempts: int, elapsed: float, limit: float) -> str:
    """The one line of a TransientError: what failed, how often, and which variable to change."""
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    if _is_timeout(err):
        return (f"{what}: no answer within {_seconds(elapsed)} s ({tries} of up to "
                f"{_seconds(limit)} s; {TIMEOUT_ENV} sets the limit per attempt)")
    return (f"{what}: {one_line(err)} ({tries} in {_seconds(elapsed)} s; {RETRY_DELAYS_ENV} "
            f"sets the pauses between attempts)")


def _retried(what: str, url: str, operation: Callable[[], T]) -> T:
    """`with_retries` for the module's functions: a refused permission becomes one InputError
    line naming `url` (bad input: retrying will not help, and a traceback says less)."""
    try:
        return with_retries(f"{what} {url}", operation)
    except PermissionError as err:
        raise InputError(f"{redact(url)}: permission denied ({one_line(err)})") from err


def read_url(url: str, end: int | None = None) -> bytes:
    """The bytes of any fsspec URL (its first `end` bytes when given), with a time limit and
    retries on transient failures."""
    fs, path = filesystem(url)
    return with_retries(f"read {url}", partial(
        fs.cat_file, path, start=None if end is None else 0, end=end, **limits(fs)))


def _write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """One attempt at writing `data` to `path`, whole or not at all."""
    if isinstance(fs, LocalFileSystem):
        atomic_write(path, lambda f: f.write(data))
    else:
        fs.pipe_file(path, data, **limits(fs))  # one PUT: the object appears whole or not at all


def write_url(url: str, data: bytes) -> None:
    """Write `data` to `url`, whole or not at all (a temporary file renamed on local disk, one
    PUT on object stores), with the time limit and retries."""
    fs, path = filesystem(url)
    _retried("write", url, partial(_write, fs, path, data))


def exists(url: str) -> bool:
    """Whether a file or folder exists at `url`."""
    fs, path = filesystem(url)
    return _retried("check", url, partial(fs.exists, path, **limits(fs)))


def _kind(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str | None:
    def info() -> str | None:
        try:
            found = fs.info(path, **limits(fs))
        except FileNotFoundError:
            return None
        return "directory" if found["type"] == "directory" else "file"
    return _retried("check", url, info)


def kind(url: str) -> str | None:
    """"file", "directory" (a folder, or a prefix with objects under it), or None when nothing is
    at `url`."""
    return _kind(*filesystem(url), url)


def download(url: str, local_path: str | os.PathLike) -> None:
    """Copy the file at `url` to `local_path`, whole or not at all, DOWNLOAD_CHUNK bytes per
    request: memory stays at one chunk whatever the size, and each request has the time limit
    and its own retries. FileNotFoundError when nothing is at `url`, IsADirectoryError when it
    is a folder."""
    fs, path = filesystem(url)
    info = _retried("check", url, partial(fs.info, path, **limits(fs)))
    if info["type"] == "directory":
        raise IsADirectoryError(errno.EISDIR, "is a folder", redact(url))
    size = info["size"]

    def copy(file) -> None:
        for start in range(0, size, DOWNLOAD_CHUNK):
            end = min(start + DOWNLOAD_CHUNK, size)
            chunk = _retried("read", url, partial(fs.cat_file, path, start=start, end=end,
                                                  **limits(fs)))
            if len(chunk) != end - start:
                raise InputError(f"{redact(url)} changed while it was read (bytes {start}-{end} "
                                 f"of {size} gave {len(chunk)})")
            file.write(chunk)
    atomic_write(local_path, copy)


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local path holding the file at `url` while the block runs: the file itself on local
    disk, else a temporary `download`, deleted afterwards. FileNotFoundError when nothing is at
    `url`, IsADirectoryError when it is a folder."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a folder", redact(url))
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no such file", redact(url))
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="singan-fleet-") as folder:
        local = os.path.join(folder, posixpath.basename(path.rstrip("/")) or "download")
        download(url, local)
        yield local


def glob_files(pattern: str) -> list[str]:
    """The full URLs (with their protocol) of the files matching `pattern` (photos/*.jpg,
    s3://b/p/**/*.png), sorted; folders are left out."""
    fs, path = filesystem(pattern)
    found = _retried("list", pattern, partial(fs.glob, path, detail=True, **limits(fs)))
    return sorted(fs.unstrip_protocol(name) for name, info in found.items()
                  if info["type"] == "file")


def list_files(url: str, recursive: bool = False) -> list[str]:
    """The full URLs of the files in the folder `url` (and in its subfolders when `recursive`),
    sorted. InputError, naming `url`, when it does not exist or is a file."""
    fs, path = filesystem(url)
    found = _kind(fs, path, url)
    if found != "directory":
        raise InputError(f"{redact(url)} {'is not a folder' if found else 'does not exist'}")

    def listing() -> list[str]:
        if recursive:
            return fs.find(path, **limits(fs))
        return [info["name"] for info in fs.ls(path, detail=True, **limits(fs))
                if info["type"] == "file"]
    return sorted(fs.unstrip_protocol(name) for name in _retried("list", url, listing))


def full_url(url: str) -> str:
    """`url` as the listings above write it: with its protocol (s3:// for s3a:// too), a local
    path absolute and normalised, no trailing '/'."""
    fs, path = filesystem(url)
    return fs.unstrip_protocol(path.rstrip("/") or path)


def absolute_url(uri: str) -> str:
    """`uri` if it names its protocol, else the absolute file:// URL of a local path."""
    protocol, _ = split_protocol(uri)
    if protocol is not None:
        return uri
    return fsspec.filesystem("file").unstrip_protocol(os.path.abspath(uri))


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


# The user:password@ (or token@) part of a URL, such as an image behind HTTP basic auth or a
# tracking server's URI.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/?#@\s]+@")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by '***': for what leaves the
    process (MLflow params and tags, printed lines, logs), which the team reads."""
    return _URL_CREDENTIALS.sub("***@", text)


def check_credentials(url: str) -> None:
    """Raise InputError, naming `url`, when it is on S3 and no AWS credentials can be found.

    botocore looks where s3fs will (environment, AWS_PROFILE and ~/.aws, container and instance
    roles) without sending any request. Said once before a job starts, instead of a botocore
    traceback (or one failed row per image) saying "Unable to locate credentials".
    """
    protocol, _ = split_protocol(url)
    if protocol not in S3_PROTOCOLS:
        return
    options = filesystem(url)[0].storage_options
    if options.get("anon") or options.get("key") or options.get("session") is not None:
        return  # anonymous, or credentials given to s3fs itself (fsspec's configuration)
    import botocore.session  # late: only S3 needs it

    try:
        found = botocore.session.Session(profile=options.get("profile")).get_credentials()
    except Exception as err:  # noqa: BLE001 - an unknown profile, a broken ~/.aws/config
        raise InputError(f"{url}: cannot look up AWS credentials ({type(err).__name__}: "
                         f"{err})") from err
    if found is None:
        raise InputError(f"{url}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for temporary ones), or "
                         "AWS_PROFILE with ~/.aws/credentials, or run with an instance role")


def _pages(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), PAGE):
        yield items[start:start + PAGE]


def _is_temporary(name: str) -> bool:
    """Whether a local file name is one of atomic_write's temporaries (".NAME.HEX.tmp"): a write
    in progress, not a file yet."""
    return name.startswith(".") and name.endswith(".tmp")


class Storage:
    """A folder at an fsspec URL with whole-or-absent writes and retried operations."""

    def __init__(self, url: str):
        self.fs, self.root = filesystem(url)
        self.root = self.root.rstrip("/")
        self.url = self.fs.unstrip_protocol(self.root)

    def path(self, name: str) -> str:
        return join(self.root, name)

    def url_of(self, name: str) -> str:
        return self.fs.unstrip_protocol(self.path(name))

    def put(self, name: str, data: bytes) -> None:
        """Write `data` to `name` whole or not at all."""
        with_retries(f"write {self.url_of(name)}", partial(_write, self.fs, self.path(name), data))

    def put_file(self, name: str, local_path: str | os.PathLike) -> None:
        """Write the local file `local_path` to `name` whole or not at all, without reading it
        into memory (a results table of a million rows is tens of MB)."""
        path = self.path(name)

        def write() -> None:
            if isinstance(self.fs, LocalFileSystem):
                with open(local_path, "rb") as source:
                    atomic_write(path, lambda f: shutil.copyfileobj(source, f))
            else:  # one upload (multipart for a large file): the object appears whole or not
                self.fs.put_file(os.fspath(local_path), path, **limits(self.fs))
        with_retries(f"write {self.url_of(name)}", write)

    def get(self, name: str) -> bytes | None:
        """The bytes of `name`, or None when it does not exist."""
        def read() -> bytes | None:
            try:
                return self.fs.cat_file(self.path(name), **limits(self.fs))
            except FileNotFoundError:
                return None
        return with_retries(f"read {self.url_of(name)}", read)

    def exists(self, name: str) -> bool:
        return with_retries(f"check {self.url_of(name)}",
                            lambda: self.fs.exists(self.path(name), **limits(self.fs)))

    def put_json(self, name: str, value: Any) -> None:
        self.put(name, json.dumps(value, indent=2, sort_keys=True).encode())

    def get_json(self, name: str) -> Any | None:
        data = self.get(name)
        return None if data is None else json.loads(data)

    def put_png(self, name: str, x: torch.Tensor) -> bytes:
        """Write a 1 x 3 x H x W tensor in [-1, 1] as PNG; returns the PNG bytes."""
        data = png_bytes(x)
        self.put(name, data)
        return data

    def iter_names(self, prefix: str = "") -> Iterator[list[str]]:
        """The names (relative to the root, '/'-separated) of the files under the folder
        `prefix` (the whole root when empty), page by page in no particular order, without
        holding the listing: on S3 one LIST request per page of PAGE keys, on local disk pages of
        PAGE names as os.scandir walks, elsewhere fsspec's `find` cut into pages. A missing
        folder has no files. Each request has the time limit and its own retries.
        """
        folder = self.path(prefix.strip("/")) if prefix.strip("/") else self.root
        if _is_s3(self.fs):
            return self._s3_names(folder)
        if isinstance(self.fs, LocalFileSystem):
            return self._local_names(folder)
        found = with_retries(f"list {self.fs.unstrip_protocol(folder)}",
                             partial(self.fs.find, folder, **limits(self.fs)))
        return _pages([path[len(self.root) + 1:] for path in found])

    def _s3_names(self, folder: str) -> Iterator[list[str]]:
        bucket, key, _ = self.fs.split_path(folder)
        root_key = self.fs.split_path(self.root)[1]
        cut = len(root_key) + 1 if root_key else 0
        # No delimiter: every key under the prefix, subfolders included, PAGE per request.
        request = {"Bucket": bucket, "Prefix": f"{key}/" if key else "", "MaxKeys": PAGE,
                   **self.fs.req_kw}
        what = f"list {self.fs.unstrip_protocol(folder)}"
        while True:
            # call_s3 is s3fs's request with its error translation, and nothing is cached.
            page = with_retries(what, partial(self.fs.call_s3, "list_objects_v2", **request,
                                              **limits(self.fs)))
            names = [item["Key"][cut:] for item in page.get("Contents", [])
                     if not item["Key"].endswith("/")]  # "folder" marker objects are no files
            if names:
                yield names
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    def _local_names(self, folder: str) -> Iterator[list[str]]:
        page: list[str] = []
        folders = [folder]
        cut = len(self.root) + 1
        while folders:
            current = folders.pop()
            try:
                entries = with_retries(f"list {current}", partial(os.scandir, current))
            except (FileNotFoundError, NotADirectoryError):
                continue  # a missing folder has no files
            with entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    elif not _is_temporary(entry.name):
                        page.append(entry.path[cut:])
                        if len(page) == PAGE:
                            yield page
                            page = []
        if page:
            yield page

    def remove(self, names: list[str]) -> None:
        """Delete the files `names` (relative to the root); a missing one is no error. On S3 one
        DeleteObjects request per PAGE names."""
        for batch in _pages(list(names)):
            what = f"remove {len(batch)} files under {self.url}"
            if _is_s3(self.fs):
                with_retries(what, partial(self._delete_objects, batch))
            elif isinstance(self.fs, LocalFileSystem):
                with_retries(what, partial(_remove_local, [self.path(n) for n in batch]))
            else:
                for name in batch:
                    with_retries(f"remove {self.url_of(name)}", partial(
                        _remove_file, self.fs, self.path(name)))

    def _delete_objects(self, names: list[str]) -> None:
        bucket = self.fs.split_path(self.root)[0]
        objects = [{"Key": self.fs.split_path(self.path(name))[1]} for name in names]
        answer = self.fs.call_s3("delete_objects", Bucket=bucket,
                                 Delete={"Objects": objects, "Quiet": True}, **self.fs.req_kw,
                                 **limits(self.fs))
        errors = answer.get("Errors", [])
        if errors:  # per-key failures come in a 200 answer; deleting again is harmless
            first = errors[0]
            refused = first.get("Code") == "AccessDenied"
            raise (PermissionError if refused else OSError)(
                f"{len(errors)} of {len(names)} objects not deleted, such as {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}")

    def remove_all(self) -> None:
        """Delete the folder and everything in it (no error when it does not exist)."""
        def remove() -> None:
            if self.fs.exists(self.root, **limits(self.fs)):
                self.fs.rm(self.root, recursive=True, **limits(self.fs))
            # Object stores have no folders, and a local one may be left empty: both are fine.
        with_retries(f"remove {self.url}", remove)


def _remove_local(paths: list[str]) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _remove_file(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        fs.rm_file(path, **limits(fs))
    except FileNotFoundError:
        pass


def _load_levels(storage: Storage, folder: str, device: torch.device | str | None) -> Pyramid | None:
    """The model in `folder` of `storage`: the levels its config.json counts as finished, any
    later file ignored (left over from an attempt that died between writing a level file and
    config.json); None when there is no config.json."""
    meta = storage.get(f"{folder}config.json")
    if meta is None:
        return None
    finished = int(json.loads(meta).get("finished_scales", 0))
    files = []
    for index in range(finished):
        data = storage.get(f"{folder}{scale_file_name(index)}")
        if data is None:
            break  # config.json is written after its scale file, so this means tampering
        files.append(io.BytesIO(data))
    return load_files(io.BytesIO(meta), files, device=device, name=storage.url_of(folder))


def load_pyramid(url: str, device: torch.device | str | None = None) -> Pyramid:
    """The pyramid in the model folder at `url` (an image's {output}/{image_id}/model, or the
    model/ folder of `singan train`'s output) or in the model/ folder under it, of any recipe,
    from any storage."""
    storage = Storage(url)
    model = _load_levels(storage, "", device)
    if model is None:
        model = _load_levels(storage, "model/", device)
    if model is None:
        raise InputError(f"{redact(url)}: not a SinGAN model folder (no config.json, nor "
                         "model/config.json)")
    return model


class ImageStore(Storage):
    """The folder of one image: model files, pictures, metrics, the tracking link, _SUCCESS."""

    def __init__(self, output: str, image_id: str):
        super().__init__(join(output, image_id))
        self.image_id = image_id

    # --- model (written by singan.data.outputs.write_level, through `put`) -------------------
    def load_model(self, device: torch.device | str | None = None) -> Pyramid | None:
        """The (possibly partial) model saved here, of any recipe, or None when there is none.

        Loads the levels config.json counts as finished, ignoring any later file (left over from
        an attempt that died between writing a level file and config.json).
        """
        return _load_levels(self, "model/", device)

    # --- markers -----------------------------------------------------------------------------
    def success(self) -> dict | None:
        """The _SUCCESS record (run id, config hash, time), or None while the image is not done."""
        return self.get_json(SUCCESS)

    def mark_success(self, record: dict) -> None:
        self.put_json(SUCCESS, record)
