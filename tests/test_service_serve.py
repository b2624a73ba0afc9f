"""`trustfid serve`, the README's run command: embedded Redis + one worker + the API, stopped cleanly
by Ctrl-C. Run as a subprocess, in a fresh working directory, with no TRUSTFID_* settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.serve import free_port
from tests.support import ROOT
from tests.support.images import pngs
from tests.support.presets import FAST_OPTIONS
from tests.support.service import Serve, alive, children_of, clean_env
from trustfid.client import Client

pytestmark = pytest.mark.service


def test_supervised_children_are_started_from_a_thread_niced_and_die_with_their_parent(tmp_path):
    """`trustfid serve` restarts children from its supervisor thread, so nothing may run in the child
    before exec (no preexec_fn); the child still gets its niceness and dies when serve is SIGKILLed."""
    script = (
        "import sys, threading, time; from pathlib import Path; from app.serve import _popen\n"
        "def start():\n"
        "    print(_popen(['sleep', '120'], nice=7).pid, flush=True)\n"
        "    time.sleep(120)  # the death signal follows the thread that started the child, as in serve\n"
        "threading.Thread(target=start, daemon=True).start(); time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10  # setpriv and nice each exec the next: the pid ends up running sleep
        while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[:2] != [b"sleep", b"120"]:
            assert time.monotonic() < deadline, Path(f"/proc/{child}/cmdline").read_bytes()
            time.sleep(0.05)
        stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[16]) == 7  # niceness
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()


def test_serve_runs_everything_and_stops_on_ctrl_c(tmp_path, image_sets):
    s = Serve(tmp_path).start()
    try:
        kids = children_of(s.proc.pid)
        assert len(kids) == 2  # redis-server and the worker

        # The quick start: no key needed on 127.0.0.1; the client and plain HTTP both work.
        with Client(s.url) as client:
            job = client.submit(image_sets["real"], image_sets["generated"], FAST_OPTIONS)
            report = job.wait(timeout=240).report()
        assert report.counts.real.used == 4 and report.counts.generated.used == 4
        cli = subprocess.run([sys.executable, "-m", "app.cli", "submit", str(image_sets["real"]),
                              str(image_sets["generated"]), "--url", s.url, "--passes", "2", "--seed", "7",
                              "--options", '{"bootstrap_resamples": 5}', "--wait", "--json", str(tmp_path / "r.json")],
                             capture_output=True, text=True, timeout=300, env=clean_env())
        assert cli.returncode == 0, cli.stderr
        assert "FID" in cli.stdout and json.loads((tmp_path / "r.json").read_text())["config"]["passes"] == 2
        with s.client() as c:
            files = [("real", (p.name, p.read_bytes())) for p in pngs(image_sets["real"])]
            files += [("generated", (p.name, p.read_bytes())) for p in pngs(image_sets["generated"])]
            r = c.post("/v1/jobs", files=files, data={"options": '{"passes": 2, "bootstrap_resamples": 5, "seed": 7}'})
            assert r.status_code == 202
            assert c.get(r.headers["location"]).json()["state"] in ("queued", "running", "succeeded")
    finally:
        code = s.stop()  # Ctrl-C
    out = s.log()
    assert code == 0, out
    assert "no API keys configured" in out and "127.0.0.1" in out
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(k) for k in kids), "child processes outlived `trustfid serve`"
    data = tmp_path / ".trustfid"
    assert any((data / "redis").glob("appendonly*")), "Redis kept no append-only file in the data dir"


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port",
                        str(free_port())], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "TRUSTFID_API_KEYS" in r.stderr
    assert not (tmp_path / ".trustfid").exists()


def test_serve_workers_runs_one_supervised_worker_per_gpu(tmp_path):
    """`serve --workers 2` on a machine showing two GPUs: two workers, one GPU each, each restarted when
    it dies. (On a machine without CUDA the workers run on the CPU; CUDA_VISIBLE_DEVICES is still set.)"""
    s = Serve(tmp_path, "--workers", "2", CUDA_VISIBLE_DEVICES="0,1")

    def gpu_of(pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            return None
        return next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"CUDA_VISIBLE_DEVICES=")), None)

    def is_worker(pid):
        try:
            return b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes() and alive(pid)
        except OSError:
            return False

    try:
        s.start(workers=2)
        workers = {pid: gpu_of(pid) for pid in children_of(s.proc.pid) if is_worker(pid)}
        assert sorted(workers.values()) == ["0", "1"], (workers, s.log())
        victim = next(pid for pid, gpu in workers.items() if gpu == "1")
        os.kill(victim, signal.SIGKILL)
        s.wait(lambda: any(p != victim and is_worker(p) and gpu_of(p) == "1" for p in children_of(s.proc.pid)), 60,
               "worker2 restarted on GPU 1")
        s.wait(lambda: s.workers() == 2, 180, "two workers ready again")
    finally:
        code = s.stop()
    out = s.log()
    assert code == 0, out
    assert "2 workers on GPUs 0, 1" in out and "worker2 exited" in out and "worker2 restarted" in out


def test_cpu_workers_share_the_cores_and_gpu_workers_get_one_gpu_each():
    from app.serve import worker_env, worker_gpus
    from app.settings import Settings

    cores = os.cpu_count() or 1
    assert worker_gpus(3, ["0", "1"]) == ["0", "1", "0"] and worker_gpus(2, []) == [None, None]
    assert worker_env({}, "1", 2, Settings())["CUDA_VISIBLE_DEVICES"] == "1"
    assert worker_env({}, None, 2, Settings())["TRUSTFID_THREADS"] == str(max(1, cores // 2))
    assert "TRUSTFID_THREADS" not in worker_env({}, None, 1, Settings())  # one worker: torch's default
    assert "TRUSTFID_THREADS" not in worker_env({}, None, 2, Settings(threads=1))  # the operator's choice
