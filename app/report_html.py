"""GET /v1/jobs/{id}/report?format=html: one self-contained page (inline SVG and PNG data URIs, no
scripts, no external resources) for a QA reader: the headline (plain FID with its sampling and
network intervals), the trust level with what each level means, the domain check with the most
atypical images as thumbnails, the FID over the MC passes, the latent variance against its natural
baseline, the inputs, run date, weights and skipped files. Every text from the report or the job is
escaped; thumbnails are only data:image/png;base64 URIs, as the report's schema enforces."""

from __future__ import annotations

import time
from html import escape

from trustfid.records import JobRecord
from trustfid.schemas import Report

W, PAD_L, PAD_R, PAD_T, PAD_B = 600, 56, 20, 30, 44


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


def _baseline() -> dict:
    from trustfid.trust import baseline

    try:
        return baseline()
    except (OSError, ValueError):
        return {}


def _tick(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.2g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _axes(lo: float, hi: float, top: int, h: int, xlabel: str, ylabel: str) -> list[str]:
    """x axis with tick labels, y axis (counts) with tick labels, both titled."""
    x0, x1, y0, y1 = PAD_L, W - PAD_R, h - PAD_B, PAD_T
    out = [f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" stroke="#333"/>',
           f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#333"/>']
    for v in _ticks(lo, hi):
        x = x0 + (v - lo) / (hi - lo) * (x1 - x0)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + 4}" stroke="#333"/>'
                   f'<text x="{x:.1f}" y="{y0 + 16}" font-size="11" text-anchor="middle">{_tick(v)}</text>')
    for c in sorted({0, top // 2, top}):
        y = y0 - (y0 - y1) * c / max(top, 1)
        out.append(f'<line x1="{x0 - 4}" x2="{x0}" y1="{y:.1f}" y2="{y:.1f}" stroke="#333"/>'
                   f'<text x="{x0 - 7}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{c}</text>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{h - 6}" font-size="12" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{(y0 + y1) / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {(y0 + y1) / 2})">{escape(ylabel)}</text>')
    return out


def _histogram(report: Report) -> str:
    mc, fid = report.fid_mc, report.fid
    samples = list(mc.samples)
    if not samples:
        return '<p class="note">No MC passes were run (passes = 0): only the plain FID.</p>'
    net = report.headline.network_ci95 if report.headline else None
    lo, hi = min(samples + [fid] + (list(net) if net else [])), max(samples + [fid] + (list(net) if net else []))
    span = hi - lo if hi - lo > 1e-9 else 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    bins = max(5, min(30, len(samples) // 2 or 5))
    counts = [0] * bins
    for s in samples:
        counts[min(bins - 1, int((s - lo) / (hi - lo) * bins))] += 1
    top, h = max(counts), 240
    plot_w = W - PAD_L - PAD_R

    def x(v):
        return PAD_L + (v - lo) / (hi - lo) * plot_w

    def y(c):
        return h - PAD_B - (h - PAD_B - PAD_T) * c / top

    parts = [f'<svg class="plot" id="fid-distribution" viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" '
             f'aria-label="FID over {len(samples)} MC-dropout passes and the plain FID">']
    if net:
        parts.append(f'<rect class="network-interval" x="{x(net[0]):.1f}" y="{PAD_T}" '
                     f'width="{max(1, x(net[1]) - x(net[0])):.1f}" height="{h - PAD_B - PAD_T}" fill="#f6e3dd">'
                     f'<title>network 95% interval about the plain FID: {_fmt(net[0])} – {_fmt(net[1])}</title></rect>')
    bw = plot_w / bins
    for i, c in enumerate(counts):
        parts.append(f'<rect class="bar" x="{PAD_L + i * bw + 1:.1f}" y="{y(c):.1f}" width="{bw - 2:.1f}" '
                     f'height="{h - PAD_B - y(c):.1f}" fill="#4a78b5"><title>{c} pass(es)</title></rect>')
    parts.append(f'<line id="plain-fid" x1="{x(fid):.1f}" x2="{x(fid):.1f}" y1="{PAD_T}" y2="{h - PAD_B}" '
                 f'stroke="#c0392b" stroke-width="3"><title>plain FID {_fmt(fid)}</title></line>'
                 f'<text x="{x(fid):.1f}" y="{PAD_T - 8}" font-size="12" fill="#c0392b" text-anchor="middle">'
                 f'plain FID {fid:.2f}</text>')
    parts += _axes(lo, hi, top, h, "FID", "passes")
    parts.append("</svg>")
    return "".join(parts)


def _variance_bars(report: Report) -> str:
    lv = report.latent_variance
    rows = [(side, getattr(lv, side)) for side in ("real", "generated")]
    vals = [v for _, s in rows for v in (s.mean, s.median, s.p95) if v is not None]
    if not vals:
        return '<p class="note">No latent variance (passes = 0).</p>'
    base = _baseline()
    ref = base.get("latent_variance_mean")
    upper = ref * base["thresholds"]["variance_ratio_medium"] if ref and "thresholds" in base else None
    top = max(vals + [v for v in (ref, upper) if v]) * 1.05 or 1.0
    bh, gap, label_w = 16, 10, 110
    height = PAD_T + len(rows) * 3 * (bh + 2) + len(rows) * gap + 34
    x0, plot_w = PAD_L + label_w, W - PAD_L - label_w - PAD_R - 40
    parts = [f'<svg class="plot" id="latent-variance" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
             'role="img" aria-label="latent variance per set against the natural-photo baseline">']
    y = PAD_T
    colors = {"mean": "#4a78b5", "median": "#7fa7d9", "p95": "#8e5aa8"}
    for side, s in rows:
        for stat in ("mean", "median", "p95"):
            v = getattr(s, stat)
            w = 0 if v is None else plot_w * v / top
            parts.append(f'<text x="{x0 - 6}" y="{y + 12}" font-size="12" text-anchor="end">{side} {stat}</text>'
                         f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{bh}" fill="{colors[stat]}">'
                         f'<title>{_fmt(v)}</title></rect>'
                         f'<text x="{x0 + w + 4:.1f}" y="{y + 12}" font-size="12">{_fmt(v)}</text>')
            y += bh + 2
        y += gap
    for value, label, color, ident in ((ref, "natural-photo baseline", "#1e7d32", "variance-baseline"),
                                       (upper, "top of the natural range (97.5% limit)", "#b26a00", "variance-threshold")):
        if value:
            xv = x0 + plot_w * value / top
            parts.append(f'<line id="{ident}" x1="{xv:.1f}" x2="{xv:.1f}" y1="{PAD_T - 4}" y2="{y}" stroke="{color}" '
                         f'stroke-dasharray="5 3" stroke-width="2"><title>{label}: {_fmt(value)}</title></line>')
    parts.append(f'<text x="{x0}" y="{y + 14}" font-size="11" fill="#1e7d32">green dashed: natural-photo baseline '
                 f'{_fmt(ref)}</text><text x="{x0}" y="{y + 28}" font-size="11" fill="#b26a00">orange dashed: top of '
                 f'the natural range {_fmt(upper)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _domain_plot(report: Report) -> str:
    d = report.domain
    if d is None or not d.available or not d.bins:
        note = escape(d.note) if d is not None and d.note else "no domain check in this report"
        return f'<p class="note">Domain check not available: {note}.</p>'
    sides = [(name, s) for name, s in (("real", d.real), ("generated", d.generated)) if s is not None]
    lo, hi = d.bins[0], d.bins[-1]
    nb = len(d.bins) - 1
    top = max([max(s.histogram) for _, s in sides if s.histogram] + [1])
    h = 250
    plot_w = W - PAD_L - PAD_R

    def x(v):
        return PAD_L + (v - lo) / (hi - lo) * plot_w

    parts = [f'<svg class="plot" id="domain-scores" viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" '
             'aria-label="per-image domain scores per set against the natural-photo range">']
    q = f"{100 * (1 - d.natural_rate):.0f}%"
    parts.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{max(0.0, x(d.threshold) - PAD_L):.1f}" '
                 f'height="{h - PAD_B - PAD_T}" fill="#e8f3e9"><title>where {q} of natural photos score</title></rect>')
    colors = {"real": "#1e7d32", "generated": "#4a78b5"}
    bw = plot_w / nb
    for k, (name, s) in enumerate(sides):
        for i, c in enumerate(s.histogram):
            if c == 0:
                continue
            bh = (h - PAD_B - PAD_T) * c / top
            parts.append(f'<rect class="domain-bar" x="{PAD_L + i * bw + 1 + k * (bw - 2) / 2:.1f}" '
                         f'y="{h - PAD_B - bh:.1f}" width="{max(1, (bw - 2) / 2):.1f}" height="{bh:.1f}" '
                         f'fill="{colors[name]}"><title>{name}: {c} image(s)</title></rect>')
    parts.append(f'<line id="domain-threshold" x1="{x(d.threshold):.1f}" x2="{x(d.threshold):.1f}" y1="{PAD_T}" '
                 f'y2="{h - PAD_B}" stroke="#b71c1c" stroke-width="2" stroke-dasharray="6 3"><title>natural photos\' '
                 f'{q} quantile {d.threshold:.2f}</title></line>'
                 f'<text x="{x(d.threshold):.1f}" y="{PAD_T - 8}" font-size="11" fill="#b71c1c" text-anchor="middle">'
                 f'threshold: natural {q}</text>')
    if d.natural_median is not None:
        parts.append(f'<line x1="{x(d.natural_median):.1f}" x2="{x(d.natural_median):.1f}" y1="{PAD_T}" '
                     f'y2="{h - PAD_B}" stroke="#1e7d32" stroke-width="1"><title>natural photos\' median '
                     f'{d.natural_median:.2f}</title></line>')
    parts += _axes(lo, hi, top, h, "domain score (higher = less like a natural photo)", "images")
    legend = " · ".join(f'<tspan fill="{colors[n]}">■ {n}</tspan>' for n, _ in sides)
    parts.append(f'<text x="{PAD_L}" y="12" font-size="12">{legend}</text></svg>')
    return "".join(parts)


def _atypical(report: Report) -> str:
    d = report.domain
    if d is None or not d.available:
        return ""
    cells, more = [], []
    for side in ("real", "generated"):
        s = getattr(d, side)
        if s is None:
            continue
        for im in s.most_atypical:
            if im.thumbnail:
                cells.append(f'<figure class="atypical"><img src="{escape(im.thumbnail, quote=True)}" width="64" '
                             f'height="64" alt="{escape(im.name, quote=True)}"><figcaption>{side}: {escape(im.name)}'
                             f'<br>score {im.domain_score:.2f}</figcaption></figure>')
            else:
                more.append(f"{side}: {escape(im.name)} ({im.domain_score:.2f})")
    if not cells and not more:
        return '<p class="note">No per-image domain scores in this report.</p>'
    rest = f'<p class="note" id="more-atypical">Next most atypical: {", ".join(more)}.</p>' if more else ""
    return '<div id="most-atypical">' + "".join(cells) + "</div>" + rest


def _uncertain_table(report: Report) -> str:
    rows = []
    for side in ("real", "generated"):
        for i, im in enumerate(getattr(report.latent_variance, side).most_uncertain, 1):
            rows.append(f"<tr><td>{side}</td><td>{i}</td><td>{escape(im.name)}</td><td>{_fmt(im.latent_variance)}</td></tr>")
    if not rows:
        return '<p class="note">No per-image variances in this report.</p>'
    return ('<table id="most-uncertain"><thead><tr><th>set</th><th>rank</th><th>image</th><th>latent variance</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _skipped(report: Report) -> str:
    rows = [f"<tr><td>{side}</td><td>{escape(s.name)}</td><td>{escape(s.reason)}</td></tr>"
            for side in ("real", "generated") for s in getattr(report.counts, side).skipped]
    if not rows:
        return '<p class="note" id="skipped">No file was skipped.</p>'
    return ('<table id="skipped"><thead><tr><th>set</th><th>file</th><th>why</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _input(info) -> str:
    where = info.uri or (f"reference {info.reference_id}" if info.reference_id else "")
    size = ", ".join(x for x in (f"{info.files} files" if info.files is not None else "",
                                 f"{info.bytes:,} bytes" if info.bytes is not None else "") if x)
    return escape(f"{info.kind}" + (f": {where}" if where else "") + (f" ({size})" if size else ""))


def _levels(current: str) -> str:
    from trustfid.trust import LEVEL_MEANING

    items = "".join(f'<li class="level-{lvl}{" current" if lvl == current else ""}"><b>{lvl}</b>: {escape(text)}</li>'
                    for lvl, text in LEVEL_MEANING.items())
    return f'<ul id="level-meaning">{items}</ul>'


def render(job: JobRecord, report: Report) -> str:
    mc, bs, trust, h = report.fid_mc, report.fid_bootstrap, report.trust, report.headline
    reasons = "".join(f"<li>{escape(r)}</li>" for r in trust.reasons)
    tags = ", ".join(escape(t) for t in job.options.tags) or "–"
    skipped = sum(len(s.skipped) for s in (report.counts.real, report.counts.generated))
    when = report.timing.finished_at or (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(job.finished_at))
                                         if job.finished_at else "–")
    samp = f"{_fmt(h.sampling_ci95[0])} – {_fmt(h.sampling_ci95[1])}" if h and h.sampling_ci95 else "–"
    netci = f"{_fmt(h.network_ci95[0])} – {_fmt(h.network_ci95[1])}" if h and h.network_ci95 else "–"
    warnings = "".join(f"<li>{escape(w)}</li>" for w in (h.warnings if h else []))
    kid = (f"{report.kid.value:.5f} ± {report.kid.std:.5f} ({report.kid.subsets} subsets of {report.kid.subset_size})"
           if report.kid else "–")
    finf = (f"{report.fid_infinity.value:.2f} (linear fit in 1/N over " + ", ".join(
        str(p.n_generated) for p in report.fid_infinity.points) + " images)" if report.fid_infinity else "–")
    rows = report.feature_rows
    rows_note = ("" if rows is None or not rows.capped else
                 f"<tr><th>feature rows</th><td>KID, FID∞ and the sampling interval use {rows.real.kept} of "
                 f"{rows.real.used} real and {rows.generated.kept} of {rows.generated.used} generated images "
                 f"(max_feature_rows {rows.cap})</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trustfid report {escape(job.id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 820px; margin: 2em auto; color: #222; padding: 0 1em; }}
.headline {{ font-size: 2.2em; margin: .2em 0; }} .sub {{ font-size: 1.05em; }}
.trust-high {{ color: #1e7d32; }} .trust-medium {{ color: #b26a00; }} .trust-low {{ color: #b71c1c; }}
#level-meaning li {{ color: #777; }} #level-meaning li.current {{ color: #222; font-weight: 600; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left;
 vertical-align: top; }}
.note {{ color: #666; }} .plot {{ max-width: 100%; height: auto; }} .warn {{ color: #b26a00; }}
figure.atypical {{ display: inline-block; margin: 4px; width: 120px; font-size: 11px; vertical-align: top; }}
figure.atypical img {{ image-rendering: pixelated; border: 1px solid #ccc; width: 96px; height: 96px; }}
.nothumb {{ width: 96px; height: 96px; background: #eee; color: #888; font-size: 10px; }}
</style></head><body>
<h1>trustfid report</h1>
<p class="note">job {escape(job.id)} · run {escape(when)} · tags {tags} · schema {escape(report.schema_version)}</p>
<p class="headline" id="fid">FID {report.fid:.2f}</p>
<p class="sub" id="headline">{escape(h.text) if h else ''}</p>
<ul class="warn" id="warnings">{warnings}</ul>
<p id="trust" class="trust-{trust.level}">Trust: <b>{trust.level}</b> ({trust.score:.2f})</p>
<ul id="reasons">{reasons}</ul>
<p class="note">What the levels mean:</p>
{_levels(trust.level)}
<table id="summary">
<tr><th>plain FID (dropout off)</th><td>{_fmt(report.fid)}</td></tr>
<tr><th>95% sampling interval (bootstrap over images, {h.resamples if h else 0} resamples)</th><td>{samp}</td></tr>
<tr><th>95% network interval ({mc.passes} MC-dropout passes, about the plain FID)</th><td>{netci}</td></tr>
<tr><th>KID (clean-fid's definition)</th><td>{kid}</td></tr>
<tr><th>FID∞ (extrapolated to infinitely many images)</th><td>{finf}</td></tr>
{rows_note}
<tr><th>MC-dropout per-pass FID mean ± σ</th><td>{_fmt(mc.mean)} ± {_fmt(mc.std)}</td></tr>
<tr><th>bootstrap percentile interval (raw)</th><td>{f"{_fmt(bs.ci95[0])} – {_fmt(bs.ci95[1])}" if bs.ci95 else "–"}</td></tr>
<tr><th>images used (real / generated)</th><td>{report.counts.real.used} / {report.counts.generated.used}
 {f'({skipped} skipped, listed below)' if skipped else ''}</td></tr>
<tr><th>real input</th><td id="input-real">{_input(job.real)}</td></tr>
<tr><th>generated input</th><td id="input-generated">{_input(job.generated)}</td></tr>
<tr><th>preprocessing</th><td>{escape(report.preprocessing)}</td></tr>
<tr><th>model</th><td>{escape(report.model.name)}</td></tr>
<tr><th>weights (SHA-256)</th><td id="weights"><code>{escape(report.model.weights_sha256)}</code>
 ({escape(report.model.weights_source)})</td></tr>
<tr><th>device · time</th><td>{escape(report.device)} · {report.timing.total_s:.1f} s</td></tr>
</table>
<h2>Domain check: how natural do the images look to the network?</h2>
<p class="note">Each image's domain score compares its activations with the batch-norm statistics the network
learned on ImageNet photos (higher = less like a natural photo). Green band: where
{f"{100 * (1 - report.domain.natural_rate):.0f}%" if report.domain else "most"} of natural photos score; the dashed red
line is the threshold the trust level counts images against.</p>
{_domain_plot(report)}
<h3>Most atypical images</h3>
{_atypical(report)}
<h2>FID distribution over MC-dropout passes</h2>
<p class="note">Bars: the FID under each of the {mc.passes} dropout-perturbed networks. Dropout shifts the features,
so the bars centre away from the plain FID (red line); the shaded band is the network interval applied to
the plain FID.</p>
{_histogram(report)}
<h2>Latent variance per set</h2>
<p class="note">Mean over the 2048 features of each image's predictive variance across passes, against the
natural-photo baseline measured by the validation study.</p>
{_variance_bars(report)}
<h2>Most uncertain images</h2>
{_uncertain_table(report)}
<h2>Skipped files</h2>
{_skipped(report)}
</body></html>
"""
