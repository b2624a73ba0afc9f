"""Progress a poller can trust: the engine reports each stage as it starts, and the worker's throttle
never drops a set's first or last event (a job used to show "real 24/24" for 14 s while the
generated set was being scored)."""

from __future__ import annotations

import time

import pytest

from trustfid import score
from trustfid.schemas import Progress

pytestmark = pytest.mark.engine


def test_the_engine_reports_every_stage_as_it_starts(image_sets):
    events: list[Progress] = []
    score(image_sets["real"], image_sets["generated"],
          {"passes": 2, "bootstrap_resamples": 3, "batch_size": 3, "device": "cpu"}, progress=events.append)
    stages = [(e.stage, e.set) for e in events]
    firsts = list(dict.fromkeys(stages))  # in order of first appearance
    assert firsts == [("extracting", "real"), ("extracting", "generated"), ("frechet", None), ("report", None),
                      ("done", None)]
    for side in ("real", "generated"):
        done = [e.images_done for e in events if e.set == side]
        assert done[0] == 0 and done[-1] == 4 and done == sorted(done)


def test_progress_moves_within_a_batch(image_sets):
    # One batch per set (4 images, batch 32): images_done can only jump from 0 to 4, so a dashboard's bar
    # follows fraction_done, which moves after the plain pass and each of the 3 MC passes.
    events: list[Progress] = []
    score(image_sets["real"], image_sets["generated"],
          {"passes": 3, "bootstrap_resamples": 0, "device": "cpu"}, progress=events.append)
    for side in ("real", "generated"):
        fractions = [e.fraction_done for e in events if e.set == side]
        assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
        within = [f for e, f in zip([e for e in events if e.set == side], fractions) if e.images_done == 0]
        assert sorted(set(within)) == pytest.approx([0, 0.25, 0.5, 0.75])
    assert all(e.fraction_done is None for e in events if e.stage not in ("extracting", "done"))
    assert events[-1].stage == "done" and events[-1].fraction_done == 1  # a finished job's bar is full


def test_a_new_set_and_a_sets_last_event_always_reach_the_record(redis_url, monkeypatch, tmp_path):
    monkeypatch.setenv("TRUSTFID_REDIS_URL", redis_url)
    monkeypatch.setenv("TRUSTFID_DATA_DIR", str(tmp_path))
    from app.settings import Settings
    from app.store import Store, Stored, connect, new_id
    from trustfid.records import InputInfo, JobOptions, JobRecord
    from worker.hooks import Hooks as _Callbacks

    settings = Settings()
    store = Store(connect(redis_url), settings)
    rec = JobRecord(id=new_id(), state="running", created_at=time.time(), real=InputInfo(kind="upload"),
                    generated=InputInfo(kind="upload"), options=JobOptions())
    store.create(Stored(owner="test", record=rec))
    cb = _Callbacks(store, rec.id, settings)

    def shown() -> Progress:
        return store.get(rec.id).record.progress

    def extracting(side, done):
        return Progress(stage="extracting", set=side, images_done=done, images_total=24, passes=2)

    cb.progress(extracting("real", 0))
    for done in (8, 16):  # within the throttle: not written
        cb.progress(extracting("real", done))
    assert shown().images_done == 0
    cb.progress(extracting("real", 24))  # a set's last event always goes through
    assert (shown().set, shown().images_done) == ("real", 24)
    cb.progress(extracting("generated", 0))  # a new set at once, however soon
    assert (shown().set, shown().images_done) == ("generated", 0)
    cb.progress(Progress(stage="frechet", passes=2))
    assert shown().stage == "frechet"
