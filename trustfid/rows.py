"""A bounded, deterministic sample of one set's plain feature rows (for KID, FID∞ and the bootstrap).

The Fréchet distance needs only each set's mean and covariance, which stream in fixed memory
(stats.py). KID, FID∞ and the bootstrap over images need the rows themselves. ``KeptRows`` keeps at
most ``cap`` of them, chosen per image by a seeded hash of the image's index in its set: the rows
with the ``cap`` smallest keys (bottom-k). The choice therefore depends only on (seed, index), never
on the batch size or on how a job is sharded, and two shards merge to exactly the rows the whole set
would have kept. While a set has no more than ``cap`` images every row is kept, in image order.

Memory: at most ``cap`` x d float32 (2048 rows x 2048 dims = 16 MiB per set at the default cap),
plus a buffer of one batch.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_keys(seed: int, index: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, index): a bijection of the index for a given seed, so keys never tie."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, np.uint64) * _GOLDEN + np.uint64(int(seed) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class KeptRows:
    """At most ``cap`` rows of a set, the ones with the smallest ``row_keys(seed, index)``."""

    def __init__(self, dim: int, cap: int, seed: int):
        self.dim, self.cap, self.seed = dim, int(cap), int(seed)
        self.seen = 0  # rows offered (the set's size, once every batch was added)
        self._index = np.zeros(0, np.int64)
        self._keys = np.zeros(0, np.uint64)
        self._rows = np.zeros((0, dim), np.float32)

    def add(self, rows: np.ndarray, first_index: int) -> None:
        rows = np.ascontiguousarray(rows, np.float32)
        index = np.arange(first_index, first_index + len(rows), dtype=np.int64)
        self.seen += len(rows)
        self._put(index, row_keys(self.seed, index), rows)

    def _put(self, index, keys, rows) -> None:
        self._index = np.concatenate([self._index, index])
        self._keys = np.concatenate([self._keys, keys])
        self._rows = np.concatenate([self._rows, rows]) if len(self._rows) else rows
        if len(self._index) > self.cap:
            keep = np.sort(np.argpartition(self._keys, self.cap - 1)[:self.cap]) if self.cap > 0 else []
            self._index, self._keys, self._rows = self._index[keep], self._keys[keep], self._rows[keep]

    def merge(self, other: KeptRows) -> KeptRows:
        """The rows the union of two disjoint shards keeps (their indices must be the set's)."""
        if (self.dim, self.seed) != (other.dim, other.seed):
            raise ValueError("kept rows of shards with different dimensions or seeds cannot be merged")
        out = KeptRows(self.dim, min(self.cap, other.cap), self.seed)
        out.seen = self.seen + other.seen
        out._put(self._index, self._keys, self._rows)
        out._put(other._index, other._keys, other._rows)
        return out

    @property
    def capped(self) -> bool:
        """True when some rows were left out."""
        return self.seen > len(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def index(self) -> np.ndarray:
        return self._index[np.argsort(self._index, kind="stable")]

    def rows(self) -> np.ndarray:
        """The kept rows in image order, float32 (k, d)."""
        return self._rows[np.argsort(self._index, kind="stable")]

    @classmethod
    def from_arrays(cls, rows: np.ndarray, index: np.ndarray, seen: int, cap: int, seed: int) -> KeptRows:
        out = cls(rows.shape[1], max(cap, len(rows)), seed)
        out._put(np.asarray(index, np.int64), row_keys(seed, index), np.asarray(rows, np.float32))
        out.seen = int(seen)
        return out
