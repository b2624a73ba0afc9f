"""This worker process's state: the service's parts (app/services.py), built once per process (a
prefork child builds its own after the fork), the worker's id, its job limits, and the heartbeat
thread. Tasks (worker/tasks.py) take what they need from ``current()``."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from app.cleanup import Cleanup
from app.queue import TASK_REFERENCE, TASK_SCORE, Queue
from app.services import Services, build
from app.settings import get_settings
from app.staging import Staging
from app.store import Store
from trustfid.records import FINAL_STATES

log = logging.getLogger("trustfid.worker")
SWEEP_HEARTBEATS = 20  # every this many heartbeats a worker looks for its local copies of ended records


@dataclass(frozen=True)
class JobLimits:
    """How often a record may start (worker deaths) and how long it may run (the settings' fields)."""

    max_attempts: int
    soft_time_limit_s: int


@dataclass
class Worker:
    """This process as a worker: the service's parts, its id (host:pid:random, as the heartbeat and
    the leases name it), its job limits and its heartbeat's period."""

    services: Services
    id: str
    limits: JobLimits
    heartbeat_s: float
    lease_s: float
    stop: threading.Event
    capabilities: tuple[str, ...] = ()  # optional metrics this worker can compute (frd: pyradiomics is here)

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def staging(self) -> Staging:
        return self.services.staging

    @property
    def queue(self) -> Queue:
        return self.services.queue

    @property
    def cleanup(self) -> Cleanup:
        return self.services.cleanup

    def beat(self) -> None:
        """Every heartbeat: say this worker is alive, renew the leases it holds, and queue again any
        record whose lease lapsed (its worker died or was stopped mid-job) — so such a record runs again
        within ``lease_s`` + ``heartbeat_s`` of a worker being alive, whatever the broker's visibility
        timeout."""
        while not self.stop.is_set():
            try:
                self.store.heartbeat(self.queue.name, self.id, self.capabilities)
                self.store.renew_leases()
                for kind, record_id in self.store.orphans(self.queue.name):
                    log.warning("%s %s lost its worker; queueing it again", kind, record_id)
                    self.queue.send(TASK_SCORE if kind == "score" else TASK_REFERENCE, record_id)
            except Exception as e:  # Redis away for a moment, or a lease lost to a lapse: keep going
                log.warning("heartbeat: %s", e)
            self.stop.wait(min(self.heartbeat_s, self.lease_s / 3))

    def sweep(self) -> None:
        """In a thread of its own (an object store that is away can take seconds to say so, and must not
        hold up the heartbeat): every heartbeat, the staged copies of ended records that could not be
        removed when they ended (app/cleanup.py); every ``SWEEP_HEARTBEATS`` heartbeats, this worker's
        local copies of ended records (a sharded job's inputs on machines other than the one that ended it)."""
        local = time.monotonic()
        while not self.stop.wait(self.heartbeat_s):
            try:
                self.cleanup.retry()
                if time.monotonic() - local > SWEEP_HEARTBEATS * self.heartbeat_s:
                    local = time.monotonic()
                    self.staging.sweep(self.over)
            except Exception as e:  # Redis away for a moment: next time
                log.warning("sweep: %s", e)

    def over(self, record_id: str, mtime: float) -> bool:
        """Whether this worker's staging copy of a record can go: the record ended, or it is gone and the
        copy is older than an hour (never a folder the API of this machine is still filling)."""
        st = self.store.get(record_id)
        return st.record.state in FINAL_STATES if st is not None else time.time() - mtime > 3600


_lock = threading.Lock()
_current: tuple[int, Worker] | None = None


def current() -> Worker:
    """This process's Worker, started (parts built, heartbeat running) on first use in each process."""
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            settings = get_settings()
            worker = Worker(services=build(settings, worker=True),
                            id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                            limits=JobLimits(settings.max_attempts, settings.soft_time_limit_s),
                            heartbeat_s=settings.heartbeat_s, lease_s=settings.lease_s, stop=threading.Event(),
                            capabilities=capabilities())
            threading.Thread(target=worker.beat, name="trustfid-heartbeat", daemon=True).start()
            threading.Thread(target=worker.sweep, name="trustfid-sweep", daemon=True).start()
            _current = (os.getpid(), worker)
        return _current[1]


def capabilities() -> tuple[str, ...]:
    """The optional metrics this worker can compute: ``frd`` when pyradiomics and its parts import."""
    from trustfid.radiomics import missing

    why = missing()
    if why:
        log.info("this worker cannot compute the FRD: %s", why)
    return () if why else ("frd",)


def shutdown() -> None:
    """Stop the heartbeat and take this worker off the list of live ones."""
    if _current is not None and _current[0] == os.getpid():
        worker = _current[1]
        worker.stop.set()
        try:
            worker.store.forget_worker(worker.queue.name, worker.id, worker.capabilities)
        except Exception:
            pass


def warm_up() -> None:
    """Load the network once per worker process, before the first job (the engine caches it)."""
    current()
    try:
        from trustfid.job import network
        from trustfid.schemas import ScoreOptions

        network(ScoreOptions(), get_settings())
    except Exception:  # a broken engine shows up as failed jobs with a reason, not as a dead worker
        log.exception("loading the network failed")
