"""Where a job's time goes: the stages of ``schemas.Timing`` (schema 1.9), measured as the job runs.

One ``Clock`` per job. The engine finds the job's clock through a context variable (``current``), so the
stages deep inside (the network's passes in mc.py, the domain probe's hooks in domain.py, each metric in
plugins.py) add their seconds without a clock in every signature; outside a job ``current()`` is a clock that
keeps nothing. A caller may open the clock itself (``recording``) to say when its process started: the
command line does, so that the report's ``startup_s`` counts the interpreter and the imports.

Stages are wall-clock seconds of the process that runs the job, except those named as summed over the
decoders (the prefetch thread or the decode processes), which run beside the network and overlap it.
Importing this module imports nothing heavy (the command line imports it before parsing its arguments).
"""

from __future__ import annotations

import contextlib
import os
import time
from contextvars import ContextVar

# The per-set stages (schemas.SetTiming's fields, in its order).
SET_STAGES = ("listing_s", "decode_wait_s", "network_s", "mc_s", "probe_s", "collect_s", "decode_s",
              "decoder_listing_s", "radiomics_s")
# Per-set stages that only decoders measure: null in the report when no decoder ran for the set.
DECODER_STAGES = ("decode_s", "decoder_listing_s", "radiomics_s")


class Clock:
    """Seconds per stage of one job: ``job`` (job-wide stages), ``sets`` (per set), ``metrics`` (each
    metric's section). ``process_start``: ``time.perf_counter()``'s reading at the process's start, when the
    caller knows it (``process_start()``); ``entered``: when the engine was called."""

    def __init__(self, process_start: float | None = None, *, keep: bool = True):
        self.process_start = process_start
        self.entered: float | None = None
        self.keep = keep
        self.job: dict[str, float] = {}
        self.sets: dict[str, dict[str, float]] = {}
        self.metrics: dict[str, float] = {}
        self.set_name: str | None = None  # the set being extracted (``on_set``)
        self.used = False  # an engine call took it (``job_clock``): a clock serves one call

    def add(self, stage: str, seconds: float, set_name: str | None = None) -> None:
        """Add ``seconds`` to a job-wide stage, or to a set's (``set_name``; "" means the set being extracted)."""
        if not self.keep:
            return
        if set_name == "":
            set_name = self.set_name
            if set_name is None:
                return
        where = self.job if set_name is None else self.sets.setdefault(set_name, {})
        where[stage] = where.get(stage, 0.0) + seconds

    def get(self, stage: str, set_name: str | None = None) -> float:
        where = self.job if set_name is None else self.sets.get(set_name, {})
        return where.get(stage, 0.0)

    @contextlib.contextmanager
    def stage(self, stage: str, set_name: str | None = None):
        """Time the block into ``stage`` (job-wide, or a set's as in ``add``)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0, set_name)

    @contextlib.contextmanager
    def metric(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.keep:
                self.metrics[name] = self.metrics.get(name, 0.0) + time.perf_counter() - t0

    @contextlib.contextmanager
    def on_set(self, set_name: str):
        """Stages added with ``set_name=""`` inside go to ``set_name`` (the network's, the probe's)."""
        before, self.set_name = self.set_name, set_name
        try:
            yield
        finally:
            self.set_name = before

    def startup_s(self) -> float | None:
        if self.process_start is None or self.entered is None:
            return None
        return max(0.0, self.entered - self.process_start)


_NOWHERE = Clock(keep=False)
_current: ContextVar[Clock | None] = ContextVar("trustfid_clock", default=None)


def current() -> Clock:
    """The running job's clock; outside a job one that keeps nothing."""
    return _current.get() or _NOWHERE


def active() -> Clock | None:
    return _current.get()


@contextlib.contextmanager
def recording(clock: Clock | None = None):
    """Make ``clock`` (a new one when None) the current one for the block; yields it. An engine call made
    inside uses it, and marks when it was entered."""
    clock = clock or Clock()
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)


def mark_entered() -> None:
    """The engine was called (before its entry point's own work: a PACS set's retrieval), for ``startup_s``."""
    clock = active()
    if clock is not None and not clock.used and clock.entered is None:
        clock.entered = time.perf_counter()


@contextlib.contextmanager
def job_clock():
    """The engine's entry points: the clock a caller opened (``recording``) for its first call, else a new one."""
    clock = active()
    if clock is not None and not clock.used:
        clock.used = True
        mark_entered()
        yield clock
        return
    with recording(Clock()) as clock:
        clock.used, clock.entered = True, time.perf_counter()
        yield clock


def process_start() -> float | None:
    """This process's start on ``time.perf_counter()``'s scale, from the kernel's record of it
    (/proc/self/stat's start time, in clock ticks since boot); None where there is no /proc."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22: starttime (fields after the name)
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.perf_counter() - max(0.0, age)
