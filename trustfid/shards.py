"""Sharded extraction: one set split into shards of consecutive candidates, each extracted on its own
(by another process, another GPU or another machine) and merged, in shard order, into the statistics
one pass over the whole set gives.

    plan(count, size)                    -> [(start, stop), ...]
    extract_shard(source, ..., start, stop) -> SetStats of candidates start..stop-1 (first_index=start)
    merge_set(source, ..., parts)        -> SetStats of the whole set, from the shards' SetStats

Why the merge is exact: the dropout masks of ``shared`` mode depend only on (seed, pass); those of
``per_image`` mode and the choice of the capped feature rows (rows.py) depend on the image's index in
its set, which each shard is given as ``first_index``; the streaming moments, the per-image arrays,
the kept rows and the thumbnails all merge in order (stats.SetStats.merge). The index a shard is given
is its first *candidate*'s; when a file is skipped (unreadable) or one file holds several images
(multi-frame DICOM), the images after it have another index in the whole set. ``merge_set`` finds
that from the shards' image counts and extracts the shards it concerns again with the right index
when the numbers depend on it (per-image masks, capped rows, or overlapping indices), so the result is
still the unsharded one.

The service (worker/) runs the shards as Celery tasks and merges them in a chord callback, fetching
the shards' statistics before it calls ``merge_set``; this module is the engine's part and needs no
service.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .inputs import SetShard
from .job import Job
from .pipeline import CancelFn, ProgressFn, extract, open_set, require_images
from .schemas import ScoreOptions
from .settings import EngineSettings
from .stats import SetStats


def plan(count: int, size: int) -> list[tuple[int, int]]:
    """Shards of ``size`` consecutive candidates covering ``count`` (at least one shard, maybe empty)."""
    if size < 1:
        raise ValueError("shard size must be >= 1")
    return [(a, min(a + size, count)) for a in range(0, count, size)] or [(0, 0)]


def count_candidates(source, set_name: str, options: ScoreOptions, settings: EngineSettings | None = None) -> int:
    """The number of candidate images of a source, from its listing (nothing is decoded). The limits
    on the listing (image count, archive members and sizes) and the check that the set may hold
    enough images apply here as in ``pipeline.extract``."""
    return len(open_set(source, set_name, options, settings))


def extract_shard(source, set_name: str, job: Job, start: int, stop: int, *, work=None,
                  first_index: int | None = None, progress: ProgressFn | None = None,
                  should_cancel: CancelFn | None = None) -> SetStats:
    """Statistics of candidates start..stop-1 of a set (may hold fewer than 2 images, even none), for
    ``work`` (default: the job's)."""
    return extract(SetShard(source, start, stop), set_name, job, work=work, progress=progress,
                   should_cancel=should_cancel, first_index=start if first_index is None else first_index,
                   min_images=0)


def merge_set(source, set_name: str, job: Job, shards: list[tuple[int, int]],
              parts: Iterable[SetStats], *, work=None, should_cancel: CancelFn | None = None) -> SetStats:
    """The whole set's statistics from its shards' (``parts``: shard k's statistics, extracted with
    ``first_index`` = its start, in shard order), merged in that order; given as an iterator, one shard
    is in memory besides the sum. A shard
    whose images have other indices in the whole set (files skipped or multi-frame before it) is
    extracted again here when that changes the numbers: overlapping indices always, a gap for per-image
    masks or when the set may be capped (more candidates than ``max_feature_rows``). ``work``: what the
    shards computed (default: the job's)."""
    options = job.options
    index_matters = options.mask_mode == "per_image" or shards[-1][1] > options.max_feature_rows
    merged, before = None, 0
    for (start, stop), part in zip(shards, parts, strict=True):
        if start < before or (start > before and index_matters):
            part = extract_shard(source, set_name, job, start, stop, work=work, first_index=before,
                                 should_cancel=should_cancel)
        before += part.n
        merged = part if merged is None else merged.merge(part)
    require_images(set_name, merged.n, merged.skipped, label=str(source))
    merged.top_thumbnails(options.thumbnails)
    merged.source = str(source) if isinstance(source, (str, Path)) else type(source).__name__
    return merged
