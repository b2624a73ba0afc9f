"""/metrics in the Prometheus text format, through prometheus_client: a custom collector turns the
counters app/store/counters.py keeps in Redis (so every API replica reports the same numbers) into metric
families at each scrape, beside ``trustfid_build_info``."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from app.store import Store
from app.store.counters import DURATION_BUCKETS, bucket_label


def _histogram(family: HistogramMetricFamily, labels: list[str], stored: dict) -> None:
    buckets = [(bucket_label(b), float(stored.get(bucket_label(b), 0))) for b in DURATION_BUCKETS]
    family.add_metric(labels, buckets, float(stored.get("sum", 0.0)))


class StoreCollector:
    """Reads one snapshot of the store per scrape."""

    def __init__(self, store: Store, queue: str):
        self.store, self.queue = store, queue

    def collect(self):
        from trustfid import __version__

        snap = self.store.metrics_snapshot(self.queue)
        info = GaugeMetricFamily("trustfid_build_info", "trustfid version and Python of this API process",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        jobs = GaugeMetricFamily("trustfid_jobs", "Jobs and reference computations waiting or running, by kind "
                                 "and state.", labels=["kind", "state"])
        finished = CounterMetricFamily("trustfid_jobs_finished", "Jobs and reference computations that ended, "
                                       "by kind and state.", labels=["kind", "state"])
        duration = HistogramMetricFamily("trustfid_job_duration_seconds", "Wall time from start to end of jobs "
                                         "and reference computations, by kind and final state.",
                                         labels=["kind", "state"])
        wait = HistogramMetricFamily("trustfid_queue_wait_seconds", "Time from submission to the first start, "
                                     "by kind.", labels=["kind"])
        images = CounterMetricFamily("trustfid_images_scored", "Images scored by succeeded jobs and references "
                                     "(both sets of a job).", labels=["kind"])
        for kind, states in snap["active"].items():
            for state, n in states.items():
                jobs.add_metric([kind, state], n)
            for state in ("succeeded", "failed", "cancelled"):
                finished.add_metric([kind, state], snap["finished"][kind].get(state, 0))
                _histogram(duration, [kind, state], snap["duration"][kind][state])
            _histogram(wait, [kind], snap["queue_wait"][kind])
            images.add_metric([kind], snap["images"][kind])
        yield from (jobs, finished, duration, wait, images)
        yield GaugeMetricFamily("trustfid_queue_depth", "Messages waiting in the Celery queue.",
                                value=snap["queue_depth"])
        yield GaugeMetricFamily("trustfid_workers", "Workers with a live heartbeat.", value=snap["workers"])
        yield GaugeMetricFamily("trustfid_cleanup_pending", "Ended or deleted records whose staged copies are not "
                                "removed yet (the object store was away; workers try again every heartbeat).",
                                value=snap["cleanup_pending"])


def render(store: Store, queue: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, queue))
    return generate_latest(registry)
