"""One image's folder under the output URL, through fsspec (local disk, S3, any fsspec URL).

Layout (DESIGN.md):

    {output}/{image_id}/model/config.json      config, pyramid plan, seed, finished_scales
    {output}/{image_id}/model/scale_00.pt ...  one file per finished scale (the resume point)
    {output}/{image_id}/reals/scale_00.png ...
    {output}/{image_id}/samples/...            scale_XX.png per scale, final samples
    {output}/{image_id}/sr/...                 task sr: sr_xF.png and bicubic_xF.png (F: factor)
    {output}/{image_id}/animate/...            task animate: start_scale_S/beta_B.gif
    {output}/{image_id}/metrics.jsonl          every metric point, the source of truth
    {output}/{image_id}/tracking.json          the image's MLflow run, so a retry reuses it
    {output}/{image_id}/_SUCCESS               written last: the image is done

Every write is whole or absent: a temporary file renamed into place on local disk, a single PUT
on object stores (an S3 object appears whole or not at all). `config.json` is written after the
scale file it counts, so a reader never sees a finished scale without its file.

Every remote operation has a time limit (`limits`): an endpoint that accepts connections and
never answers would otherwise hold a write forever (aiohttp waits for S3's 100-continue reply
with no limit of its own). A call that runs out of time counts as transient: it is retried, and
when it keeps timing out the row's Ray task is retried; a write cut off midway leaves no object.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import torch
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.local import LocalFileSystem

from singan.api import load_files
from singan.base import Pyramid, scale_file_name
from singan.errors import InputError
from singan.files import atomic_write
from singan.image import png_bytes

logger = logging.getLogger(__name__)

T = TypeVar("T")

SUCCESS = "_SUCCESS"
RESULTS = "_results.parquet"  # beside the image folders; ids cannot start with "_"
# Seconds between attempts at one storage operation: 15.5 s of back-off rides out a short
# outage or throttling. SINGAN_FLEET_STORAGE_RETRY_DELAYS sets others ("1,5,30": longer).
RETRY_DELAYS = (0.5, 1, 2, 4, 8)
RETRY_DELAYS_ENV = "SINGAN_FLEET_STORAGE_RETRY_DELAYS"
# Seconds one remote storage call may take, whole (connect, send, wait, read); enough for a
# scale file of a few MB over a slow link. SINGAN_FLEET_STORAGE_TIMEOUT sets another.
OPERATION_TIMEOUT = 120.0
TIMEOUT_ENV = "SINGAN_FLEET_STORAGE_TIMEOUT"


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


def retry_delays() -> tuple[float, ...]:
    """The seconds between attempts at one storage operation: RETRY_DELAYS, or the env's comma-
    separated list (n delays, n + 1 attempts)."""
    text = os.environ.get(RETRY_DELAYS_ENV)
    return _env_seconds(RETRY_DELAYS_ENV, text, positive=False) if text else RETRY_DELAYS


def limits(fs: fsspec.AbstractFileSystem) -> dict[str, float]:
    """Keyword arguments that bound one call of `fs` in time: fsspec runs an asynchronous
    filesystem's calls (S3, GCS, HTTP...) on its event loop and cancels them after `timeout`
    seconds (FSTimeoutError, a TimeoutError); local calls need none."""
    return {"timeout": operation_timeout()} if isinstance(fs, AsyncFileSystem) else {}


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
    # without an answer), which s3fs passes on untranslated once its own retries are spent.
    names = {cls.__name__ for cls in type(err).__mro__}
    return (isinstance(err, (ConnectionError, TimeoutError, OSError))
            or bool(names & {"ClientConnectionError", "ServerDisconnectedError", "EndpointConnectionError",
                             "ConnectTimeoutError", "ReadTimeoutError", "ClientPayloadError",
                             "HTTPClientError"}))


def with_retries(what: str, operation: Callable[[], T],
                 delays: tuple[float, ...] | None = None) -> T:
    """Run `operation`, retrying transient failures with back-off (`delays`, by default
    retry_delays()); raise TransientError when they persist and the original error at once when
    it is not transient."""
    for attempt, delay in enumerate((*(retry_delays() if delays is None else delays), None)):
        try:
            return operation()
        except Exception as err:
            if not is_transient(err):
                raise
            if delay is None:
                raise TransientError(f"{what}: {type(err).__name__}: {err}") from err
            logger.warning("%s failed (%s: %s); attempt %d, retrying in %ss", what,
                           type(err).__name__, err, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_url(url: str, end: int | None = None) -> bytes:
    """The bytes of any fsspec URL (its first `end` bytes when given), with a time limit and
    retries on transient failures."""
    def read() -> bytes:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.cat_file(path, start=None if end is None else 0, end=end, **limits(fs))
    return with_retries(f"read {redact(url)}", read)  # `what` is logged


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
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol not in ("s3", "s3a"):
        return
    options = fsspec.core.url_to_fs(url)[0].storage_options
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


class Storage:
    """A folder at an fsspec URL with whole-or-absent writes and retried operations."""

    def __init__(self, url: str):
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.url = self.fs.unstrip_protocol(self.root)

    def path(self, name: str) -> str:
        return join(self.root, name)

    def url_of(self, name: str) -> str:
        return self.fs.unstrip_protocol(self.path(name))

    def put(self, name: str, data: bytes) -> None:
        """Write `data` to `name` whole or not at all."""
        path = self.path(name)

        def write() -> None:
            if isinstance(self.fs, LocalFileSystem):
                atomic_write(path, lambda f: f.write(data))
            else:
                self.fs.pipe_file(path, data, **limits(self.fs))
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

    def remove_all(self) -> None:
        """Delete the folder and everything in it (no error when it does not exist)."""
        def remove() -> None:
            if self.fs.exists(self.root, **limits(self.fs)):
                self.fs.rm(self.root, recursive=True, **limits(self.fs))
            # Object stores have no folders, and a local one may be left empty: both are fine.
        with_retries(f"remove {self.url}", remove)


class ImageStore(Storage):
    """The folder of one image: model files, pictures, metrics, the tracking link, _SUCCESS."""

    def __init__(self, output: str, image_id: str):
        super().__init__(join(output, image_id))
        self.image_id = image_id

    # --- model (written by singan.outputs.write_level, through `put`) ------------------------
    def load_model(self, device: torch.device | str | None = None) -> Pyramid | None:
        """The (possibly partial) model saved here, of any recipe, or None when there is none.

        Loads the levels config.json counts as finished, ignoring any later file (left over from
        an attempt that died between writing a level file and config.json).
        """
        meta = self.get("model/config.json")
        if meta is None:
            return None
        finished = int(json.loads(meta).get("finished_scales", 0))
        files = []
        for index in range(finished):
            data = self.get(f"model/{scale_file_name(index)}")
            if data is None:
                break  # config.json is written after its scale file, so this means tampering
            files.append(io.BytesIO(data))
        return load_files(io.BytesIO(meta), files, device=device, name=self.url_of("model"))

    # --- markers -----------------------------------------------------------------------------
    def success(self) -> dict | None:
        """The _SUCCESS record (run id, config hash, time), or None while the image is not done."""
        return self.get_json(SUCCESS)

    def mark_success(self, record: dict) -> None:
        self.put_json(SUCCESS, record)
