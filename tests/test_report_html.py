"""The HTML report as a QA reader gets it, rendered from a real report: skipped files by name,
everything escaped, thumbnails inline only; and as it reads on paper: every mark on a plot named in a
printed legend, round ticks, no text under 12 px (measured in headless Chromium in a narrow window),
each chart saying which direction is a concern, counts in words, and a PDF print that carries it all."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from html import escape, unescape

import pytest

from app.report_html import Scale, render
from tests.support import realimages
from tests.support.oracles import chromium
from trustfid import score
from trustfid.records import InputInfo, JobOptions, JobRecord
from trustfid.schemas import ScoreOptions

pytestmark = pytest.mark.engine

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
    # how each set's values were brought to 0..255 (8-bit PNGs here: as stored)
    intensity = html.split('id="intensity">')[1].split("</td>")[0]
    assert intensity == "real: 8-bit: as stored (6)<br>generated: 8-bit: as stored (6)", intensity
    # why the FID is far: precision, recall, density and coverage, each with what it means
    from trustfid.prdc import MEANING

    section = html.split('id="prdc-network"')[1].split("</section>")[0]
    for name, meaning in MEANING.items():
        value = getattr(report.prdc, name)
        assert f"<th>{name}</th><td>{value.value:.3f} (95% {value.ci95[0]:.3f}" in section
        assert escape(meaning) in section
    # the generated medical crops are the atypical ones, shown as thumbnails
    thumbs = re.findall(r'<figure class="atypical"><img src="data:image/png;base64,', html)
    assert len(thumbs) >= 3


def charts(html: str) -> list[ET.Element]:
    """The page's charts (plot, legend, concern), parsed."""
    found = [ET.fromstring(f) for f in re.findall(r'<figure class="chart">.*?</figure>', html)]
    assert [f.find("svg").get("id") for f in found] == ["domain-scores", "fid-distribution", "latent-variance"]
    return found


def style(mark: ET.Element) -> tuple[str, str]:
    """What tells a mark apart to the eye: its colour and its dashes."""
    return mark.get("fill" if mark.tag == "rect" else "stroke"), mark.get("stroke-dasharray", "")


def test_every_mark_on_a_plot_is_named_in_its_printed_legend(page):
    for chart in charts(page[1]):
        legend = {}
        for li in chart.iter("li"):
            legend[style(li.find("svg")[0])] = " ".join("".join(li.itertext()).split())
        assert all(len(text.split()) >= 3 for text in legend.values()), legend
        marks = {style(m) for m in chart.find("svg").iter() if m.tag in ("rect", "line") and m.get("stroke") != "#333"}
        assert marks and marks <= legend.keys(), (chart.find("svg").get("id"), marks - legend.keys())
    domain = " ".join(charts(page[1])[0].find("ul").itertext())
    assert "natural photos' median" in domain and "where 90% of natural photos score" in domain


def test_each_chart_says_which_direction_is_a_concern(page):
    for chart in charts(page[1]):
        concern = "".join(chart.find("p").itertext())
        assert concern.startswith("Further right = ") and "concern" in concern, concern


def round_step(values: list[float]) -> float:
    """The common step of evenly spaced tick values, checked to be 1, 2, 2.5 or 5 × 10^k."""
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    assert len(values) >= 2 and len(steps) == 1, values
    step = steps.pop()
    mantissa = step / 10 ** math.floor(round(math.log10(step), 9))
    assert round(mantissa, 9) in (1, 2, 2.5, 5), (values, step)
    assert all(abs(v / step - round(v / step)) < 1e-6 for v in values), values
    return step


def test_tick_labels_are_round_numbers(page):
    for chart in charts(page[1])[:2]:  # the two histograms; the variance bars print their values
        ticks = [t for t in chart.find("svg").iter("text") if t.get("class") == "tick"]
        for anchor in ("middle", "end"):  # x axis, y axis
            round_step([float(t.text) for t in ticks if t.get("text-anchor") == anchor])


@pytest.mark.parametrize("lo, hi", [(-5.92, 4.44), (0.0031, 0.0069), (278.2, 305.9), (12_000, 31_000), (5, 5),
                                    (-0.004, 0.0031), (0.5, 9.5)])
def test_axes_tick_round_numbers_inside_any_range(lo, hi):
    x = Scale(lo, hi, 0, 400)
    labels = [text for _, text in x.ticks()]
    values = [float(text) for text in labels]
    assert len(values) >= 3 and round_step(values) == pytest.approx(x.step)
    lo, hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)  # a single value gets a unit about it
    assert lo <= values[0] and values[-1] <= hi and x(lo) == 0 and x(hi) == pytest.approx(400)
    assert len({len(t.split(".")[-1]) for t in labels if "." in t}) <= 1, labels  # one number of decimals
    assert not any(re.fullmatch(r"-0\.?0*", t) for t in labels), labels
    for top in (1, 4, 7, 11, 95):
        counts = Scale(0, top, 200, 0, counts=True)
        values = [float(text) for _, text in counts.ticks()]
        assert values[0] == 0 and values[-1] >= top and all(v.is_integer() for v in values)
        round_step(values)


def test_no_text_is_smaller_than_12_px(page):
    html = page[1]
    sizes = re.findall(r'font-size="([\d.]+)"', html) + re.findall(r"font-size: *([\d.]+)px", html)
    assert sizes and min(map(float, sizes)) >= 12, sorted(sizes)
    for svg in re.findall(r'<svg class="plot"[^>]*>', html):  # drawn at their own size: never scaled down
        box, width = re.search(r'viewBox="0 0 ([\d.]+) ', svg)[1], re.search(r'width="([\d.]+)"', svg)[1]
        assert box == width, svg


def test_counts_are_in_words_and_missing_values_leave_no_dashes(page):
    report, html = page
    assert "upload (6 files, 1,234 bytes)" in html and "tags run=&lt;x&gt; · schema" in html
    job = JobRecord(id="job-2", created_at=time.time(), state="succeeded", real=InputInfo(kind="upload", files=1, bytes=1),
                    generated=InputInfo(kind="reference", reference_id="ref-1"), options=JobOptions())
    one = render(job, report.model_copy(update={"kid": None, "fid_infinity": None}))
    assert "upload (1 file, 1 byte)" in one and "job job-2 · run " in one and "no tags" in one
    text = re.sub(r"<[^>]*>", " ", one)
    assert not re.search(r"\b1 (files|images|passes|resamples|subsets|bytes)\b", text)
    assert not re.search(r"(^|[·(])\s*[–·]\s*($|[·)])", text, re.M), "an empty value printed as a dash"
    assert one.count("<td>not computed</td>") == 2  # KID and FID∞


def chrome(tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


# Run in a copy of the page: every text's rendered size in CSS px (an SVG's scale included), and how
# far the page, or a chart, is wider than the room it has.
MEASURE = """<script>
const texts = [];
for (const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); walk.nextNode();) {
  const node = walk.currentNode, el = node.parentElement;
  if (!node.data.trim() || el.closest("title, script")) continue;
  let px = parseFloat(getComputedStyle(el).fontSize);
  if (el instanceof SVGElement) { const m = el.getScreenCTM(); px *= Math.hypot(m.a, m.b); }
  texts.push([px, node.data.trim()]);
}
const out = document.createElement("pre");
out.id = "measured";
const wide = [document.documentElement, ...document.querySelectorAll(".chart")];
out.textContent = JSON.stringify({texts, overflow: Math.max(...wide.map(e => e.scrollWidth - e.clientWidth))});
document.body.append(out);
</script>"""


def test_every_text_renders_at_12_px_or_more_in_a_narrow_window(page, tmp_path):
    copy = tmp_path / "measure.html"
    copy.write_text(page[1].replace("</body>", MEASURE + "</body>"))
    dom = chrome(tmp_path, "--window-size=560,2000", "--dump-dom", copy.as_uri()).stdout
    measured = json.loads(unescape(re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)[1]))
    small = [t for t in measured["texts"] if t[0] < 12 - 1e-6]
    assert len(measured["texts"]) > 100 and not small, small
    assert measured["overflow"] <= 0, "a chart or the page is wider than a 560-px window"


def test_the_page_prints_on_a4_with_its_legends(page, tmp_path):
    copy, pdf = tmp_path / "a4.html", tmp_path / "report.pdf"
    copy.write_text(page[1].replace("</style>", "@page { size: A4 portrait; }</style>"))
    chrome(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", copy.as_uri())
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (Debian's poppler-utils) is not installed: the PDF's text was not read")
    words = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    width = float(re.search(r'<page width="([\d.]+)"', words)[1])
    assert width == pytest.approx(595.3, abs=1)  # A4
    assert all(float(x) <= width - 20 for x in re.findall(r'xMax="([\d.]+)"', words)), "text off the page's edge"
    printed = " ".join(unescape(w) for w in re.findall(r">([^<]+)</word>", words))
    for chart in charts(page[1]):
        for text in [*chart.find("ul").itertext(), "".join(chart.find("p").itertext())]:
            assert " ".join(text.split()) in printed, text
