"""The service harnesses and what tests do with a running service.

``Stack``: one service in the shared test Redis (its own queue and data folder), with API and worker
processes the test starts, kills and configures one by one. ``Serve``: `trustfid serve` as a user runs it,
in its own folder and port, with a clean environment. Both start their processes in sessions of their
own, so a signal meant for the test runner's process group never reaches them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from app.serve import free_port, stop_process, worker_command
from app.settings import Settings, hash_key
from tests.support import ROOT

KEY_A = "test-key-alice"
KEY_B = "test-key-bob"


def auth(key: str = KEY_A) -> dict:
    return {"Authorization": f"Bearer {key}"}


def wait_for(pred, timeout: float = 120, what: str = "condition", log=lambda: ""):
    """``pred()``'s first true value, polled every 0.1 s; fails after ``timeout`` s naming ``what`` (and
    ``log()``, e.g. a process's log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log()}"
        time.sleep(0.1)


def part_way(record: dict, at_least: int = 1) -> bool:
    """Whether a job is running with ``at_least`` images done. A job that has ended already fails the test at
    once, saying so: a fault test meant to strike mid-job missed its moment (its job was too short for the
    machine), which waiting out a timeout would only hide."""
    assert record["state"] in ("queued", "running"), f"the job ended before the test could act mid-job: {record}"
    p = record.get("progress") or {}
    return record["state"] == "running" and p.get("images_done", 0) >= at_least


class Stack:
    """One service: its own queue and data dir in the shared Redis; worker and API processes."""

    def __init__(self, redis_url: str, tmp: Path, **overrides):
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {
            "TRUSTFID_REDIS_URL": redis_url,
            "TRUSTFID_DATA_DIR": str(self.data_dir),
            "TRUSTFID_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "TRUSTFID_API_KEYS": f"{KEY_A},sha256:{hash_key(KEY_B)}",
            "TRUSTFID_HEARTBEAT_S": "1",
            "TRUSTFID_LEASE_S": "3",
            "TRUSTFID_VISIBILITY_TIMEOUT_S": "4",
            "TRUSTFID_UNACKED_RESTORE_INTERVAL_S": "1",
            "TRUSTFID_RATE_LIMIT_PER_MINUTE": "1000",
            "TRUSTFID_MAX_UPLOAD_BYTES": str(4 * 2**20),
            "TRUSTFID_MAX_IMAGES": "60",
            "TRUSTFID_MAX_PIXELS": str(512 * 512),
            "TRUSTFID_MAX_ARCHIVE_MEMBERS": "100",
            "TRUSTFID_MAX_EXPANDED_BYTES": str(16 * 2**20),
            "TRUSTFID_MAX_COMPRESSION_RATIO": "50",
            "TRUSTFID_THREADS": "2",
            "TRUSTFID_URL_HOSTS": "localhost",  # allowed by name, but it is a loopback address
        }
        env.update({k: str(v) for k, v in overrides.items()})
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.settings = Settings(**{k[9:].lower(): v for k, v in env.items() if v != ""})
        self.workers: list[subprocess.Popen] = []
        self.api: subprocess.Popen | None = None
        self.url = ""
        self._n = 0

    # processes
    def start_worker(self, wrap: list[str] | None = None, **env) -> subprocess.Popen:
        """A worker; ``env`` on top of the stack's (e.g. its own TRUSTFID_DATA_DIR, as on another machine),
        its command after ``wrap`` (e.g. ``ip netns exec NAME``, tests/support/hosts.py)."""
        self._n += 1
        log = open(self.logs / f"worker{self._n}.log", "ab")
        cmd = [*(wrap or []), *worker_command(self.settings, pool="solo", concurrency=1,
                                              name=f"w{self._n}-{uuid.uuid4().hex[:6]}@%h")]
        p = subprocess.Popen(cmd, env={**self.env, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        log.close()
        self.workers.append(p)
        return p

    def start(self, workers: int = 1, **worker_env) -> Stack:
        """The API and ``workers`` workers (``worker_env`` on top of the stack's), once all are ready."""
        self.start_api()
        for _ in range(workers):
            self.start_worker(**worker_env)
        self.wait_ready(workers=workers)
        return self

    def start_api(self) -> str:
        port = free_port()
        log = open(self.logs / "api.log", "ab")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port), "--log-level",
             "warning"], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            assert self.api.poll() is None, self.log("api.log")
            assert time.monotonic() < deadline, "API did not start"
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 180, workers: int = 1) -> None:
        """Until /readyz says ``workers`` workers are alive."""
        deadline = time.monotonic() + timeout
        while (r := httpx.get(self.url + "/readyz", timeout=5)).status_code != 200 or r.json()["workers"] < workers:
            assert time.monotonic() < deadline, "no worker became ready:\n" + self.log(f"worker{self._n}.log")
            assert all(w.poll() is None for w in self.workers[-1:]), self.log(f"worker{self._n}.log")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        p = self.logs / name
        return p.read_text(errors="replace")[-6000:] if p.exists() else ""

    def close(self):
        for w in self.workers:
            stop_process(w, 15, first=signal.SIGQUIT)
        if self.api:
            stop_process(self.api, 10)

    # HTTP helpers
    def client(self, key: str | None = KEY_A) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=auth(key) if key else {}, timeout=60)

    def wait_job(self, job_id: str, key: str = KEY_A, timeout: float = 240, path: str = "/v1/jobs/") -> dict:
        return self.wait_jobs([job_id], key, timeout, path)[job_id]

    def wait_jobs(self, job_ids: list[str], key: str = KEY_A, timeout: float = 240, path: str = "/v1/jobs/",
                  seen: dict | None = None) -> dict[str, dict]:
        """Each job's record once it has ended, polling them together; ``seen`` (id -> list) gets every
        record polled on the way."""
        deadline = time.monotonic() + timeout
        ended: dict[str, dict] = {}
        with self.client(key) as c:
            while True:
                for job_id in [j for j in job_ids if j not in ended]:
                    r = c.get(path + job_id)
                    assert r.status_code == 200, r.text
                    rec = r.json()
                    if seen is not None:
                        seen.setdefault(job_id, []).append(rec)
                    if rec["state"] in ("succeeded", "failed", "cancelled"):
                        ended[job_id] = rec
                    assert time.monotonic() < deadline, f"job still {rec['state']}:\n" + self.log(f"worker{self._n}.log")
                if len(ended) == len(job_ids):
                    return ended
                time.sleep(0.2)


def upload(c: httpx.Client, real_files, gen_files, options: dict | None = None, path="/v1/jobs") -> httpx.Response:
    """POST a multipart job; *_files are paths (or (name, bytes) tuples)."""
    files = []
    for field, items in (("real", real_files), ("generated", gen_files)):
        for it in items:
            if isinstance(it, tuple):
                files.append((field, (it[0], it[1], "application/octet-stream")))
            else:
                files.append((field, (Path(it).name, Path(it).read_bytes(), "application/octet-stream")))
    data = {"options": json.dumps(options)} if options is not None else None
    return c.post(path, files=files, data=data)


def strip_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "timing"}





def err(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def children_of(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTFID_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), TRUSTFID_THREADS="2", **extra)
    return env


class Serve:
    """`trustfid serve` in its own folder and port, as a user runs it: ``args`` after ``serve --port N``,
    ``env`` on top of a clean environment (no TRUSTFID_* settings)."""

    def __init__(self, folder: Path, *args: str, **env):
        self.folder, self.args, self.env, self.port = folder, args, env, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, workers: int = 1) -> Serve:
        """Start it; returns once /readyz counts ``workers`` workers."""
        log = open(self.folder / "serve.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
                                      "--log-level", "warning", *self.args], cwd=self.folder,
                                     env=clean_env(**self.env), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.wait(lambda: self.workers() >= workers, 180, "serve to be ready")
        return self

    def workers(self) -> int:
        """How many workers /readyz counts (0 while it is not ready)."""
        assert self.proc.poll() is None, self.log()[-6000:]
        try:
            r = httpx.get(self.url + "/readyz", timeout=2)
            return r.json().get("workers", 0) if r.status_code == 200 else 0
        except (httpx.HTTPError, ValueError):
            return 0

    def child(self, marker: str) -> int:
        """The pid of the child whose command line contains ``marker`` (waits for it)."""
        def find():
            for pid in children_of(self.proc.pid):
                try:
                    if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") and alive(pid):
                        return pid
                except OSError:
                    pass
            return None
        return self.wait(find, 60, f"a {marker} child")

    def log(self) -> str:
        p = self.folder / "serve.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> int | None:
        """Ctrl-C (or ``sig``); its exit code (None: it did not stop within ``timeout`` s and was killed)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode if self.proc else None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def job(self, job_id: str) -> dict:
        """The job record; ``{"state": None}`` while the API answers 503 (Redis restarting), which
        must come with Retry-After. Any other error fails the test."""
        with self.client() as c:
            r = c.get(f"/v1/jobs/{job_id}")
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"] == "1", r.text
            return {"state": None}
        assert r.status_code == 200, r.text
        return r.json()

    def report(self, job_id: str) -> dict:
        with self.client() as c:
            return strip_timing(c.get(f"/v1/jobs/{job_id}/report").json())

    def wait_done(self, job_id: str, timeout: float = 240) -> dict:
        return self.wait(lambda: (r := self.job(job_id))["state"] in ("succeeded", "failed", "cancelled") and r,
                         timeout, f"job {job_id} to end")

    def wait(self, pred, timeout: float, what: str):
        return wait_for(pred, timeout, what, log=lambda: self.log()[-6000:])


def shard_lines(s, state: str) -> dict[str, list[str]]:
    """Per worker log, the shards it ended in ``state`` (Celery logs each task's return value)."""
    out = {}
    for n in (1, 2):
        text = (s.logs / f"worker{n}.log").read_text(errors="replace")
        out[f"worker{n}"] = re.findall(rf"trustfid\.score_shard\[[^\]]+\] succeeded in [\d.e-]+s: '{state}'", text)
    return out
