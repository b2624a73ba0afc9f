"""GET /v1/jobs/{id}/report?format=html: one self-contained page (inline SVG, no scripts, no external
resources) with the FID distribution over the MC passes, the latent variance per set and the most
uncertain images."""

from __future__ import annotations

from html import escape

from trustfid.records import JobRecord
from trustfid.schemas import Report

W, H, PAD = 560, 220, 40


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


def _histogram(samples: list[float], fid: float, ci: tuple[float, float] | None) -> str:
    if not samples:
        return '<p class="note">No MC passes were run (passes = 0): only the plain FID.</p>'
    lo, hi = min(samples + [fid]), max(samples + [fid])
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    bins = max(5, min(30, len(samples) // 2 or 5))
    counts = [0] * bins
    for s in samples:
        counts[min(bins - 1, int((s - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    bw = (W - 2 * PAD) / bins

    def x(v):
        return PAD + (v - lo) / (hi - lo) * (W - 2 * PAD)

    parts = [f'<svg class="plot" id="fid-distribution" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="FID over {len(samples)} MC-dropout passes">']
    if ci:
        parts.append(f'<rect x="{x(ci[0]):.1f}" y="{PAD / 2}" width="{max(1, x(ci[1]) - x(ci[0])):.1f}" '
                     f'height="{H - PAD * 1.5}" fill="#dde8f6"><title>95% interval {_fmt(ci[0])} – {_fmt(ci[1])}</title></rect>')
    for i, c in enumerate(counts):
        h = (H - PAD * 1.5) * c / top
        parts.append(f'<rect class="bar" x="{PAD + i * bw + 1:.1f}" y="{H - PAD - h:.1f}" width="{bw - 2:.1f}" '
                     f'height="{h:.1f}" fill="#4a78b5"><title>{c} pass(es)</title></rect>')
    parts.append(f'<line x1="{x(fid):.1f}" x2="{x(fid):.1f}" y1="{PAD / 2}" y2="{H - PAD}" stroke="#c0392b" '
                 f'stroke-width="2"><title>plain FID {_fmt(fid)}</title></line>')
    parts.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{H - PAD}" y2="{H - PAD}" stroke="#333"/>')
    parts.append(f'<text x="{PAD}" y="{H - PAD + 16}" font-size="12">{_fmt(lo)}</text>')
    parts.append(f'<text x="{W - PAD}" y="{H - PAD + 16}" font-size="12" text-anchor="end">{_fmt(hi)}</text>')
    parts.append(f'<text x="{W / 2}" y="{H - 6}" font-size="12" text-anchor="middle">FID per MC-dropout pass '
                 '(red: dropout off; shaded: 95% interval)</text></svg>')
    return "".join(parts)


def _variance_bars(report: Report) -> str:
    lv = report.latent_variance
    rows = [(side, getattr(lv, side)) for side in ("real", "generated")]
    vals = [v for _, s in rows for v in (s.mean, s.median, s.p95) if v is not None]
    if not vals:
        return '<p class="note">No latent variance (passes = 0).</p>'
    top = max(vals) or 1.0
    bh, gap = 16, 10
    height = PAD + len(rows) * 3 * (bh + 2) + len(rows) * gap
    parts = [f'<svg class="plot" id="latent-variance" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
             'role="img" aria-label="latent variance per set">']
    y = 10
    colors = {"mean": "#4a78b5", "median": "#7fa7d9", "p95": "#c0392b"}
    for side, s in rows:
        for stat in ("mean", "median", "p95"):
            v = getattr(s, stat)
            w = 0 if v is None else (W - 2 * PAD - 110) * v / top
            parts.append(f'<text x="{PAD + 100}" y="{y + 12}" font-size="12" text-anchor="end">{side} {stat}</text>'
                         f'<rect x="{PAD + 105}" y="{y}" width="{w:.1f}" height="{bh}" fill="{colors[stat]}">'
                         f'<title>{_fmt(v)}</title></rect>'
                         f'<text x="{PAD + 110 + w:.1f}" y="{y + 12}" font-size="12">{_fmt(v)}</text>')
            y += bh + 2
        y += gap
    parts.append("</svg>")
    return "".join(parts)


def _uncertain_table(report: Report) -> str:
    rows = []
    for side in ("real", "generated"):
        for i, im in enumerate(getattr(report.latent_variance, side).most_uncertain, 1):
            rows.append(f"<tr><td>{side}</td><td>{i}</td><td>{escape(im.name)}</td><td>{_fmt(im.latent_variance)}</td></tr>")
    if not rows:
        return '<p class="note">No per-image variances in this report.</p>'
    return ('<table id="most-uncertain"><thead><tr><th>set</th><th>rank</th><th>image</th><th>latent variance</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def render(job: JobRecord, report: Report) -> str:
    mc, bs, trust = report.fid_mc, report.fid_bootstrap, report.trust
    ci = f"{_fmt(mc.ci95[0])} – {_fmt(mc.ci95[1])}" if mc.ci95 else "–"
    bci = f"{_fmt(bs.ci95[0])} – {_fmt(bs.ci95[1])}" if bs.ci95 else "–"
    reasons = "".join(f"<li>{escape(r)}</li>" for r in trust.reasons)
    tags = ", ".join(escape(t) for t in job.options.tags) or "–"
    skipped = sum(len(s.skipped) for s in (report.counts.real, report.counts.generated))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trustfid report {escape(job.id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 760px; margin: 2em auto; color: #222; padding: 0 1em; }}
.headline {{ font-size: 2.2em; margin: .2em 0; }}
.trust-high {{ color: #1e7d32; }} .trust-medium {{ color: #b26a00; }} .trust-low {{ color: #b71c1c; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }}
.note {{ color: #666; }} .plot {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>trustfid report</h1>
<p class="note">job {escape(job.id)} · tags {tags} · schema {escape(report.schema_version)}</p>
<p class="headline" id="fid">FID {report.fid:.2f} <span class="note">± {_fmt(mc.std)} (MC σ)</span></p>
<p id="trust" class="trust-{trust.level}">Trust: <b>{trust.level}</b> ({trust.score:.2f})</p>
<ul>{reasons}</ul>
<table id="summary">
<tr><th>plain FID (dropout off)</th><td>{_fmt(report.fid)}</td></tr>
<tr><th>MC-dropout FID mean ± σ ({mc.passes} passes)</th><td>{_fmt(mc.mean)} ± {_fmt(mc.std)}</td></tr>
<tr><th>MC 95% interval</th><td>{ci}</td></tr>
<tr><th>bootstrap 95% interval ({bs.resamples} resamples)</th><td>{bci}</td></tr>
<tr><th>images used (real / generated)</th><td>{report.counts.real.used} / {report.counts.generated.used}
 {f'({skipped} skipped)' if skipped else ''}</td></tr>
<tr><th>preprocessing</th><td>{escape(report.preprocessing)}</td></tr>
<tr><th>model</th><td>{escape(report.model.name)}</td></tr>
<tr><th>device · time</th><td>{escape(report.device)} · {report.timing.total_s:.1f} s</td></tr>
</table>
<h2>FID distribution over MC-dropout passes</h2>
{_histogram(list(mc.samples), report.fid, mc.ci95)}
<h2>Latent variance per set</h2>
<p class="note">Mean over the 2048 features of each image's predictive variance across passes; higher means the
network is less sure what it sees (the images are further from what it was trained on).</p>
{_variance_bars(report)}
<h2>Most uncertain images</h2>
{_uncertain_table(report)}
</body></html>
"""
