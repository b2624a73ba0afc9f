"""Load on the API while a job runs: `GET /v1/jobs/{id}` and `/healthz` from 50 concurrent clients
against `trustfid serve` (embedded Redis, one worker, the API), reporting p50, p99, max and errors.

    python -m bench.load_bench [--clients 50] [--seconds 15] [--interval 0.5] [--json out.json]

Goal (issue 10): p99 <= 20 ms and no errors on a quiet machine, with 50 clients polling. Two loads:

- paced: 50 clients, each polling every ``--interval`` seconds (a training loop or a dashboard polls;
  it does not fire back to back). This is the goal's load. asyncio + httpx in this process.
- saturated: `wrk -c 50` (when installed), 50 connections back to back: the API's throughput, and the
  latency when the machine can do no more (closed loop: latency = 50 / throughput).

Each in three situations, side by side in one run: idle (no job); busy, a scoring job running (T=20)
with the embedded worker at the shipped niceness (TRUSTFID_WORKER_NICE=10); and busy with niceness 0,
where the worker's torch threads compete with the API for every core. On a 2-core machine the load
generator competes for the same cores as the API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import make_image_folder
from bench.machine import describe, write_results

ROOT = Path(__file__).resolve().parent.parent


def _load_avg() -> float:
    return round(os.getloadavg()[0], 2)


class Serve:
    """`trustfid serve` (embedded Redis, ``workers`` workers, the API) in ``folder``; ``env`` on top of a
    clean environment."""

    def __init__(self, folder: Path, nice: int, workers: int = 1, env: dict | None = None):
        from app.serve import free_port

        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTFID_")}
        clean.update(PYTHONPATH=str(ROOT), TRUSTFID_WORKER_NICE=str(nice), TRUSTFID_RATE_LIMIT_PER_MINUTE="0",
                     **(env or {}))
        log = open(folder / "serve.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
                                      "--workers", str(workers), "--log-level", "warning"], cwd=folder, env=clean,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200 and r.json().get("workers", 1) >= workers:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "serve.log").read_text()[-3000:])
            time.sleep(0.3)

    def submit(self, real: Path, gen: Path, options: dict) -> str:
        files = [("real", (p.name, p.read_bytes())) for p in sorted(real.glob("*.png"))]
        files += [("generated", (p.name, p.read_bytes())) for p in sorted(gen.glob("*.png"))]
        r = httpx.post(self.url + "/v1/jobs", files=files, data={"options": json.dumps(options)}, timeout=120)
        r.raise_for_status()
        return r.json()["id"]

    def state(self, job: str) -> str:
        return httpx.get(f"{self.url}/v1/jobs/{job}", timeout=30).json()["state"]

    def wait(self, job: str, timeout: float = 3600) -> dict:
        deadline = time.monotonic() + timeout
        while (rec := httpx.get(f"{self.url}/v1/jobs/{job}", timeout=30).json())["state"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job} still {rec['state']} after {timeout} s")
            time.sleep(0.2)
        return rec

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _paced(url: str, paths: list[str], clients: int, seconds: float, interval: float) -> dict:
    """``clients`` loops, each GETting the paths in turn once every ``interval`` seconds."""
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    errors: dict[str, int] = {p: 0 for p in paths}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        start = time.monotonic()

        async def loop(i: int):
            k, due = i, start + interval * i / clients  # spread the clients over one interval
            while due < start + seconds:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                path = paths[k % len(paths)]
                k, due = k + 1, due + interval
                t0 = time.perf_counter()
                try:
                    ok = (await client.get(path)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies[path].append(time.perf_counter() - t0)
                errors[path] += not ok

        await asyncio.gather(*(loop(i) for i in range(clients)))
    return {p: _summary(np.asarray(latencies[p]) * 1000, errors[p], seconds) for p in paths}


def _summary(ms: np.ndarray, errors: int, seconds: float) -> dict:
    return {"requests": int(len(ms)), "per_s": round(len(ms) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1), "errors": int(errors)}


def _wrk(url: str, paths: list[str], clients: int, seconds: float) -> dict | None:
    """wrk's closed loop at ``clients`` connections, one path at a time; None without wrk."""
    if not shutil.which("wrk"):
        return None
    out = {}
    for path in paths:
        text = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{seconds:g}s", "--latency", url + path],
                              capture_output=True, text=True).stdout

        def grab(pattern, text=text):
            m = re.search(pattern, text, re.MULTILINE)
            return m.group(1) if m else None

        def ms(v, text=text):
            m = re.match(r"([\d.]+)(us|ms|s|m)$", v or "")
            if m is None:
                raise RuntimeError(f"cannot read wrk's output:\n{text}")
            num, unit = m.groups()
            return round(float(num) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit], 1)
        non2xx = int(grab(r"Non-2xx or 3xx responses: (\d+)") or 0)
        errors_line = grab(r"Socket errors: (.*)") or ""
        sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", errors_line))
        out[path] = {"per_s": float(grab(r"Requests/sec:\s+([\d.]+)")), "p50_ms": ms(grab(r"^\s+50%\s+(\S+)")),
                     "p99_ms": ms(grab(r"^\s+99%\s+(\S+)")), "max_ms": ms(grab(r"Latency\s+\S+\s+\S+\s+(\S+)")),
                     "errors": non2xx + sock}
    return out


def _measure(url: str, paths: list[str], clients: int, seconds: float, interval: float) -> dict:
    return {"paced": asyncio.run(_paced(url, paths, clients, seconds, interval)),
            "saturated": _wrk(url, paths, clients, seconds)}


def run(clients: int, seconds: float, images: int, interval: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="trustfid-load-"))
    real = make_image_folder(work / "real", images, 128, seed=1)
    gen = make_image_folder(work / "gen", images, 128, seed=2)
    tiny = {"passes": 0, "bootstrap_resamples": 0, "device": "cpu"}
    busy = {"passes": 20, "bootstrap_resamples": 0, "device": "cpu"}
    rows = []
    for nice in (10, 0):
        folder = work / f"nice{nice}"
        folder.mkdir()
        s = Serve(folder, nice)
        try:
            small = work / "small"
            if not small.exists():
                make_image_folder(small / "r", 2, 64, seed=3)
                make_image_folder(small / "g", 2, 64, seed=4)
            done = s.submit(small / "r", small / "g", tiny)  # the finished job the clients poll
            while s.state(done) not in ("succeeded", "failed"):
                time.sleep(0.5)
            paths = ["/healthz", f"/v1/jobs/{done}"]
            if nice == 10:
                load0 = _load_avg()
                rows.append({"phase": "idle", "worker_nice": None, "load_before": load0,
                             "results": _measure(s.url, paths, clients, seconds, interval)})
            job = s.submit(real, gen, busy)
            while s.state(job) != "running":
                time.sleep(0.2)
            time.sleep(3)  # past loading: the network is running
            load0 = _load_avg()
            res = _measure(s.url, paths, clients, seconds, interval)
            rows.append({"phase": "busy", "worker_nice": nice, "load_before": load0,
                         "job_still_running": s.state(job) == "running", "results": res})
        finally:
            s.stop()
    return {"machine": describe(), "clients": clients, "seconds": seconds, "interval": interval,
            "images_per_set": images, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_after": _load_avg(), "rows": rows}


def table(results: dict) -> str:
    lines = ["| load | phase | worker niceness | endpoint | requests/s | p50 ms | p99 ms | max ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for load in ("paced", "saturated"):
        for row in results["rows"]:
            for path, r in (row["results"][load] or {}).items():
                name = "GET /v1/jobs/{id}" if path.startswith("/v1/jobs/") else f"GET {path}"
                nice = "–" if row["worker_nice"] is None else row["worker_nice"]
                lines.append(f"| {load} | {row['phase']} | {nice} | {name} | {r['per_s']} | {r['p50_ms']} | "
                             f"{r['p99_ms']} | {r['max_ms']} | {r['errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--images", type=int, default=150, help="images per set of the job that keeps the worker busy")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between two polls of one paced client")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    results = write_results(args.json, run(args.clients, args.seconds, args.images, args.interval))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
