"""GET /v1/jobs/{id}/report?format=html: one self-contained page (inline SVG and PNG data URIs, no
scripts, no external resources) for a QA reader: the headline (plain FID with its sampling and
network intervals), the trust level with what each level means, the domain check with the most
atypical images as thumbnails, the FID over the MC passes, the latent variance against its natural
baseline, the inputs, run date, weights and skipped files.

The page is the Jinja2 template app/templates/report.html.j2; its SVG plots are the macros of
plots.html.j2, drawn from the geometry the functions below compute. Autoescape is on: every value
a template prints is HTML-escaped, so no text from the report or the job reaches the page raw;
thumbnails are only data:image/png;base64 URIs, as the report's schema enforces."""

from __future__ import annotations

import html
import re
import time
from types import SimpleNamespace

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from trustfid.records import JobRecord
from trustfid.schemas import Report

W, PAD_L, PAD_R, PAD_T, PAD_B = 600, 56, 20, 30, 44


def fmt(x) -> str:
    return "–" if x is None else f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


def tick(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.2g}"


def _escaped(value):
    """Every printed value, HTML-escaped as the standard library escapes it (markup from the templates'
    own macros passes through)."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


def _one_line(markup: str) -> Markup:
    """A plot written one element per line, as one line (the page keeps each SVG on one line)."""
    return Markup(re.sub(r">\s*\n\s*<", "><", str(markup).strip()))


def input_text(info) -> str:
    """One input in words: its kind, where it came from, its size."""
    where = info.uri or (f"reference {info.reference_id}" if info.reference_id else "")
    size = ", ".join(x for x in (f"{info.files} files" if info.files is not None else "",
                                 f"{info.bytes:,} bytes" if info.bytes is not None else "") if x)
    return f"{info.kind}" + (f": {where}" if where else "") + (f" ({size})" if size else "")


ENV = Environment(loader=PackageLoader("app", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True,
                  keep_trailing_newline=True, undefined=StrictUndefined, finalize=_escaped,
                  extensions=["jinja2.ext.do"])
ENV.filters.update(fmt=fmt, tick=tick, input_text=input_text, one_line=_one_line, f1=lambda v: f"{v:.1f}",
                   f2=lambda v: f"{v:.2f}")


def _baseline() -> dict:
    from trustfid.trust import baseline

    try:
        return baseline()
    except (OSError, ValueError):
        return {}


def _axes(lo: float, hi: float, top: int, h: int, xlabel: str, ylabel: str) -> SimpleNamespace:
    """An x axis with tick labels and a y axis (counts) with tick labels, both titled."""
    x0, x1, y0, y1 = PAD_L, W - PAD_R, h - PAD_B, PAD_T
    xs = [lo + (hi - lo) * i / 4 for i in range(5)]
    return SimpleNamespace(
        x0=x0, x1=x1, y0=y0, y1=y1, h=h, xlabel=xlabel, ylabel=ylabel,
        xticks=[(x0 + (v - lo) / (hi - lo) * (x1 - x0), v) for v in xs],
        yticks=[(y0 - (y0 - y1) * c / max(top, 1), c) for c in sorted({0, top // 2, top})])


def histogram(report: Report) -> SimpleNamespace | None:
    """The FID of each MC pass as a histogram, the plain FID as a line, the network interval as a band."""
    mc, fid = report.fid_mc, report.fid
    samples = list(mc.samples)
    if not samples:
        return None
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

    bw = plot_w / bins
    return SimpleNamespace(
        w=W, h=h, top=PAD_T, bottom=h - PAD_B, passes=len(samples), fid=fid, x_fid=x(fid),
        net=None if not net else SimpleNamespace(lo=net[0], hi=net[1], x=x(net[0]), w=max(1, x(net[1]) - x(net[0]))),
        bars=[SimpleNamespace(x=PAD_L + i * bw + 1, y=y(c), w=bw - 2, h=h - PAD_B - y(c), count=c)
              for i, c in enumerate(counts)],
        axes=_axes(lo, hi, top, h, "FID", "passes"))


def variance_bars(report: Report) -> SimpleNamespace | None:
    """Mean, median and p95 latent variance per set as bars, against the natural-photo baseline."""
    lv = report.latent_variance
    rows = [(side, getattr(lv, side)) for side in ("real", "generated")]
    vals = [v for _, s in rows for v in (s.mean, s.median, s.p95) if v is not None]
    if not vals:
        return None
    base = _baseline()
    ref = base.get("latent_variance_mean")
    upper = ref * base["thresholds"]["variance_ratio_medium"] if ref and "thresholds" in base else None
    top = max(vals + [v for v in (ref, upper) if v]) * 1.05 or 1.0
    bh, gap, label_w = 16, 10, 110
    height = PAD_T + len(rows) * 3 * (bh + 2) + len(rows) * gap + 34
    x0, plot_w = PAD_L + label_w, W - PAD_L - label_w - PAD_R - 40
    colors = {"mean": "#4a78b5", "median": "#7fa7d9", "p95": "#8e5aa8"}
    bars, y = [], PAD_T
    for side, s in rows:
        for stat in ("mean", "median", "p95"):
            v = getattr(s, stat)
            w = 0 if v is None else plot_w * v / top
            bars.append(SimpleNamespace(label=f"{side} {stat}", y=y, w=w, value=v, color=colors[stat]))
            y += bh + 2
        y += gap
    lines = [SimpleNamespace(id=ident, x=x0 + plot_w * value / top, value=value, label=label, color=color)
             for value, label, color, ident in (
                 (ref, "natural-photo baseline", "#1e7d32", "variance-baseline"),
                 (upper, "top of the natural range (97.5% limit)", "#b26a00", "variance-threshold")) if value]
    return SimpleNamespace(w=W, h=height, x0=x0, bh=bh, bars=bars, lines=lines, top=PAD_T, end=y, ref=ref,
                           upper=upper)


def domain_plot(report: Report) -> SimpleNamespace | None:
    """Each set's domain scores as a histogram, over the band where natural photos score."""
    d = report.domain
    if d is None or not d.available or not d.bins:
        return None
    sides = [(name, s) for name, s in (("real", d.real), ("generated", d.generated)) if s is not None]
    lo, hi = d.bins[0], d.bins[-1]
    nb = len(d.bins) - 1
    top = max([max(s.histogram) for _, s in sides if s.histogram] + [1])
    h = 250
    plot_w = W - PAD_L - PAD_R

    def x(v):
        return PAD_L + (v - lo) / (hi - lo) * plot_w

    colors = {"real": "#1e7d32", "generated": "#4a78b5"}
    bw = plot_w / nb
    bars = []
    for k, (name, s) in enumerate(sides):
        for i, c in enumerate(s.histogram):
            if c:
                bh = (h - PAD_B - PAD_T) * c / top
                bars.append(SimpleNamespace(x=PAD_L + i * bw + 1 + k * (bw - 2) / 2, y=h - PAD_B - bh,
                                            w=max(1, (bw - 2) / 2), h=bh, color=colors[name], side=name, count=c))
    return SimpleNamespace(
        w=W, h=h, left=PAD_L, top=PAD_T, bottom=h - PAD_B, quantile=f"{100 * (1 - d.natural_rate):.0f}%",
        band_w=max(0.0, x(d.threshold) - PAD_L), threshold=d.threshold, x_threshold=x(d.threshold),
        median=d.natural_median, x_median=None if d.natural_median is None else x(d.natural_median),
        bars=bars, legend=[(name, colors[name]) for name, _ in sides],
        axes=_axes(lo, hi, top, h, "domain score (higher = less like a natural photo)", "images"))


def render(job: JobRecord, report: Report) -> str:
    from trustfid.trust import LEVEL_MEANING

    when = report.timing.finished_at or (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(job.finished_at))
                                         if job.finished_at else "–")
    return ENV.get_template("report.html.j2").render(
        job=job, report=report, when=when, levels=LEVEL_MEANING, histogram=histogram(report),
        variance=variance_bars(report), domain=domain_plot(report),
        skipped=sum(len(s.skipped) for s in (report.counts.real, report.counts.generated)))
