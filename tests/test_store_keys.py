"""Redis key names are part of the stored data: records, reports and indexes already in Redis are found by
them, so a name once used never changes (app/store/keys.py)."""

from __future__ import annotations

import app.store.keys as keys


def test_every_key_name_is_the_one_already_in_redis():
    names = {
        keys.record("r1"): "trustfid:rec:r1",
        keys.progress("r1"): "trustfid:progress:r1",
        keys.report("j1"): "trustfid:report:j1",
        keys.cancel("r1"): "trustfid:cancel:r1",
        keys.index("score", "o"): "trustfid:idx:score:o",
        keys.tag("o", "run=a"): "trustfid:tag:o:run=a",
        keys.series("o", "run=a"): "trustfid:series:o:run=a",
        keys.state("score", "running"): "trustfid:state:score:running",
        keys.rate("o"): "trustfid:rate:o",
        keys.workers("q"): "trustfid:workers:q",
        keys.workers_with("q", "frd"): "trustfid:workers:q:frd",
        keys.lease("j1:real:0"): "trustfid:lease:j1:real:0",
        keys.requeued("r1"): "trustfid:requeued:r1",
        keys.shards("j1"): "trustfid:shards:j1",
        keys.cleanup("q"): "trustfid:cleanup:q",
        keys.finished("score"): "trustfid:metrics:finished:score",
        keys.duration("score", "succeeded"): "trustfid:metrics:duration:score:succeeded",
        keys.queue_wait("score"): "trustfid:metrics:queue_wait:score",
        keys.images("score"): "trustfid:metrics:images:score",
    }
    assert {got: want for got, want in names.items() if got != want} == {}
    builders = {n for n, f in vars(keys).items() if callable(f) and getattr(f, "__module__", "") == keys.__name__}
    assert len(builders) == len(names), "a new key builder: add its name here"
