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
    A unit must be called before the next one is asked for (archives read from an open file)."""

    label: str
    count: int

    def units(self) -> Iterator[Unit]:  # pragma: no cover - interface
        raise NotImplementedError

    def events(self) -> Iterator[Event]:
        for unit in self.units():
            yield from unit()
