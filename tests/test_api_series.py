"""GET /v1/series: FID over training steps, ordered by the step= tag, paged with a cursor, filtered by
`since`; and the Grafana dashboard in docs/ that charts it."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.support import ROOT
from tests.support.images import pngs
from tests.support.presets import FAST_OPTIONS
from tests.support.service import KEY_A, KEY_B, upload
from trustfid.client import Client
from trustfid.records import Series, SeriesPoint

RUN = f"run=series-{uuid.uuid4().hex[:8]}"  # the shared stack's other tests cannot see this run, nor it theirs


@pytest.fixture(scope="module")
def run_jobs(stack, image_sets):
    """Jobs of one run submitted out of step order (30, 10, 20, 20), one without a step, one of another
    run, one cancelled; returns {label: finished record}."""
    specs = [("s30", [RUN, "step=30"]), ("s10", [RUN, "step=10"]), ("s20a", [RUN, "step=20"]),
             ("s20b", [RUN, "step=20"]), ("nostep", [RUN]), ("other", [f"{RUN}-other", "step=1"])]
    ids = {}
    with stack.client() as c:
        for label, tags in specs:
            r = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]),
                       {**FAST_OPTIONS, "prdc_k": 2, "tags": tags})  # k < 4 images: precision, recall, ...
            assert r.status_code == 202, r.text
            ids[label] = r.json()["id"]
        r = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]),
                   {**FAST_OPTIONS, "tags": [RUN, "step=15"]})
        ids["cancelled"] = r.json()["id"]
        assert c.delete(f"/v1/jobs/{ids['cancelled']}").status_code == 202
    return {label: stack.wait_job(job_id) for label, job_id in ids.items()}


def get_series(stack, key=None, **params) -> Series:
    with stack.client(key) if key else stack.client() as c:
        r = c.get("/v1/series", params=params)
    assert r.status_code == 200, r.text
    return Series.model_validate(r.json())


def test_points_are_ordered_by_step_not_by_submission(stack, run_jobs):
    assert all(run_jobs[k]["state"] == "succeeded" for k in ("s30", "s10", "s20a", "s20b"))
    s = get_series(stack, tag=RUN)
    twenties = sorted([run_jobs["s20a"]["id"], run_jobs["s20b"]["id"]])
    assert [p.job_id for p in s.points] == [run_jobs["s10"]["id"], *twenties, run_jobs["s30"]["id"]]
    assert [p.step for p in s.points] == [10, 20, 20, 30] and isinstance(s.points[0].step, int)
    assert s.next_cursor is None
    with stack.client() as c:
        for p in s.points:
            rec = c.get(f"/v1/jobs/{p.job_id}").json()
            report = c.get(f"/v1/jobs/{p.job_id}/report").json()
            assert p.fid == rec["fid"] == report["fid"]
            assert [p.fid_ci95_low, p.fid_ci95_high] == report["fid_bootstrap"]["ci95"]
            assert p.trust_level == report["trust"]["level"] and p.fid_mc_std == report["fid_mc"]["std"]
            assert [p.precision, p.recall, p.density, p.coverage] == [
                report["prdc"][name]["value"] for name in ("precision", "recall", "density", "coverage")]
            assert p.created_at == rec["created_at"] and p.finished_at == rec["finished_at"]


def test_pages_split_equal_steps_without_repeating_or_skipping(stack, run_jobs):
    expected = [p.job_id for p in get_series(stack, tag=RUN).points]
    for limit in (1, 2, 3):
        seen, cursor, pages = [], None, 0
        while True:
            page = get_series(stack, tag=RUN, limit=limit, **({"cursor": cursor} if cursor else {}))
            pages += 1
            assert len(page.points) <= limit
            seen += [p.job_id for p in page.points]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected, limit
        assert pages == -(-len(expected) // limit)  # no empty last page


def test_a_page_boundary_holds_while_new_points_arrive(stack, run_jobs, image_sets):
    first = get_series(stack, tag=RUN, limit=2)  # steps 10, 20 (the smaller id)
    with stack.client() as c:  # a new point before the boundary, one after it
        early = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]),
                       {**FAST_OPTIONS, "tags": [RUN, "step=5"]}).json()["id"]
        late = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]),
                      {**FAST_OPTIONS, "tags": [RUN, "step=25.5"]}).json()["id"]
    stack.wait_job(early), stack.wait_job(late)
    rest = get_series(stack, tag=RUN, cursor=first.next_cursor)
    assert [p.step for p in rest.points] == [20, 25.5, 30]
    assert rest.points[0].job_id not in {p.job_id for p in first.points}
    assert get_series(stack, tag=RUN).points[0].job_id == early
    with stack.client() as c:  # a deleted job leaves the series
        assert c.delete(f"/v1/jobs/{early}").status_code == 204
        assert c.delete(f"/v1/jobs/{late}").status_code == 204
    assert [p.step for p in get_series(stack, tag=RUN).points] == [10, 20, 20, 30]


def test_since_keeps_jobs_finished_at_or_after_it(stack, run_jobs):
    points = get_series(stack, tag=RUN).points
    cut = sorted(p.finished_at for p in points)[2]
    later = get_series(stack, tag=RUN, since=cut).points
    assert {p.job_id for p in later} == {p.job_id for p in points if p.finished_at >= cut}
    assert len(later) == 2 and [p.step for p in later] == sorted(p.step for p in later)
    assert get_series(stack, tag=RUN, since=time.time() + 60).points == []


def test_the_series_reads_records_only_never_a_report(stack, run_jobs):
    """Every number of a point is in its job's record: with the reports gone from Redis, the series is
    the same, intervals included."""
    import redis

    from app.store import keys

    before = get_series(stack, tag=RUN)
    assert before.points and all(p.fid_ci95_low is not None and p.fid_ci95_high is not None for p in before.points)
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    saved = {p.job_id: (r.get(keys.report(p.job_id)), r.ttl(keys.report(p.job_id))) for p in before.points}
    assert all(raw for raw, _ in saved.values())
    try:
        r.delete(*[keys.report(job_id) for job_id in saved])
        assert get_series(stack, tag=RUN) == before
    finally:  # the module's other tests read them
        for job_id, (raw, ttl) in saved.items():
            r.set(keys.report(job_id), raw, ex=ttl if ttl > 0 else None)


def test_a_record_from_before_fid_ci95_takes_its_interval_from_its_report(stack, run_jobs):
    """A job that succeeded before records carried fid_ci95 (its JSON has no such key) still shows its
    interval, read from its report, as docs/API.md says."""
    import redis

    from app.store import keys

    before = get_series(stack, tag=RUN)
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    key = keys.record(before.points[0].job_id)
    raw, ttl = r.get(key), r.ttl(key)
    stored = json.loads(raw)
    assert stored["record"]["fid_ci95"] == [before.points[0].fid_ci95_low, before.points[0].fid_ci95_high]
    del stored["record"]["fid_ci95"]
    try:
        r.set(key, json.dumps(stored), ex=ttl)
        assert get_series(stack, tag=RUN) == before
    finally:
        r.set(key, raw, ex=ttl)


def test_series_is_private_and_bad_parameters_say_what_is_wrong(stack, run_jobs):
    assert get_series(stack, key=KEY_B, tag=RUN).points == []
    with stack.client() as c:
        for params, says in [({}, "tag"), ({"tag": RUN, "cursor": "not-a-cursor"}, "cursor"),
                             ({"tag": RUN, "limit": 0}, "limit"), ({"tag": RUN, "since": -1}, "since")]:
            r = c.get("/v1/series", params=params)
            assert r.status_code == 422 and says in r.json()["error"]["message"], r.text


# --- the Grafana dashboard -------------------------------------------------------------------------

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


def infinity_targets() -> list[dict]:
    doc = json.loads(DASHBOARD.read_text())
    targets = [t for panel in doc["panels"] for t in panel.get("targets", [])]
    assert targets and all(t["datasource"]["type"] == "yesoreyeram-infinity-datasource" for t in targets)
    return targets


def test_the_dashboard_queries_the_series_endpoint_as_documented():
    doc = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in doc["templating"]["list"]} >= {"datasource", "trustfid_url", "run"}
    fields = set(SeriesPoint.model_fields)
    for t in infinity_targets():
        assert t["type"] == "json" and t["source"] == "url" and t["url"] == "${trustfid_url}/v1/series"
        assert {"key": "tag", "value": "run=${run}"} in t["url_options"]["params"]
        assert t["root_selector"] == "points"
        assert {c["selector"] for c in t["columns"]} <= fields
        assert t["pagination_mode"] == "cursor" and t["pagination_param_cursor_field_name"] == "cursor"
        assert t["pagination_param_cursor_extraction_path"] == "next_cursor" in Series.model_fields
        assert t["pagination_param_size_field_name"] == "limit" and 1 <= t["pagination_param_size_value"] <= 1000
    assert "grafana-dashboard.json" in (ROOT / "docs" / "API.md").read_text()


def test_the_dashboard_queries_give_numbers_from_a_live_service(stack, run_jobs):
    """What the Infinity data source does with each query, against the running API: the URL with the
    variables filled in, pages followed through next_cursor, rows from `points`, one value per column."""
    variables = {"${trustfid_url}": stack.url, "${run}": RUN.split("=", 1)[1]}
    for t in infinity_targets():
        url = t["url"]
        params = {p["key"]: p["value"] for p in t["url_options"]["params"]}
        for name, value in variables.items():
            url = url.replace(name, value)
            params = {k: v.replace(name, value) for k, v in params.items()}
        params[t["pagination_param_size_field_name"]] = 2  # small pages, to follow the cursor
        rows, cursor = [], None
        with stack.client() as c:
            for _ in range(t["pagination_max_pages"]):
                extra = {t["pagination_param_cursor_field_name"]: cursor} if cursor else {}
                body = c.get(url, params={**params, **extra}).json()
                rows += body[t["root_selector"]]
                cursor = body[t["pagination_param_cursor_extraction_path"]]
                if not cursor:
                    break
        assert [r["step"] for r in rows] == [10, 20, 20, 30]
        for col in t["columns"]:
            values = [r[col["selector"]] for r in rows]
            if col["type"] == "number":
                assert all(isinstance(v, (int, float)) for v in values), col


def test_the_python_client_reads_the_series(stack, run_jobs):
    with Client(stack.url, KEY_A) as client:
        points = client.series(RUN)
        assert client.series(RUN, since=time.time() + 60) == []
    assert points == get_series(stack, tag=RUN).points and len(points) == 4
