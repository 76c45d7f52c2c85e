"""A simulated object store for bench/fleet_scale.py: an fsspec filesystem, `simstore://`, over a
local folder, that waits a set delay per call as a remote store does and counts the calls by kind.

    simstore:///tmp/fleet/store/out/img0000001/_SUCCESS   is the local file of the same path

Calls cost what they cost on S3: a GET per read (cat_file, a ranged read too), a PUT per write
(whole or absent: a temporary file renamed), a HEAD per info/exists (plus a LIST when nothing
is at the path: s3fs then asks whether it is a prefix), one LIST per 1,000 names a listing
returns (ls, find, a recursive rm's listing), one DELETE per file or per 1,000 files of a
recursive rm (DeleteObjects). Each call sleeps FLEET_SIM_DELAY seconds, each LIST page
FLEET_SIM_LIST_DELAY (default: the same). pipeline/storage.py sees a remote, non-S3 filesystem:
its listings go through `find`, its local-copy through `info` and ranged GETs.

Counters are per process, by kind and by kind and file pattern (digits as #, hex ids as H, the
path relative to FLEET_SIM_ROOT). With FLEET_SIM_COUNTS set, each process writes them to
`{FLEET_SIM_COUNTS}/{pid}.json`, at most once a second (a background thread), at exit, after each
call on the ledger (`_results`: a task's last calls, before Ray may kill its worker) and when
`flush(force=True)` is called: the harness sums the files. With FLEET_SIM_COMPRESS=1, files of 4 KiB
and more are kept zlib-compressed on disk (the loss curves of a simulated image are 1.4 MB);
reads give the original bytes, `ls` gives the size on disk.

Importing this module registers the protocol (the simulated trainer's module imports it, so
every Ray worker that unpickles a simulated trainer has it). Only the standard library and fsspec:
it also runs under the code of an older commit (fleet_scale.py --before).
"""

from __future__ import annotations

import atexit
import io
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections import Counter

import fsspec
from fsspec.spec import AbstractFileSystem

PROTOCOL = "simstore"
DELAY_ENV = "FLEET_SIM_DELAY"
LIST_DELAY_ENV = "FLEET_SIM_LIST_DELAY"
COUNTS_ENV = "FLEET_SIM_COUNTS"
ROOT_ENV = "FLEET_SIM_ROOT"
COMPRESS_ENV = "FLEET_SIM_COMPRESS"
KINDS = ("LIST", "HEAD", "GET", "PUT", "DELETE")
PAGE = 1000  # names per LIST page, as S3's
COMPRESS_FROM = 4096  # bytes: smaller files are kept as they are
MAGIC = b"SIMZ"  # + 8 bytes of the original size, then zlib
FLUSH_EVERY = 1.0  # seconds between two writes of a process's counts
LEDGER = "_results"  # the output's ledger folder and results table (pipeline.ledger)


class Counts:
    """This process's calls: by kind, and by kind and file pattern; written to its file."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kinds: Counter = Counter()
        self.patterns: Counter = Counter()
        self.dirty = False
        self.written = 0.0
        self.thread: threading.Thread | None = None

    def add(self, kind: str, path: str, calls: int = 1) -> None:
        with self.lock:
            self.kinds[kind] += calls
            self.patterns[f"{kind} {pattern(path)}"] += calls
            self.dirty = True
            if self.thread is None and os.environ.get(COUNTS_ENV):
                self.thread = threading.Thread(target=self._flusher, name="simstore-counts",
                                               daemon=True)
                self.thread.start()
        if f"/{LEDGER}" in path:
            # A task's last calls (its ledger files, the results table): written now, since Ray
            # may kill the worker as soon as its job's driver has ended.
            self.flush(force=True)

    def snapshot(self) -> dict:
        with self.lock:
            return {"kinds": dict(self.kinds), "patterns": dict(self.patterns)}

    def reset(self) -> None:
        with self.lock:
            self.kinds.clear()
            self.patterns.clear()
            self.dirty = True

    def flush(self, force: bool = False) -> None:
        """Write the counts to this process's file (FLEET_SIM_COUNTS), if they changed."""
        folder = os.environ.get(COUNTS_ENV)
        if not folder or not (self.dirty or force):
            return
        with self.lock:
            values = {"pid": os.getpid(), "time": time.time(), "kinds": dict(self.kinds),
                      "patterns": dict(self.patterns)}
            self.dirty = False
            self.written = time.monotonic()
        os.makedirs(folder, exist_ok=True)
        _atomic_write(os.path.join(folder, f"{os.getpid()}.json"), json.dumps(values).encode())

    def _flusher(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            try:
                self.flush()
            except OSError:
                pass  # the harness removed the folder: nothing to report to


COUNTS = Counts()
atexit.register(COUNTS.flush)


def flush(force: bool = True) -> None:
    COUNTS.flush(force)


def snapshot() -> dict:
    """This process's counts so far: {"kinds": {...}, "patterns": {...}}."""
    return COUNTS.snapshot()


def read_counts(folder: str) -> dict[int, dict]:
    """Every process's last written counts in `folder`, by pid."""
    found = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as file:
                    values = json.load(file)
            except (OSError, ValueError):
                continue  # being replaced
            found[values["pid"]] = values
    return found


def total(counts: dict[int, dict], field: str = "kinds") -> Counter:
    """The sum over processes of read_counts' `field`."""
    summed: Counter = Counter()
    for values in counts.values():
        summed.update(values.get(field, {}))
    return summed


_HEX = re.compile(r"[0-9a-f]{16,}")
_DIGITS = re.compile(r"\d+")


def pattern(path: str) -> str:
    """The path as a pattern of files: relative to FLEET_SIM_ROOT, hex ids as H, digits as #."""
    root = os.environ.get(ROOT_ENV, "")
    if root and path.startswith(root.rstrip("/") + "/"):
        path = path[len(root.rstrip("/")) + 1:]
    return _DIGITS.sub("#", _HEX.sub("H", path))


def _delay(kind: str) -> float:
    name = LIST_DELAY_ENV if kind == "LIST" and os.environ.get(LIST_DELAY_ENV) else DELAY_ENV
    return float(os.environ.get(name) or 0)


def _call(kind: str, path: str, calls: int = 1) -> None:
    """Count `calls` calls of `kind` on `path`, and wait for them as the store would."""
    COUNTS.add(kind, path, calls)
    wait = _delay(kind) * calls
    if wait > 0:
        time.sleep(wait)


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise


def _stored(data: bytes) -> bytes:
    if os.environ.get(COMPRESS_ENV) == "1" and len(data) >= COMPRESS_FROM:
        packed = zlib.compress(data, 1)
        if len(packed) + 12 < len(data):
            return MAGIC + len(data).to_bytes(8, "little") + packed
    return data


def _original(data: bytes) -> bytes:
    if data[:4] == MAGIC:
        return zlib.decompress(data[12:])
    return data


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _pages(count: int) -> int:
    """LIST requests for a listing of `count` names (an empty one costs one too)."""
    return max(1, math.ceil(count / PAGE))


class SimStore(AbstractFileSystem):
    """The simulated store (see the module's docstring)."""

    protocol = PROTOCOL
    root_marker = "/"

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        path = "/" + path.lstrip("/")
        return path.rstrip("/") or "/"

    # --- reads ---------------------------------------------------------------------------------
    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        _call("GET", path)
        if os.path.isdir(path):
            raise FileNotFoundError(path)  # a prefix is no object
        with open(path, "rb") as file:
            data = _original(file.read())
        if start is not None or end is not None:
            data = data[start or 0:end]
        return data

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        _call("HEAD", path)
        if os.path.isfile(path):
            return {"name": path, "size": self._size(path), "type": "file"}
        _call("LIST", path)  # not an object: is it a prefix?
        if os.path.isdir(path) and self._any_file(path):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    @staticmethod
    def _size(path: str) -> int:
        with open(path, "rb") as file:
            head = file.read(12)
        if head[:4] == MAGIC:
            return int.from_bytes(head[4:12], "little")
        return os.path.getsize(path)

    @staticmethod
    def _any_file(path: str) -> bool:
        for _, _, files in os.walk(path):
            if any(not _is_temporary(name) for name in files):
                return True
        return False

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if not os.path.isdir(path):
            _call("LIST", path)
            if os.path.isfile(path):
                entries = [{"name": path, "size": os.path.getsize(path), "type": "file"}]
                return entries if detail else [path]
            raise FileNotFoundError(path)
        entries = []
        with os.scandir(path) as found:
            for entry in found:
                if entry.is_dir(follow_symlinks=False):
                    entries.append({"name": entry.path, "size": 0, "type": "directory"})
                elif not _is_temporary(entry.name):
                    entries.append({"name": entry.path, "size": entry.stat().st_size,
                                    "type": "file"})
        _call("LIST", path, _pages(len(entries)))
        return entries if detail else sorted(entry["name"] for entry in entries)

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        path = self._strip_protocol(path)
        files: dict[str, dict] = {}
        dirs: dict[str, dict] = {}
        if os.path.isfile(path):
            files[path] = {"name": path, "size": os.path.getsize(path), "type": "file"}
        else:
            base = path.rstrip("/").count("/")
            for folder, subfolders, names in os.walk(path):
                depth = folder.rstrip("/").count("/") - base + 1
                if maxdepth is not None and depth > maxdepth:
                    subfolders[:] = []
                    continue
                for name in subfolders:
                    full = os.path.join(folder, name)
                    dirs[full] = {"name": full, "size": 0, "type": "directory"}
                for name in names:
                    if not _is_temporary(name):
                        full = os.path.join(folder, name)
                        files[full] = {"name": full, "size": 0, "type": "file"}
        _call("LIST", path, _pages(len(files)))  # S3 lists keys, not folders
        found = {**files, **(dirs if withdirs else {})}
        names = sorted(found)
        return {name: found[name] for name in names} if detail else names

    # --- writes --------------------------------------------------------------------------------
    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        path = self._strip_protocol(path)
        _call("PUT", path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _atomic_write(path, _stored(bytes(value)))

    def rm_file(self, path, **kwargs):
        path = self._strip_protocol(path)
        _call("DELETE", path)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def rm(self, path, recursive=False, maxdepth=None, **kwargs):
        paths = path if isinstance(path, list) else [path]
        for one in paths:
            one = self._strip_protocol(one)
            if os.path.isdir(one) and recursive:
                names = self.find(one)  # the listing: one LIST per page
                if names:
                    _call("DELETE", one, _pages(len(names)))  # DeleteObjects, 1,000 a request
                shutil.rmtree(one, ignore_errors=True)
            else:
                self.rm_file(one)

    def mkdir(self, path, create_parents=True, **kwargs):
        pass  # an object store has no folders

    def makedirs(self, path, exist_ok=False):
        pass

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        path = self._strip_protocol(path)
        if "r" in mode:
            return io.BytesIO(self.cat_file(path))
        return _Upload(self, path)

    def created(self, path):
        return os.path.getctime(self._strip_protocol(path))

    def modified(self, path):
        return os.path.getmtime(self._strip_protocol(path))


class _Upload(io.BytesIO):
    """A file opened for writing: one PUT when closed."""

    def __init__(self, fs: SimStore, path: str):
        super().__init__()
        self.fs, self.path = fs, path

    def close(self) -> None:
        if not self.closed:
            self.fs.pipe_file(self.path, self.getvalue())
        super().close()


fsspec.register_implementation(PROTOCOL, SimStore, clobber=True)


def url(path: str) -> str:
    """The simstore URL of a local absolute path."""
    return f"{PROTOCOL}://{os.path.abspath(path)}"
