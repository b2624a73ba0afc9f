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
import math
import re
import time
from types import SimpleNamespace

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from trustfid.inputs.rules import plural
from trustfid.records import JobRecord
from trustfid.schemas import Report

W, PAD_L, PAD_R, PAD_T, PAD_B = 500, 56, 16, 30, 44  # drawn at this size (fits a 532-px window): 12-px text stays 12 px


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


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
    size = ", ".join(plural(n, unit) for n, unit in ((info.files, "file"), (info.bytes, "byte")) if n is not None)
    return f"{info.kind}" + (f": {where}" if where else "") + (f" ({size})" if size else "")


ENV = Environment(loader=PackageLoader("app", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True,
                  keep_trailing_newline=True, undefined=StrictUndefined, finalize=_escaped,
                  extensions=["jinja2.ext.do"])
ENV.filters.update(fmt=fmt, plural=plural, input_text=input_text, one_line=_one_line, f1=lambda v: f"{v:.1f}",
                   f2=lambda v: f"{v:.2f}", f3=lambda v: f"{v:.3f}")


def _baseline() -> dict:
    from trustfid.trust import baseline

    try:
        return baseline()
    except (OSError, ValueError):
        return {}


def nice_step(span: float, parts: int = 5, whole: bool = False) -> float:
    """The smallest round step, 1, 2, 2.5 or 5 × 10^k (a whole number when whole), that cuts span into
    at most parts pieces."""
    raw = span / parts
    unit = 10.0 ** math.floor(math.log10(raw))
    return next(m * unit for m in (1, 2, 2.5, 5, 10)
                if m * unit >= raw * (1 - 1e-9) and (not whole or (m * unit).is_integer()))


def _spread(lo: float, hi: float) -> tuple[float, float]:
    """lo..hi, widened to one unit about a single value."""
    return (lo, hi) if hi - lo > 1e-9 else (lo - 0.5, hi + 0.5)


class Scale:
    """The linear map of lo..hi onto the pixels p0..p1, with round ticks (nice_step). An axis of counts
    runs from 0 up to a round top; any other spans lo..hi, its ticks the round values inside."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, counts: bool = False):
        self.lo, self.hi = (0, max(hi, 1)) if counts else _spread(lo, hi)
        self.step = nice_step(self.hi - self.lo, parts=5 if counts else 6, whole=counts)
        if counts:
            self.hi = math.ceil(self.hi / self.step) * self.step
        first, last = math.ceil(self.lo / self.step - 1e-9), math.floor(self.hi / self.step + 1e-9)
        self.values = [i * self.step for i in range(first, last + 1)]
        self.p0, self.p1 = p0, p1
        self.decimals = next(d for d in range(12) if abs(round(self.step, d) - self.step) <= 1e-9 * self.step)

    def __call__(self, v: float) -> float:
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)

    def ticks(self) -> list[tuple[float, str]]:
        return [(self(v), f"{round(v, self.decimals) + 0.0:.{self.decimals}f}") for v in self.values]


def _axes(x: Scale, y: Scale, h: int, xlabel: str, ylabel: str) -> SimpleNamespace:
    """An x axis and a y axis (counts), with round tick labels, both titled."""
    return SimpleNamespace(x0=x.p0, x1=x.p1, y0=y.p0, y1=y.p1, h=h, xlabel=xlabel, ylabel=ylabel,
                           xticks=x.ticks(), yticks=y.ticks())


def _key(kind: str, color: str, label: str, dash: str = "", width: int = 2) -> SimpleNamespace:
    """One legend entry, and the style its marks are drawn with: kind bar, band or line."""
    return SimpleNamespace(kind=kind, color=color, label=label, dash=dash, width=width)


def _mark_label(x: float, text: str) -> SimpleNamespace:
    """A label above a vertical line at x, anchored so that it stays inside the plot."""
    anchor = "start" if x < W / 4 else "end" if x > 3 * W / 4 else "middle"
    return SimpleNamespace(x=x + {"start": -4, "end": 4, "middle": 0}[anchor], anchor=anchor, text=text)


def histogram(report: Report) -> SimpleNamespace | None:
    """The FID of each MC pass as a histogram over round bins, the plain FID as a line, the network
    interval as a band."""
    mc, fid = report.fid_mc, report.fid
    if mc is None or fid is None:  # metrics without fid
        return None
    samples = list(mc.samples)
    if not samples:
        return None
    net = report.headline.network_ci95 if report.headline else None
    lo, hi = _spread(min(samples), max(samples))
    width = nice_step(hi - lo, parts=max(5, min(30, len(samples) // 2)))
    first = math.floor(lo / width + 1e-9)
    counts = [0] * (math.floor(hi / width + 1e-9) - first + 1)
    for s in samples:
        counts[math.floor(s / width + 1e-9) - first] += 1
    h = 240
    left, right = min(first * width, fid, *(net or ())), max((first + len(counts)) * width, fid, *(net or ()))
    pad = 0.03 * (right - left)
    x = Scale(left - pad, right + pad, PAD_L, W - PAD_R)
    y = Scale(0, max(counts), h - PAD_B, PAD_T, counts=True)
    keys = SimpleNamespace(
        bar=_key("bar", "#4a78b5", "bars: how many of the passes gave a FID in that range"),
        band=_key("band", "#f6e3dd", f"band: the network 95% interval about the plain FID, "
                                     f"{fmt(net[0])} – {fmt(net[1])}") if net else None,
        line=_key("line", "#c0392b", f"red line: the plain FID {fid:.2f} (dropout off)", width=3))
    return SimpleNamespace(
        w=W, h=h, top=PAD_T, bottom=y.p0, passes=len(samples), fid=fid, x_fid=x(fid),
        label=_mark_label(x(fid), f"plain FID {fid:.2f}"), keys=keys,
        legend=[k for k in (keys.bar, keys.band, keys.line) if k],
        net=None if not net else SimpleNamespace(lo=net[0], hi=net[1], x=x(net[0]), w=max(1, x(net[1]) - x(net[0]))),
        bars=[SimpleNamespace(x=x((first + i) * width) + 1, y=y(c), w=x(width) - x(0) - 2, h=y.p0 - y(c), count=c)
              for i, c in enumerate(counts)],
        axes=_axes(x, y, h, "FID", "passes"))


def variance_bars(report: Report) -> SimpleNamespace | None:
    """Mean, median and p95 latent variance per set as bars, against the natural-photo baseline."""
    lv = report.latent_variance
    if lv is None:  # metrics without fid
        return None
    rows = [(side, getattr(lv, side)) for side in ("real", "generated")]
    vals = [v for _, s in rows for v in (s.mean, s.median, s.p95) if v is not None]
    if not vals:
        return None
    base = _baseline()
    ref = base.get("latent_variance_mean")
    upper = ref * base["thresholds"]["variance_ratio_medium"] if ref and "thresholds" in base else None
    top = max(vals + [v for v in (ref, upper) if v]) * 1.05 or 1.0
    bh, gap, x0 = 16, 10, 130
    plot_w = W - x0 - PAD_R - 72  # then a column of the values, clear of the dashed lines
    stats = {"mean": _key("bar", "#4a78b5", "mean: the average image of the set"),
             "median": _key("bar", "#7fa7d9", "median: the middle image of the set"),
             "p95": _key("bar", "#8e5aa8", "p95: 95% of the set's images lie below this")}
    bars, y = [], 10
    for side, s in rows:
        for stat, key in stats.items():
            v = getattr(s, stat)
            bars.append(SimpleNamespace(label=f"{side} {stat}", y=y, w=0 if v is None else plot_w * v / top, value=v,
                                        color=key.color))
            y += bh + 2
        y += gap
    lines = [SimpleNamespace(id=ident, x=x0 + plot_w * value / top, key=key)
             for value, key, ident in (
                 (ref, _key("line", "#1e7d32", f"green dashed line: the natural-photo baseline {fmt(ref)}, the "
                            "mean over natural photos", dash="5 3"), "variance-baseline"),
                 (upper, _key("line", "#b26a00", f"orange dashed line: the top of the natural range {fmt(upper)} "
                              "(97.5% of natural photo sets have a lower mean)", dash="5 3"), "variance-threshold"))
             if value]
    return SimpleNamespace(w=W, h=y, x0=x0, x_value=x0 + plot_w + 10, bh=bh, bars=bars, lines=lines, top=4,
                           end=y - gap + 4, legend=list(stats.values()) + [line.key for line in lines],
                           baseline=bool(lines))


def domain_plot(report: Report) -> SimpleNamespace | None:
    """Each set's domain scores as a histogram, over the band where natural photos score."""
    d = report.domain
    if d is None or not d.available or not d.bins:
        return None
    sides = [(name, s) for name, s in (("real", d.real), ("generated", d.generated)) if s is not None]
    marks = [v for v in (d.threshold, d.natural_median) if v is not None]
    h = 250
    x = Scale(min(d.bins[0], *marks), max(d.bins[-1], *marks), PAD_L, W - PAD_R)
    y = Scale(0, max([max(s.histogram) for _, s in sides if s.histogram] + [1]), h - PAD_B, PAD_T, counts=True)
    quantile = f"{100 * (1 - d.natural_rate):.0f}%"
    keys = SimpleNamespace(
        real=_key("bar", "#606060", "grey bars: real images per score range"),
        generated=_key("bar", "#4a78b5", "blue bars: generated images per score range"),
        band=_key("band", "#e3f1e4", f"green band: where {quantile} of natural photos score"),
        median=None if d.natural_median is None else _key(
            "line", "#1e7d32", f"green line: the natural photos' median {d.natural_median:.2f}"),
        threshold=_key("line", "#b71c1c", f"red dashed line: the threshold {d.threshold:.2f}, the natural photos' "
                                          f"{quantile} quantile", dash="6 3"))
    half = (x(d.bins[1]) - x(d.bins[0]) - 2) / len(sides)
    bars = [SimpleNamespace(x=x(d.bins[i]) + 1 + k * half, y=y(c), w=max(1.0, half), h=y.p0 - y(c),
                            color=getattr(keys, name).color, side=name, count=c)
            for k, (name, s) in enumerate(sides) for i, c in enumerate(s.histogram) if c]
    return SimpleNamespace(
        w=W, h=h, left=PAD_L, top=PAD_T, bottom=y.p0, quantile=quantile, band_w=max(0.0, x(d.threshold) - PAD_L),
        threshold=d.threshold, x_threshold=x(d.threshold), label=_mark_label(x(d.threshold), "threshold"),
        median=d.natural_median, x_median=None if d.natural_median is None else x(d.natural_median), keys=keys,
        bars=bars, legend=[k for k in [*(getattr(keys, name) for name, _ in sides), keys.band, keys.median,
                                       keys.threshold] if k],
        axes=_axes(x, y, h, "domain score (higher = less like a natural photo)", "images"))


def render(job: JobRecord, report: Report) -> str:
    from trustfid.prdc import MEANING
    from trustfid.trust import LEVEL_MEANING

    when = report.timing.finished_at or (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(job.finished_at))
                                         if job.finished_at else None)
    return ENV.get_template("report.html.j2").render(
        job=job, report=report, when=when, levels=LEVEL_MEANING, prdc_meaning=MEANING, histogram=histogram(report),
        variance=variance_bars(report), domain=domain_plot(report),
        skipped=sum(len(s.skipped) for s in (report.counts.real, report.counts.generated)))
