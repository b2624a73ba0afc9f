"""What every reader produces, one event per candidate: ``(name, image)`` for a decoded HxWx3 float32
image, or a :class:`Skip` naming a file that cannot be used and why. ImageSet (imageset.py) turns the
events into images and a skip list (or an error in strict mode)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np


class Skip(NamedTuple):
    """Emitted by the readers in place of an image that cannot be used."""

    name: str
    reason: str


class Unreadable(Exception):
    """A file cannot be used; the message is the reason shown to the user."""


Event = tuple[str, np.ndarray] | Skip


Unit = Callable[[], Iterator[Event]]


def skipped(name: str, reason: str) -> Unit:
    """A unit that yields one Skip."""
    return lambda: iter((Skip(name, reason),))


class Reader:
    """A listed source: ``label`` for messages, ``count`` candidates known before decoding, and
    ``units()``: one zero-argument function per entry, in a deterministic order, each decoding its
    entry when called (one image, a DICOM file's frames, or a Skip). ``events()`` calls them in
    order; the parallel loader (loader.py) calls unit u in process u mod N, the same order rebuilt.
    A unit must be called before the next one is asked for (archives read from an open file).

    ``select(start, stop)`` narrows it to candidates start..stop-1, one shard of the set: the readers of
    arrays and single files keep rows ``first`` .. ``first + count - 1`` of ``total``; the listing
    readers (folders, archives) filter their listing with ``select_listed``."""

    label: str
    count: int
    first: int = 0  # index of the first candidate read (select)
    total: int | None = None  # candidates of the whole source, once select narrowed it
    passed_over: tuple[str, ...] = ()  # files the listing found that are not images, for messages

    def peek(self) -> Iterator[tuple[str, bytes | None, str | None]]:
        """``(name, first bytes, skip reason)`` of each listed entry in order, without decoding: the
        first bytes (rules.HEAD_BYTES) of a candidate, None where there is nothing to sniff (an array's
        rows); a reason for an entry the listing already skips. ImageSet.check_usable reads it."""
        for i in self.rows():
            yield f"row {i}", None, None

    def units(self) -> Iterator[Unit]:  # pragma: no cover - interface
        raise NotImplementedError

    def events(self) -> Iterator[Event]:
        for unit in self.units():
            yield from unit()

    def select(self, start: int, stop: int) -> None:
        self.total = self.count if self.total is None else self.total
        self.first, self.count = start, stop - start

    def rows(self) -> range:
        """The row indices this reader yields (arrays)."""
        return range(self.first, self.first + self.count)


def select_listed(entries: list[tuple], start: int, stop: int) -> list[tuple]:
    """The listing entries ``(name, where, skip reason)`` of candidates start..stop-1. An entry whose
    ``where`` is None is skip-listed, not a candidate: it goes with the shard of the candidate after it
    (those after the last candidate with the last shard), so the shards' skip lists, concatenated in
    shard order, are the whole set's."""
    count = sum(1 for e in entries if e[1] is not None)
    out, i = [], 0
    for entry in entries:
        if entry[1] is None:
            if start <= i < stop or (i >= count and stop >= count):
                out.append(entry)
            continue
        if start <= i < stop:
            out.append(entry)
        i += 1
    return out
