"""A small client for training loops and scripts.

    from trustfid import Client
    client = Client("http://127.0.0.1:8000", api_key=None)        # or TRUSTFID_URL / TRUSTFID_API_KEY
    ref = client.register_reference("data/real/").wait()           # optional: real statistics once
    job = client.submit(real=ref, generated=fake_batch_tensor, options={"passes": 20}, tags=["step=1200"])
    ...                                                           # training goes on; the upload runs in
    report = job.wait(timeout=600).report()                       # a background thread

``real``/``generated``: a folder (sent as one tar), an image/archive/.npy/.npz file, a numpy array
or torch tensor (N,H,W,C or N,C,H,W; uint8, or float in [0, 1] which is rounded to uint8), a
``Reference`` (or {"reference_id": ...}), or a URI string (file://, http(s)://, s3://, or a PACS study
or series as dicomweb+https://) the server fetches itself. ``submit`` copies array data before it
returns, so the caller may overwrite its tensors at once; it never waits for the network unless
``wait=True``. ``job.fhir()`` gives the report as the FHIR R4 Bundle the service builds (trustfid/fhir.py).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .errors import InputError, TrustfidError, UnreachableError
from .inputs.rules import list_folder
from .records import FINAL_STATES, ErrorResponse, JobRecord, ReferenceRecord, Series, SeriesPoint
from .schemas import Report, lenient

URI_SCHEMES = ("file://", "http://", "https://", "s3://", "dicomweb+https://", "dicomweb+http://")


class ServiceError(TrustfidError):
    """An error answered by the service, with its code and HTTP status."""


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        e = lenient(ErrorResponse, resp.content).error
    except ValueError:  # not the service's error shape (a proxy's page, say)
        raise ServiceError(resp.text[:500] or resp.reason_phrase, code="http_error", status=resp.status_code) from None
    raise ServiceError(e.message, code=e.code, status=resp.status_code)


# --- inputs -------------------------------------------------------------------------------------


class _Part:
    """One set, ready to send: a JSON reference, or a file (opened when sent)."""

    def __init__(self, ref: dict | None = None, path: Path | None = None, data: bytes | None = None,
                 name: str | None = None, cleanup: bool = False):
        self.ref, self.path, self.data, self.name, self.cleanup = ref, path, data, name, cleanup

    def form(self, field: str, stack: list) -> tuple:
        if self.ref is not None:
            return ("data", field, json.dumps(self.ref))
        if self.data is not None:
            return ("files", field, (self.name, self.data, "application/octet-stream"))
        fp = open(self.path, "rb")
        stack.append(fp)
        return ("files", field, (self.name or self.path.name, fp, "application/octet-stream"))

    def close(self):
        if self.cleanup and self.path:
            self.path.unlink(missing_ok=True)


def _array_bytes(x) -> bytes:
    import numpy as np

    if hasattr(x, "detach"):  # a torch tensor; torch is imported by whoever made it, not here
        x = x.detach().to("cpu").numpy()
    a = np.asarray(x)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"arrays must be uint8 or float in [0, 1], not {a.dtype}")
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _prepare(x: Any, side: str) -> _Part:
    if isinstance(x, Reference):
        return _Part(ref={"reference_id": x.id})
    if isinstance(x, dict):
        return _Part(ref=x)
    if isinstance(x, str) and x.startswith(URI_SCHEMES):
        return _Part(ref={"uri": x})
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if p.is_dir():
            # The files the engine would read from this folder (the shared rules: suffixes, content
            # sniffing, hidden names, links followed), under the names it would give them.
            fd, tmp = tempfile.mkstemp(suffix=".tar", prefix=f"trustfid-{side}-")
            os.close(fd)
            with tarfile.open(tmp, "w", dereference=True) as tf:
                for name, path, _skip in list_folder(p, str(p)):
                    if path is not None:
                        tf.add(path, arcname=name)
            return _Part(path=Path(tmp), name=f"{side}.tar", cleanup=True)
        if not p.is_file():
            from .inputs.imageset import ACCEPTED_INPUTS

            raise InputError(f"{side}: '{p}' does not exist; give {ACCEPTED_INPUTS}.")
        return _Part(path=p)
    return _Part(data=_array_bytes(x), name=f"{side}.npy")


# --- handles ------------------------------------------------------------------------------------


class _Handle:
    """A job or reference being submitted in the background, then polled."""

    _path = ""
    _model: type = JobRecord

    def __init__(self, client: Client):
        self.client = client
        self._id: str | None = None
        self._error: BaseException | None = None
        self._sent = threading.Event()

    def _submit(self, send) -> None:
        try:
            self._id = send()
        except BaseException as e:  # surfaced by id/status/wait
            self._error = e
        finally:
            self._sent.set()

    @property
    def uploaded(self) -> bool:
        return self._sent.is_set()

    @property
    def id(self) -> str:
        """The id (waits for the upload to finish; raises its error if it failed)."""
        self._sent.wait()
        if self._error is not None:
            raise self._error
        return self._id

    def status(self):
        return lenient(self._model, self.client.request("GET", f"{self._path}/{self.id}").content)

    def done(self) -> bool:
        return self.uploaded and (self._error is not None or self.status().state in FINAL_STATES)

    def wait(self, timeout: float | None = None, poll: float = 1.0, on_update=None):
        """Block until the job ends (or ``timeout`` s pass: TimeoutError); returns the record. A failed
        or cancelled job is returned too; look at ``state`` and ``error``. ``on_update(record)`` is
        called after every poll (its ``state`` and ``progress``), e.g. to show progress."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._sent.wait(timeout):
            raise TimeoutError("the upload did not finish in time")
        while True:
            rec = self.status()
            if on_update is not None:
                on_update(rec)
            if rec.state in FINAL_STATES:
                return rec
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.id} is still {rec.state}")
            time.sleep(poll)

    def cancel(self) -> None:
        self.client.request("DELETE", f"{self._path}/{self.id}")


class Job(_Handle):
    _path = "/v1/jobs"
    _model = JobRecord

    def report(self) -> Report:
        return lenient(Report, self.client.request("GET", f"{self._path}/{self.id}/report").content)

    def fhir(self):
        """The report as FHIR R4: the service's transaction Bundle (GET .../report?format=fhir, built by
        trustfid/fhir.py), validated as a ``fhir.resources`` R4B ``Bundle``; ``.model_dump_json()`` gives
        the document to POST to a FHIR server."""
        from fhir.resources.R4B.bundle import Bundle

        return Bundle.model_validate_json(
            self.client.request("GET", f"{self._path}/{self.id}/report", params={"format": "fhir"}).content)

    def wait(self, timeout: float | None = None, poll: float = 1.0, on_update=None) -> Job:
        rec = super().wait(timeout, poll, on_update)
        if rec.state != "succeeded":
            err = rec.error.message if rec.error else rec.state
            raise ServiceError(f"job {rec.id} {rec.state}: {err}", code=rec.error.code if rec.error else rec.state)
        return self


class Reference(_Handle):
    _path = "/v1/references"
    _model = ReferenceRecord

    def __init__(self, client: Client, id: str | None = None):
        super().__init__(client)
        if id is not None:
            self._id = id
            self._sent.set()

    def wait(self, timeout: float | None = None, poll: float = 1.0, on_update=None) -> Reference:
        rec = super().wait(timeout, poll, on_update)
        if rec.state != "succeeded":
            raise ServiceError(f"reference {rec.id} {rec.state}: {rec.error.message if rec.error else ''}",
                               code=rec.error.code if rec.error else rec.state)
        return self


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 600.0):
        url = url or os.environ.get("TRUSTFID_URL", "http://127.0.0.1:8000")
        api_key = api_key if api_key is not None else os.environ.get("TRUSTFID_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        """One request; a service error raises ServiceError, no answer at all raises UnreachableError."""
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:  # refused, DNS, timeouts, a dropped connection
            detail = " ".join(str(e).split()) or type(e).__name__
            raise UnreachableError(f"cannot reach the trustfid service at {self.http.base_url} ({detail}); is it "
                                   "running? Start one with `trustfid serve`, or point TRUSTFID_URL (--url) at "
                                   "it") from None
        _raise_for(r)
        return r

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _post(self, path: str, parts: dict[str, _Part], fields: dict) -> str:
        opened: list = []
        try:
            if all(p.ref is not None for p in parts.values()):
                r = self.request("POST", path, json={**{k: p.ref for k, p in parts.items()}, **fields})
            else:
                data = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in fields.items()}
                files = []
                for k, p in parts.items():
                    where, field, value = p.form(k, opened)
                    if where == "data":
                        data[field] = value
                    else:
                        files.append((field, value))
                r = self.request("POST", path, data=data, files=files)
            return r.json()["id"]
        finally:
            for fp in opened:
                fp.close()
            for p in parts.values():
                p.close()

    def submit(self, real, generated, options: dict | None = None, *, tags: list[str] | None = None,
               callback_url: str | None = None, wait: bool = False) -> Job:
        """Queue a job; returns at once (inputs copied, upload running in the background) unless wait."""
        opts = dict(options or {})
        if tags:
            opts["tags"] = list(tags)
        if callback_url:
            opts["callback_url"] = callback_url
        parts = {"real": _prepare(real, "real"), "generated": _prepare(generated, "generated")}
        fields = {"options": opts} if opts else {}
        job = Job(self)
        self._start(job, lambda: self._post("/v1/jobs", parts, fields), wait)
        return job

    def register_reference(self, source, options: dict | None = None, *, name: str | None = None,
                           wait: bool = False) -> Reference:
        parts = {"source": _prepare(source, "source")}
        fields = {k: v for k, v in (("options", options), ("name", name)) if v}
        ref = Reference(self)
        self._start(ref, lambda: self._post("/v1/references", parts, fields), wait)
        return ref

    def job(self, job_id: str) -> Job:
        j = Job(self)
        j._id = job_id
        j._sent.set()
        return j

    def reference(self, ref_id: str) -> Reference:
        return Reference(self, ref_id)

    def jobs(self, tags: list[str] | None = None, limit: int = 50) -> list[JobRecord]:
        r = self.request("GET", "/v1/jobs", params=[("tag", t) for t in tags or []] + [("limit", limit)])
        return [lenient(JobRecord, j) for j in r.json()["jobs"]]

    def series(self, tag: str, *, since: float | None = None) -> list[SeriesPoint]:
        """Every point of GET /v1/series for ``tag`` (all pages): succeeded jobs ordered by step."""
        points: list[SeriesPoint] = []
        params: dict = {"tag": tag, "limit": 1000, **({"since": since} if since is not None else {})}
        while True:
            page = lenient(Series, self.request("GET", "/v1/series", params=params).content)
            points += page.points
            if page.next_cursor is None:
                return points
            params["cursor"] = page.next_cursor

    @staticmethod
    def _start(handle: _Handle, send, wait: bool) -> None:
        if wait:
            handle._submit(send)
            handle.id  # noqa: B018 - raises the upload's error
        else:
            threading.Thread(target=handle._submit, args=(send,), daemon=True, name="trustfid-upload").start()


def submit(real, generated, options: dict | None = None, **kw) -> Job:
    """``Client().submit(...)`` with TRUSTFID_URL / TRUSTFID_API_KEY."""
    return Client().submit(real, generated, options, **kw)
