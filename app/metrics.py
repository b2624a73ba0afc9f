"""/metrics in the Prometheus text format, from the counters app/store.py keeps in Redis (so every
API replica reports the same numbers)."""

from __future__ import annotations

from app.store import DURATION_BUCKETS, _le


def render(snap: dict, workers: int) -> str:
    out = [
        "# HELP trustfid_jobs Jobs and reference computations waiting or running, by kind and state.",
        "# TYPE trustfid_jobs gauge",
    ]
    for kind, states in snap["active"].items():
        for state, n in states.items():
            out.append(f'trustfid_jobs{{kind="{kind}",state="{state}"}} {n}')
    out += ["# HELP trustfid_jobs_finished_total Jobs and reference computations that ended, by kind and state.",
            "# TYPE trustfid_jobs_finished_total counter"]
    for kind, states in snap["finished"].items():
        for state in ("succeeded", "failed", "cancelled"):
            out.append(f'trustfid_jobs_finished_total{{kind="{kind}",state="{state}"}} {states.get(state, 0)}')
    out += ["# HELP trustfid_queue_depth Messages waiting in the Celery queue.",
            "# TYPE trustfid_queue_depth gauge", f"trustfid_queue_depth {snap['queue_depth']}",
            "# HELP trustfid_workers Workers with a live heartbeat.",
            "# TYPE trustfid_workers gauge", f"trustfid_workers {workers}",
            "# HELP trustfid_job_duration_seconds Wall time of succeeded scoring jobs.",
            "# TYPE trustfid_job_duration_seconds histogram"]
    d = snap["duration"]
    for b in DURATION_BUCKETS:
        out.append(f'trustfid_job_duration_seconds_bucket{{le="{_le(b)}"}} {int(d.get(_le(b), 0))}')
    out.append(f"trustfid_job_duration_seconds_sum {float(d.get('sum', 0.0))}")
    out.append(f"trustfid_job_duration_seconds_count {int(d.get('+Inf', 0))}")
    out += ["# HELP trustfid_images_scored_total Images scored by succeeded jobs (both sets).",
            "# TYPE trustfid_images_scored_total counter", f"trustfid_images_scored_total {snap['images']}"]
    return "\n".join(out) + "\n"
