"""Metrics as plug-ins: the report builder (``pipeline.report_from_stats``) asks each registered metric, in
order, for its part of the report, and names none of them.

A metric is one module holding a ``Plugin`` and one call to ``register``. It says:

- ``wanted(options)``: whether a job with these options computes it (``options.metrics``, its own option);
- ``section(real, generated, ctx)``: its report fields, from the two sets' statistics (stats.SetStats:
  the FID network's moments and kept feature rows, the radiomic statistics, the per-image arrays), as a
  dict. A built-in metric lists the ``Report`` fields it fills in ``fields``; a metric registered from
  outside trustfid leaves ``fields`` empty and its dict (JSON values) lands in ``Report.extra_metrics``
  under its ``name``;
- ``absent(options)``: its fields when it is not wanted (by default null).

``ctx.sections`` holds what the metrics before it produced (the FID's ``trust`` for the FRD's hint,
``boot_samples`` for the headline): a metric may read the sections of those registered before it.

Each also says which per-image work it reads (``uses`` / ``needs(options)``: FEATURES, RADIOMICS; job.py) and
its part of the headline (``headline(sections)``).

Built in, in this order: ``fid`` (trustfid/fid.py: the plain FID, MC dropout, the bootstrap, latent
variance, the domain check and the trust level), ``kid`` (KID and FID∞, kid.py), ``frd`` (the FRD and its
precision/recall, frd.py), ``prdc`` (precision, recall, density, coverage, prdc.py) and
``memorization`` (the copy check, memorization.py on copies.py).
docs/METRICS.md shows how to add one, with the example that tests/test_plugins.py registers.
"""

from __future__ import annotations

from . import fid, frd, kid, memorization, prdc
from .plugin import FEATURES, RADIOMICS, Context, Plugin
from .timing import current

__all__ = ["FEATURES", "RADIOMICS", "Context", "Plugin", "headline", "register", "registered", "sections",
           "unregister"]


BUILT_IN = (fid.PLUGIN, kid.PLUGIN, frd.PLUGIN, prdc.PLUGIN, memorization.PLUGIN)  # the headline's order
_registry: dict[str, Plugin] = {p.name: p for p in BUILT_IN}


def register(plugin: Plugin) -> Plugin:
    """Add a metric after those registered before it (the same name replaces it in place)."""
    if not plugin.name or not plugin.name.replace("_", "").isalnum():
        raise ValueError(f"a metric needs a name of letters, digits and _ (got {plugin.name!r})")
    _registry[plugin.name] = plugin
    return plugin


def unregister(name: str) -> None:
    _registry.pop(name, None)


def registered() -> list[Plugin]:
    """Every metric, built-in ones first, in the order they were registered."""
    return list(_registry.values())


def headline(ctx: Context) -> dict:
    """The Headline's fields from the wanted metrics' parts (``Plugin.headline``), their sentences joined in
    registry order."""
    fields, texts, warnings = {"fid": None}, [], []
    for plugin in registered():
        if plugin.wanted(ctx.options):
            part, text, warned = plugin.headline(ctx.sections)
            fields.update(part)
            texts += [text] if text else []
            warnings += warned
    return {**fields, "text": "; ".join(texts), "warnings": warnings}


def sections(real, generated, ctx: Context) -> tuple[dict, dict]:
    """(the Report's fields, the extra_metrics of metrics registered from outside) of every metric."""
    fields, extra = {}, {}
    clock = current()
    for plugin in registered():
        wanted = plugin.wanted(ctx.options)
        if wanted:
            with clock.metric(plugin.name):  # Timing.metrics: each metric's own time
                part = plugin.section(real, generated, ctx)
        else:
            part = plugin.absent(ctx.options)
        ctx.sections.update(part)
        if plugin.fields:
            fields.update({k: v for k, v in part.items() if k in plugin.fields})
        elif wanted:
            extra[plugin.name] = part
    return fields, extra
