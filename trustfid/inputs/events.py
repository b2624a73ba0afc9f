"""What every reader produces, one event per candidate: ``(name, image)`` for a decoded HxWx3 float32
image, or a :class:`Skip` naming a file that cannot be used and why. ImageSet (imageset.py) turns the
events into images and a skip list (or an error in strict mode)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np


class Skip(NamedTuple):
    """Emitted by the readers in place of an image that cannot be used."""

    name: str
    reason: str


class Unreadable(Exception):
    """A file cannot be used; the message is the reason shown to the user."""


Event = tuple[str, np.ndarray] | Skip


class Reader:
    """A listed source: ``label`` for messages, ``count`` candidates known before decoding, and
    ``events()``, which decodes them lazily in a deterministic order."""

    label: str
    count: int

    def events(self) -> Iterator[Event]:  # pragma: no cover - interface
        raise NotImplementedError
