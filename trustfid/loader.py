"""Decode and resize a set in N worker processes while the network runs, in the order and with the
results of one process.

The set's reader lists its entries as units (inputs/events.py); process k of N opens the same source,
walks the same listing and decodes and resizes the units u with u mod N = k, one image at a time
(``preprocess.to_model_input``: an image's network input does not depend on its batch). The main
process takes unit 0 from process 0, unit 1 from process 1, ... so the images arrive in the set's
order, and holds them to the set's rules (skips, strict mode, the image limit) exactly as the
single-process path does. Each process has a queue of at most ``DEPTH`` units: memory stays bounded
however far the decoders run ahead of the network.

Used for sets given as a path (folder, archive, array file), or one shard of such a set. An in-memory array, a process that may
not start children (a daemonic one, e.g. Celery's prefork pool) or ``decode_workers`` 0 keep the one
prefetch thread of pipeline.py. Processes are started with ``spawn`` (never ``fork``: the parent may
hold CUDA and threads) and stopped when the set is done, cancelled or fails.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch

from .errors import TrustfidError
from .inputs import SetShard, open_images
from .inputs.events import Skip
from .preprocess import to_model_input

DEPTH = 8  # units queued per process
# A process costs seconds to start (spawn imports torch): below this many images each, the one
# thread is as fast. Measured in bench/gpu_bench.py (g5).
MIN_PER_PROCESS = 64


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(setting: int | None, device: torch.device, source, candidates: int) -> int:
    """Decode processes for a set: the setting when given; else the available cores but one on a GPU
    job and none (the prefetch thread) on a CPU job, whose network already uses every core. Never more
    than one per MIN_PER_PROCESS images unless the setting asks for them."""
    path = source.source if isinstance(source, SetShard) else source
    if not isinstance(path, (str, os.PathLike)) or multiprocessing.current_process().daemon:
        return 0
    if setting is not None:
        return max(0, min(setting, candidates))
    n = max(1, available_cores() - 1) if device.type == "cuda" else 0
    return min(n, candidates // MIN_PER_PROCESS)


def _work(k: int, n: int, source, open_kwargs: dict, prep: tuple, out) -> None:
    """Process k: decode and resize units k, k + n, k + 2n, ... of the set; then report the intensity
    tally. A limit or input error is sent back to be raised in the job; anything else is a bug, sent
    back too with its type and message."""
    torch.set_num_threads(1)
    try:
        images = open_images(source, **open_kwargs)
        for u, unit in enumerate(images._reader.units()):
            if u % n != k:
                continue
            events = []
            for event in unit():
                if isinstance(event, Skip):
                    events.append(event)
                else:
                    name, image = event
                    events.append((name, to_model_input([image], *prep)[0].numpy()))
            out.put(("unit", events))
        out.put(("end", dict(images._decoding.used)))
    except BaseException as e:  # sent to the job, which raises it
        out.put(("error", (type(e), e.__dict__, str(e))))


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

    def __init__(self, images, source, open_kwargs: dict, workers: int, step: int,
                 mode: str, size: tuple[int, int], input_range: tuple[float, float]):
        self.images, self.step, self.n = images, step, workers
        ctx = multiprocessing.get_context("spawn")
        self.queues = [ctx.Queue(maxsize=DEPTH) for _ in range(workers)]
        prep = (mode, tuple(size), tuple(input_range))
        if not isinstance(source, SetShard):
            source = str(source)  # a path; a shard (a path and its candidates) travels as it is
        self.procs = [ctx.Process(target=_work, args=(k, workers, source, open_kwargs, prep, self.queues[k]),
                                  daemon=True, name=f"trustfid-decode-{k}") for k in range(workers)]
        for p in self.procs:
            p.start()
        self.tally: Counter = Counter()

    def _get(self, k: int):
        while True:
            try:
                return self.queues[k].get(timeout=1.0)
            except queue.Empty:
                if not self.procs[k].is_alive():
                    raise RuntimeError(f"image decoding process {k} exited (code {self.procs[k].exitcode}) "
                                       "before finishing its images") from None

    def _events(self) -> Iterator:
        u = 0
        while True:
            kind, payload = self._get(u % self.n)
            if kind == "error":
                raise _rebuilt(payload)
            if kind == "end":
                self.tally.update(payload)
                break
            yield from payload
            u += 1
        for k in range(self.n):  # the others' tallies (each has sent all its units by now)
            if k != u % self.n:
                kind, payload = self._get(k)
                if kind == "error":
                    raise _rebuilt(payload)
                self.tally.update(payload)

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        try:
            batch: list = []
            for item in self.images.images_of(self._events()):
                batch.append(item)
                if len(batch) == self.step:
                    yield self._stack(batch)
                    batch = []
            if batch:
                yield self._stack(batch)
            self.images._decoding.used.update(self.tally)  # the whole set's intensity mappings
        finally:
            self.close()

    @staticmethod
    def _stack(batch) -> tuple[list[str], torch.Tensor]:
        return [n for n, _ in batch], torch.from_numpy(np.stack([x for _, x in batch]))

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=10)
        for q in self.queues:
            q.cancel_join_thread()
            q.close()
