"""The HTML report as a QA reader gets it, rendered from a real report (headless Chromium renders the
same page in test_api_jobs.py): skipped files by name, everything escaped, thumbnails inline only."""

from __future__ import annotations

import re
import time
from html import escape

import pytest

from app.report_html import render
from tests import realimages
from trustfid import score
from trustfid.records import InputInfo, JobOptions, JobRecord
from trustfid.schemas import ScoreOptions

EVIL = '<img src=x onerror="alert(1)">.png'


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    real = realimages.write_folder(root / "real", realimages.crops(realimages.NATURAL, 6, size=72, seed=1))
    gen = realimages.write_folder(root / "gen", realimages.crops(realimages.MEDICAL, 6, size=72, seed=2))
    (gen / EVIL).write_bytes(b"not an image")
    report = score(str(real), str(gen), ScoreOptions(passes=3, bootstrap_resamples=12, device="cpu"))
    job = JobRecord(id="job-1", created_at=time.time(), finished_at=time.time(), state="succeeded",
                    real=InputInfo(kind="upload", files=6, bytes=1234),
                    generated=InputInfo(kind="uri", uri="s3://bucket/<gen>"), options=JobOptions(tags=["run=<x>"]))
    return report, render(job, report)


def test_skipped_files_are_listed_by_name_and_escaped(page):
    report, html = page
    assert [s.name for s in report.counts.generated.skipped] == [EVIL]
    table = html.split('id="skipped"')[1].split("</table>")[0]
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.png" in table
    assert EVIL not in html  # never raw
    assert "s3://bucket/&lt;gen&gt;" in html and "run=&lt;x&gt;" in html


def test_nothing_is_loaded_from_outside_the_page(page):
    _, html = page
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources
    assert "<script" not in html.lower()


def test_the_page_states_headline_levels_and_provenance(page):
    report, html = page
    assert escape(report.headline.text) in html and f"FID {report.fid:.2f}" in html
    lo, hi = report.headline.network_ci95
    assert lo <= report.fid <= hi
    for level in ("high", "medium", "low"):
        assert f'<li class="level-{level}' in html
    assert f'<li class="level-{report.trust.level} current">' in html
    assert report.model.weights_sha256 in html and report.timing.finished_at in html
    # the generated medical crops are the atypical ones, shown as thumbnails
    thumbs = re.findall(r'<figure class="atypical"><img src="data:image/png;base64,', html)
    assert len(thumbs) >= 3
