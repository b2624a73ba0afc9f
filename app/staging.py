"""Where staged inputs and reference statistics live between the API and the workers.

Without ``TRUSTFID_STAGING_URL`` they stay in ``data_dir`` (``staging/<record id>/`` and
``references/<id>.npz``), which the API and the workers must then share. With it (``s3://bucket/prefix``
of an S3-compatible store, read and written through fsspec's s3fs), every process keeps only its own
working copies in its own ``data_dir``:

- the API stages and checks an upload locally, then ``push`` copies the record's staging folder to
  ``<prefix>/staging/<record id>/`` and removes the local copy, before the record is written;
- a worker ``pull``s it into its own staging folder before running (retrying a store that is away for
  ``retry_s``), and ``discard`` removes both the local folder and the objects once the record is final
  (the API does the same on cancel and delete; app/cleanup.py tries again until the store answers);
- a worker ``put_reference``s the statistics it computed as ``<prefix>/references/<id>.npz``; a job on
  the reference ``get_reference``s them into its own staging folder; deleting the reference removes them.

Object keys are built from record ids (hex, made by the service) and the staged files' sanitised names
(ingest.multipart.safe_name), never from anything else a caller sent. The same endpoint and
credentials (``S3``) read the callers' ``s3://`` inputs (app/ingest/uris.py), which may never name the
staging bucket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.errors import StorageError

log = logging.getLogger("trustfid.staging")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PULLED = ".pulled"  # marks a complete local copy of a record's staged inputs
SHARDS = "shards"  # a sharded job's per-shard statistics (worker/shards.py), never pulled in bulk


@dataclass(frozen=True)
class S3:
    """The operator's S3-compatible store: its endpoint and credentials (None: the AWS defaults)."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None

    def filesystem(self):
        """The s3fs filesystem of the store (fsspec caches one instance per set of options)."""
        try:
            import s3fs
        except ImportError:
            raise StorageError("the object store needs the s3 extra (pip install 'trustfid[s3]')") from None
        options = {
            "endpoint_url": self.endpoint_url or None,
            "key": self.key or None,
            "secret": self.secret or None,
            "client_kwargs": {"region_name": self.region} if self.region else {},
            # Give up in seconds, not minutes, when the store is away: the API answers 503 at once; a worker
            # retries for Staging.retry_s before it fails the job.
            "config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                              "retries": {"max_attempts": 3, "mode": "standard"}},
            "use_listings_cache": False,
        }
        return s3fs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write, moved onto ``path`` when the block ends without an
    error (removed otherwise): a reader sees the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _checked(record_id: str) -> str:
    if not _ID.match(record_id):  # ids are the service's own; this only keeps a bug from writing elsewhere
        raise ValueError(f"not a record id: {record_id!r}")
    return record_id


def _store_error(action: str, e: Exception) -> StorageError:
    log.warning("object store: %s failed: %r", action, e)
    return StorageError(f"the object store cannot {action} right now ({type(e).__name__}); try again later or "
                        "tell the operator")


class Staging:
    """This process's data folder and, when ``url`` (s3://bucket/prefix) is set, the object store."""

    def __init__(self, data_dir: Path, url: str | None = None, s3: S3 | None = None, retry_s: float = 60.0):
        self.data_dir = Path(data_dir).resolve()
        self.url = url
        self.s3 = s3 or S3()
        self.retry_s = retry_s

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def bucket(self) -> str | None:
        return urlsplit(self.url).netloc if self.enabled else None

    def local_dir(self, record_id: str) -> Path:
        """This process's staging folder of a record (uploads on the API, inputs on a worker)."""
        return self.data_dir / "staging" / _checked(record_id)

    def local_reference(self, ref_id: str) -> Path:
        """Where this process writes (and, without an object store, everyone reads) a reference's statistics."""
        return self.data_dir / "references" / f"{_checked(ref_id)}.npz"

    # --- object keys ------------------------------------------------------------------------------
    def _root(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.netloc}{parts.path}".rstrip("/")

    def _remote(self, record_id: str) -> str:
        return f"{self._root()}/staging/{_checked(record_id)}"

    def _remote_copy(self, record_id: str, path: Path) -> str:
        """The object of a file or folder in the record's local staging folder."""
        return f"{self._remote(record_id)}/{path.relative_to(self.local_dir(record_id)).as_posix()}"

    def _remote_reference(self, ref_id: str) -> str:
        return f"{self._root()}/references/{_checked(ref_id)}.npz"

    def _worker_side(self, action: str, fn: Callable):
        """A worker's store operation ``fn(filesystem)``, retried with backoff (1 s doubling to 10 s, by
        redis-py's Retry) for up to ``retry_s``, so that a store restarting does not fail the jobs running
        meanwhile. A missing object is not retried."""
        deadline = time.monotonic() + self.retry_s
        backoff = ExponentialBackoff(cap=10.0, base=0.5)
        failures = 0

        def fail(e: Exception) -> None:
            nonlocal failures
            if isinstance(e, (StorageError, FileNotFoundError)):
                raise e
            failures += 1
            wait = backoff.compute(failures)
            if time.monotonic() + wait > deadline:
                raise _store_error(action, e) from None
            log.warning("object store: %s failed (%r); trying again in %g s", action, e, wait)

        return Retry(backoff, -1, supported_errors=(Exception,)).call_with_retry(
            lambda: fn(self.s3.filesystem()), fail)

    # --- staged inputs ----------------------------------------------------------------------------
    def push(self, record_id: str) -> None:
        """Move the record's checked, locally staged inputs (if any) to the object store. Raises
        StorageError (503) when the store cannot take them; the caller then refuses the submission."""
        src = self.local_dir(record_id)
        if not self.enabled or not src.is_dir():
            return
        try:
            self.s3.filesystem().put(f"{src}/", self._remote(record_id), recursive=True)
        except StorageError:
            raise
        except Exception as e:
            raise _store_error("store the upload", e) from None
        shutil.rmtree(src, ignore_errors=True)

    def pull(self, record_id: str) -> Path:
        """The record's staged inputs in this process's staging folder (downloaded from the store when
        one is configured, once per folder: several workers of one machine may share it); returns the
        folder. The download goes to a temporary folder whose entries are then renamed into place, so a
        worker never reads a half-written file another one is still downloading."""
        dest = self.local_dir(record_id)
        if not self.enabled or (dest / PULLED).exists():
            return dest
        remote = self._remote(record_id)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}")

        def get(fs):
            found = [k for k in fs.find(remote) if not k[len(remote) + 1:].startswith(SHARDS + "/")]
            if not found:
                raise FileNotFoundError(remote)
            fs.get(found, [str(tmp / k[len(remote) + 1:]) for k in found])

        try:
            self._worker_side("hand out the job's staged inputs", get)
        except FileNotFoundError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError("the job's staged inputs are not in the object store (removed, or this worker's "
                               "TRUSTFID_STAGING_URL differs from the API's?)") from None
        dest.mkdir(parents=True, exist_ok=True)
        for entry in tmp.iterdir():
            if not (dest / entry.name).exists():
                with contextlib.suppress(OSError):  # another worker put the same entry there first
                    os.rename(entry, dest / entry.name)
        shutil.rmtree(tmp, ignore_errors=True)
        (dest / PULLED).touch()
        return dest

    def share(self, record_id: str, path: Path) -> None:
        """Publish a file or folder this worker made in the record's staging folder (a fetched input, a
        reference's statistics, a shard's statistics) for workers on other machines; without a store
        the staging folder is shared already."""
        if not self.enabled:
            return
        remote = self._remote_copy(record_id, path)
        if path.is_dir():
            self._worker_side("store a job's input", lambda fs: fs.put(f"{path}/", remote, recursive=True))
        else:
            self._worker_side("store a job's file", lambda fs: fs.put_file(str(path), remote))

    def shared(self, record_id: str, path: Path) -> bool:
        """Whether a file of the record's staging folder exists here or, published by another machine's
        worker (``share``), in the store."""
        if path.exists() or not self.enabled:
            return path.exists()
        remote = self._remote_copy(record_id, path)
        return bool(self._worker_side("look up a job's file", lambda fs: fs.exists(remote)))

    def fetch(self, record_id: str, path: Path) -> Path:
        """A file of the record's staging folder as a local file: here already, or copied from the store."""
        if path.exists() or not self.enabled:
            return path
        remote = self._remote_copy(record_id, path)
        with atomic_path(path) as tmp:
            self._worker_side("hand out a job's file", lambda fs: fs.get_file(remote, str(tmp)))
        return path

    def sweep(self, is_over: Callable[[str, float], bool]) -> None:
        """A worker's staging folders of records that ``is_over(record_id, mtime)`` says are over: with a
        store, the worker that ends a job removes only its own copy, and a sharded job's other workers
        keep theirs until this finds them."""
        root = self.data_dir / "staging"
        if not self.enabled or not root.is_dir():
            return
        for folder in root.iterdir():
            if folder.is_dir() and _ID.match(folder.name) and is_over(folder.name, folder.stat().st_mtime):
                shutil.rmtree(folder, ignore_errors=True)

    def discard(self, record_id: str) -> bool:
        """Remove a record's staged inputs everywhere this process can see them; returns whether they are
        gone. One try: a store that is away leaves the objects (logged), and app/cleanup.py tries again."""
        local = self.local_dir(record_id)
        shutil.rmtree(local, ignore_errors=True)
        gone = not local.exists()
        if self.enabled:
            gone = self._remove(self._remote(record_id), recursive=True) and gone
        return gone

    def _remove(self, path: str, recursive: bool = False) -> bool:
        """Remove an object (or every object under a prefix) and check that none is left: s3fs's bulk
        delete does not raise for keys the store refused."""
        try:
            fs = self.s3.filesystem()
            fs.rm(path, recursive=recursive)
            left = fs.find(path) if recursive else [path] if fs.exists(path) else []
        except FileNotFoundError:
            return True
        except Exception as e:
            log.warning("object store: could not remove %s (trying again later): %r", path, e)
            return False
        if left:
            log.warning("object store: %d objects under %s are still there (trying again later)", len(left), path)
        return not left

    # --- reference statistics -----------------------------------------------------------------------
    def put_reference(self, ref_id: str, path: Path) -> None:
        """Publish statistics a worker wrote at ``local_reference``: to the store (and the local file
        removed) when one is configured; else they stay where every process reads them."""
        if not self.enabled:
            return
        remote = self._remote_reference(ref_id)
        self._worker_side("store the reference statistics", lambda fs: fs.put_file(str(path), remote))
        path.unlink(missing_ok=True)

    def get_reference(self, ref_id: str, dest: Path) -> Path:
        """A reference's statistics as a local file: its shared file, or a copy from the store at ``dest``."""
        if not self.enabled:
            return self.local_reference(ref_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        remote = self._remote_reference(ref_id)
        try:
            self._worker_side("hand out the reference statistics", lambda fs: fs.get_file(remote, str(dest)))
        except FileNotFoundError:
            raise StorageError(f"the statistics of reference {ref_id} are not in the object store (was it "
                               "deleted?)") from None
        return dest

    def remove_reference(self, ref_id: str) -> bool:
        """Delete a reference's statistics; returns whether they are gone (one try, as ``discard``)."""
        self.local_reference(ref_id).unlink(missing_ok=True)
        return self._remove(self._remote_reference(ref_id)) if self.enabled else True
