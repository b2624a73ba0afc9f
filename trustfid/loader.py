"""Decode and resize a set in N worker processes while the network runs, in the order and with the
results of one process.

The set's reader lists its entries as units (inputs/events.py); process k of N opens the same source,
walks the same listing and decodes and resizes the units u with u mod N = k, one image at a time
(``preprocess.to_model_input``: an image's network input does not depend on its batch), and computes
its radiomic features when the job asks for the FRD (decode_worker.py: what a process runs). The main
process takes unit 0 from process 0, unit 1 from process 1, ... so the images arrive in the set's
order, and holds them to the set's rules (skips, strict mode, the image limit) exactly as the
single-process path does. Each process has a queue of at most ``DEPTH`` units: memory stays bounded
however far the decoders run ahead of the network.

Used for sets given as a path (folder, archive, array file), or one shard of such a set. An
in-memory array, a process that may not start children (a daemonic one, e.g. Celery's prefork pool)
or ``decode_workers`` 0 keep the one prefetch thread (``prefetched``, at the end of this module).
Processes are started with ``spawn`` (never ``fork``: the parent may hold CUDA and threads), once per
worker process: they serve every later set, and stop a set's units as soon as it is done, cancelled
or fails (its items still queued are dropped)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .decode_worker import FrdLimits, prepare, serve
from .errors import TrustfidError
from .inputs import SetShard

if TYPE_CHECKING:
    import torch

DEPTH = 8  # units queued per process
# The first set decoded in processes waits for them to start (seconds: spawn imports torch); a smaller
# set keeps the thread unless the setting asks for processes. Measured in bench/gpu_bench.py (g5).
MIN_IMAGES = 256


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(setting: int | None, device: torch.device | str, source, candidates: int,
                 radiomics: bool = False) -> int:
    """Decode processes for a set: the setting when given; else the available cores but one on a GPU
    job with at least MIN_IMAGES candidates, and none (the prefetch thread) on a CPU job, whose network
    already uses every core. Radiomics (FRD, about 0.3 s of CPU per image) always run in processes: every
    core on a CPU job, all but one on a GPU job. One pool of processes per number serves every set.
    ``device``: the job's (a job without the network has the string "cpu")."""
    path = source.source if isinstance(source, SetShard) else source
    if not isinstance(path, (str, os.PathLike)) or multiprocessing.current_process().daemon or not candidates:
        return 0
    if setting is not None:
        return setting
    gpu = str(device).startswith("cuda")
    if radiomics:
        return max(1, available_cores() - (1 if gpu else 0))
    return max(1, available_cores() - 1) if gpu and candidates >= MIN_IMAGES else 0


class _Pool:
    """N decode processes, started once and kept for every later set of this process (a spawned process
    takes seconds to start: paying that per set would cost a GPU job more than the decoding)."""

    def __init__(self, n: int):
        ctx = multiprocessing.get_context("spawn")
        self.n, self.pid = n, os.getpid()
        self.current = ctx.Value("q", 0)  # the generation (set) being decoded; others are abandoned
        self.tasks = [ctx.Queue() for _ in range(n)]
        self.outs = [ctx.Queue(maxsize=DEPTH) for _ in range(n)]
        self.procs = [ctx.Process(target=serve, args=(k, n, self.current, self.tasks[k], self.outs[k]),
                                  daemon=True, name=f"trustfid-decode-{k}") for k in range(n)]
        with _main_script_hidden():
            for p in self.procs:
                p.start()

    def usable(self) -> bool:
        return self.pid == os.getpid() and all(p.is_alive() for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.join(timeout=10)


@contextlib.contextmanager
def _main_script_hidden():
    """Start spawned processes without running the caller's script in them. ``spawn`` imports the main
    script in every child, so a script that calls ``score()`` at its top level (no ``if __name__ ==
    "__main__":`` guard, the usual notebook-turned-script) would score again in each child and fail.
    Our children run ``decode_worker.serve`` and need nothing from the script: hide its path while they
    start."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None and "__file__" in saved:
            del main.__file__
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


_POOLS: dict[int, _Pool] = {}


def pool(n: int) -> _Pool:
    """This process's pool of ``n`` decode processes (made on first use; again if one died)."""
    p = _POOLS.get(n)
    if p is None or not p.usable():
        if p is not None:
            p.stop()
        p = _POOLS[n] = _Pool(n)
    return p


def _rebuilt(payload) -> BaseException:
    cls, state, text = payload
    if issubclass(cls, TrustfidError):
        e = cls.__new__(cls)
        Exception.__init__(e, state.get("message", text))
        e.__dict__.update(state)
        return e
    return RuntimeError(f"image decoding process failed: {cls.__name__}: {text}")


class ParallelLoader:
    """Network-input batches ``(names, x)`` of one set, decoded in ``workers`` processes (module
    docstring). ``images`` is the set as opened in this process: its listing checks have run, and it
    applies the set's rules and keeps ``skipped``, ``used`` and ``intensity`` as a plain pass would."""

    def __init__(self, images, source, open_kwargs: dict, workers: int, step: int, prep: tuple | None,
                 frd: FrdLimits | None = None):
        self.images, self.step, self.n = images, step, workers
        self.pool = pool(workers)
        with self.pool.current.get_lock():
            self.pool.current.value += 1
            self.generation = self.pool.current.value
        if not isinstance(source, SetShard):
            source = str(source)  # a path; a shard (a path and its candidates) travels as it is
        for q in self.pool.tasks:
            q.put((self.generation, source, open_kwargs, prep, frd))
        self.tally: Counter = Counter()
        self.seconds: dict[str, float] = {}  # the processes' own seconds, summed (decode_worker.work)

    def _get(self, k: int):
        """The next item of process k for this set (items of abandoned sets are dropped)."""
        while True:
            try:
                generation, kind, payload = self.pool.outs[k].get(timeout=1.0)
            except queue.Empty:
                if not self.pool.procs[k].is_alive():
                    raise RuntimeError(f"image decoding process {k} exited (code {self.pool.procs[k].exitcode}) "
                                       "before finishing its images") from None
                continue
            if generation == self.generation:
                return kind, payload

    def _events(self) -> Iterator:
        u = 0
        while True:
            kind, payload = self._get(u % self.n)
            if kind == "error":
                raise _rebuilt(payload)
            if kind == "end":
                self._ended(payload)
                break
            yield from payload
            u += 1
        for k in range(self.n):  # the others' tallies (each has sent all its units by now)
            if k != u % self.n:
                kind, payload = self._get(k)
                if kind == "error":
                    raise _rebuilt(payload)
                self._ended(payload)

    def _ended(self, payload) -> None:
        """A process's end of the set: its intensity tally and its seconds (timing.DECODER_STAGES)."""
        tally, seconds = payload
        self.tally.update(tally)
        for stage, s in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + s

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor | None, list | None]]:
        try:
            for batch in batched(self.images.images_of(self._events()), self.step):
                yield stacked(batch)
            self.images.count_intensity(self.tally)  # the whole set's intensity mappings
        finally:
            self.close()

    def close(self) -> None:
        """Abandon this set: the processes stop its units and wait for the next set."""
        with self.pool.current.get_lock():
            if self.pool.current.value == self.generation:
                self.pool.current.value += 1


def stacked(batch: list[tuple]) -> tuple[list[str], torch.Tensor | None, list | None]:
    """``prepare``'s items of one batch as (names, network inputs (n, 3, H, W) or None, features or None)."""
    names = [item[0] for item in batch]
    x = None
    if batch[0][1] is not None:  # the FID network's input: torch is loaded already
        import torch

        x = torch.from_numpy(np.stack([item[1] for item in batch]))
    return names, x, [item[2] for item in batch] if batch[0][2] is not None else None


def prepared_here(images, step: int, prep: tuple | None, frd: FrdLimits | None,
                  seconds: dict[str, float] | None = None) -> Iterator:
    """``stacked`` batches of a set decoded in this process (the prefetch thread's work). ``seconds`` gets
    the time spent decoding and resizing (``decode_s``) and in the radiomics (``radiomics_s``)."""
    seconds = {} if seconds is None else seconds
    seconds.update(decode_s=0.0, decoder_listing_s=0.0, radiomics_s=0.0)

    def items():
        it = iter(images)
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            if item is None:
                seconds["decode_s"] += time.perf_counter() - t0
                return
            radiomics = seconds["radiomics_s"]
            out = prepare(*item, images.take_stored(), prep, frd, seconds)
            seconds["decode_s"] += time.perf_counter() - t0 - (seconds["radiomics_s"] - radiomics)
            yield out

    for batch in batched(items(), step):
        yield stacked(batch)


# --- in this process: batches, decoded ahead in a thread --------------------------------------

def batched(images, batch_size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Consecutive lists of ``batch_size`` items (the last one shorter)."""
    batch = []
    for item in images:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetched(iterator: Iterator, depth: int = 2) -> Iterator:
    """Decode and resize the next batches in a thread while the network runs (torch releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
