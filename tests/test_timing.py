"""The job's clock (trustfid/timing.py): stages by set, a caller's clock for one engine call, the process's
start. The stages a real job fills: tests/test_pipeline.py."""

import time

from trustfid import timing


def test_stages_go_to_the_set_being_extracted_and_nowhere_outside_a_job():
    timing.current().add("network_s", 1.0, "")  # outside a job: kept nowhere
    with timing.recording() as clock:
        with clock.on_set("real"):
            timing.current().add("network_s", 0.5, "")
            timing.current().add("network_s", 0.25, "")
        timing.current().add("network_s", 9.0, "")  # no set being extracted: dropped
        timing.current().add("network_load_s", 2.0)
    assert clock.sets == {"real": {"network_s": 0.75}} and clock.job == {"network_load_s": 2.0}
    assert timing.active() is None


def test_a_callers_clock_serves_its_first_engine_call_and_counts_the_start_up():
    with timing.recording(timing.Clock(process_start=time.perf_counter() - 3.0)) as mine:
        timing.mark_entered()  # a PACS set is retrieved: the engine was entered then
        entered = mine.entered
        with timing.job_clock() as first:
            pass
        with timing.job_clock() as second:
            pass
    assert first is mine and second is not mine and mine.entered == entered
    assert mine.startup_s() >= 3.0 and second.startup_s() is None


def test_the_process_started_before_now():
    start = timing.process_start()
    assert start is not None and start < time.perf_counter()
