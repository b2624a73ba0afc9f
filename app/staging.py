"""Where staged inputs and reference statistics live between the API and the workers.

Without ``TRUSTFID_STAGING_URL`` they stay in ``data_dir`` (``staging/<record id>/`` and
``references/<id>.npz``), which the API and the workers must then share. With it (``s3://bucket/prefix``
of an S3-compatible store, read and written through fsspec's s3fs), every process keeps only its own
working copies in its own ``data_dir``:

- the API stages and checks an upload locally as before, then ``push`` copies the record's staging
  folder to ``<prefix>/staging/<record id>/`` and removes the local copy, before the record is written;
- a worker ``pull``s it into its own staging folder before running (retrying a store that is away for
  ``storage_retry_s``), and ``discard`` removes both the local folder and the objects once the record
  is final (the API does the same on cancel and delete);
- a worker ``put_reference``s the statistics it computed as ``<prefix>/references/<id>.npz``; a job on
  the reference ``get_reference``s them into its own staging folder; deleting the reference removes them.

Object keys are built from record ids (hex, made by the service) and the staged files' sanitised names
(ingest.safe_name), never from anything else a caller sent. The same endpoint and credentials read
the callers' ``s3://`` inputs (ingest.py), which may never name the staging bucket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from app.errors import StorageError
from app.settings import Settings

log = logging.getLogger("trustfid.staging")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def enabled(settings: Settings) -> bool:
    return bool(settings.staging_url)


def local_dir(settings: Settings, record_id: str) -> Path:
    """This process's staging folder of a record (uploads on the API, inputs on a worker)."""
    return Path(settings.data_dir).resolve() / "staging" / _checked(record_id)


def local_reference(settings: Settings, ref_id: str) -> Path:
    """Where this process writes (and, without an object store, everyone reads) a reference's statistics."""
    return Path(settings.data_dir).resolve() / "references" / f"{_checked(ref_id)}.npz"


def filesystem(settings: Settings):
    """The s3fs filesystem of the configured store (fsspec caches one instance per set of options)."""
    try:
        import s3fs
    except ImportError:
        raise StorageError("the object store needs the s3 extra (pip install 'trustfid[s3]')") from None
    secret = settings.s3_secret_access_key
    options = {
        "endpoint_url": settings.s3_endpoint_url or None,
        "key": settings.s3_access_key_id or None,
        "secret": secret.get_secret_value() if secret else None,
        "client_kwargs": {"region_name": settings.s3_region} if settings.s3_region else {},
        # Give up in seconds, not minutes, when the store is away: the API answers 503 at once; a worker
        # retries for storage_retry_s (_worker_side) before it fails the job.
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}},
        "use_listings_cache": False,
    }
    return s3fs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


def staging_bucket(settings: Settings) -> str | None:
    return urlsplit(settings.staging_url).netloc if enabled(settings) else None


def _root(settings: Settings) -> str:
    parts = urlsplit(settings.staging_url)
    return f"{parts.netloc}{parts.path}".rstrip("/")


def _checked(record_id: str) -> str:
    if not _ID.match(record_id):  # ids are the service's own; this only keeps a bug from writing elsewhere
        raise ValueError(f"not a record id: {record_id!r}")
    return record_id


def _remote(settings: Settings, record_id: str) -> str:
    return f"{_root(settings)}/staging/{_checked(record_id)}"


def _remote_copy(settings: Settings, record_id: str, path: Path) -> str:
    """The object of a file or folder in the record's local staging folder."""
    return f"{_remote(settings, record_id)}/{path.relative_to(local_dir(settings, record_id)).as_posix()}"


def _remote_reference(settings: Settings, ref_id: str) -> str:
    return f"{_root(settings)}/references/{_checked(ref_id)}.npz"


def _worker_side(settings: Settings, action: str, fn) -> None:
    """A worker's store operation, retried with backoff (1 s doubling to 10 s) for up to
    ``storage_retry_s``, so that a store restarting does not fail the jobs running meanwhile. A missing
    object is not retried."""
    deadline = time.monotonic() + settings.storage_retry_s
    wait = 1.0
    while True:
        try:
            return fn(filesystem(settings))
        except (StorageError, FileNotFoundError):
            raise
        except Exception as e:
            if time.monotonic() + wait > deadline:
                raise _store_error(action, e) from None
            log.warning("object store: %s failed (%r); trying again in %g s", action, e, wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


def _store_error(action: str, e: Exception) -> StorageError:
    log.warning("object store: %s failed: %r", action, e)
    return StorageError(f"the object store cannot {action} right now ({type(e).__name__}); try again later or "
                        "tell the operator")


# --- staged inputs --------------------------------------------------------------------------------


def push(settings: Settings, record_id: str) -> None:
    """Move the record's checked, locally staged inputs (if any) to the object store. Raises
    StorageError (503) when the store cannot take them; the caller then refuses the submission."""
    src = local_dir(settings, record_id)
    if not enabled(settings) or not src.is_dir():
        return
    try:
        filesystem(settings).put(f"{src}/", _remote(settings, record_id), recursive=True)
    except StorageError:
        raise
    except Exception as e:
        raise _store_error("store the upload", e) from None
    shutil.rmtree(src, ignore_errors=True)


PULLED = ".pulled"  # marks a complete local copy of a record's staged inputs
SHARDS = "shards"  # a sharded job's per-shard statistics (worker/shards.py), never pulled in bulk


def pull(settings: Settings, record_id: str) -> Path:
    """The record's staged inputs in this process's staging folder (downloaded from the store when one
    is configured, once per folder: several workers of one machine may share it); returns the folder.
    The download goes to a temporary folder whose entries are then renamed into place, so a worker
    never reads a half-written file another one is still downloading."""
    dest = local_dir(settings, record_id)
    if not enabled(settings) or (dest / PULLED).exists():
        return dest
    remote = _remote(settings, record_id)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}")

    def get(fs):
        keys = [k for k in fs.find(remote) if not k[len(remote) + 1:].startswith(SHARDS + "/")]
        if not keys:
            raise FileNotFoundError(remote)
        fs.get(keys, [str(tmp / k[len(remote) + 1:]) for k in keys])

    try:
        _worker_side(settings, "hand out the job's staged inputs", get)
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


def share(settings: Settings, record_id: str, path: Path) -> None:
    """Publish a file or folder this worker made in the record's staging folder (a fetched input, a
    reference's statistics, a shard's statistics) for workers on other machines; without a store the
    staging folder is shared already."""
    if not enabled(settings):
        return
    remote = _remote_copy(settings, record_id, path)
    if path.is_dir():
        _worker_side(settings, "store a job's input", lambda fs: fs.put(f"{path}/", remote, recursive=True))
    else:
        _worker_side(settings, "store a job's file", lambda fs: fs.put_file(str(path), remote))


def shared(settings: Settings, record_id: str, path: Path) -> bool:
    """Whether a file of the record's staging folder exists here or, published by another machine's
    worker (``share``), in the store."""
    if path.exists() or not enabled(settings):
        return path.exists()
    remote = _remote_copy(settings, record_id, path)
    return bool(_worker_side(settings, "look up a job's file", lambda fs: fs.exists(remote)))


def fetch(settings: Settings, record_id: str, path: Path) -> Path:
    """A file of the record's staging folder as a local file: here already, or copied from the store."""
    if path.exists() or not enabled(settings):
        return path
    remote = _remote_copy(settings, record_id, path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _worker_side(settings, "hand out a job's file", lambda fs: fs.get_file(remote, str(tmp)))
    os.replace(tmp, path)
    return path


def sweep(settings: Settings, is_over) -> None:
    """A worker's staging folders of records that ``is_over(record_id)`` says are over: with a store,
    the worker that ends a job removes only its own copy, and a sharded job's other workers keep
    theirs until this finds them."""
    root = Path(settings.data_dir).resolve() / "staging"
    if not enabled(settings) or not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.is_dir() and _ID.match(folder.name) and is_over(folder.name, folder.stat().st_mtime):
            shutil.rmtree(folder, ignore_errors=True)


def discard(settings: Settings, record_id: str) -> None:
    """Remove a record's staged inputs everywhere this process can see them. Best effort: a store that
    is away leaves objects behind (logged; a lifecycle rule on the prefix removes them in the end)."""
    shutil.rmtree(local_dir(settings, record_id), ignore_errors=True)
    if enabled(settings):
        _remove(settings, _remote(settings, record_id), recursive=True)


def _remove(settings: Settings, path: str, recursive: bool = False) -> None:
    try:
        filesystem(settings).rm(path, recursive=recursive)
    except FileNotFoundError:
        pass
    except Exception as e:
        log.warning("object store: could not remove %s: %r", path, e)


# --- reference statistics ---------------------------------------------------------------------------


def put_reference(settings: Settings, ref_id: str, path: Path) -> None:
    """Publish statistics a worker wrote at ``local_reference``: to the store (and the local file
    removed) when one is configured; else they stay where every process reads them."""
    if not enabled(settings):
        return
    remote = _remote_reference(settings, ref_id)
    _worker_side(settings, "store the reference statistics", lambda fs: fs.put_file(str(path), remote))
    path.unlink(missing_ok=True)


def get_reference(settings: Settings, ref_id: str, dest: Path) -> Path:
    """A reference's statistics as a local file: its shared file, or a copy from the store at ``dest``."""
    if not enabled(settings):
        return local_reference(settings, ref_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remote = _remote_reference(settings, ref_id)
    try:
        _worker_side(settings, "hand out the reference statistics", lambda fs: fs.get_file(remote, str(dest)))
    except FileNotFoundError:
        raise StorageError(f"the statistics of reference {ref_id} are not in the object store (was it "
                           "deleted?)") from None
    return dest


def remove_reference(settings: Settings, ref_id: str) -> None:
    """Delete a reference's statistics (best effort, as ``discard``)."""
    local_reference(settings, ref_id).unlink(missing_ok=True)
    if enabled(settings):
        _remove(settings, _remote_reference(settings, ref_id))
