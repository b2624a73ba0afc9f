"""What a metric is (plugins.py registers them): ``Plugin``, and the ``Context`` the report builder hands it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FEATURES = "features"  # per-image work: the extractor's features (the FID, KID, PRDC, domain check, copy prints)
RADIOMICS = "radiomics"  # per-image work: radiomic features (the FRD)


@dataclass
class Context:
    """What the report builder hands every metric: the job's options (resolved for its extractor), the
    extractor (None when no network ran), the device of the float64 linear algebra, the progress callback,
    and the sections made so far."""

    options: Any
    extractor: Any = None
    device: Any = "cpu"
    progress: Any = None
    sections: dict = field(default_factory=dict)


class Plugin:
    """One metric (see the module docstring)."""

    name: str = ""
    fields: tuple[str, ...] = ()  # the Report fields a built-in metric fills; empty: Report.extra_metrics[name]
    uses: frozenset[str] = frozenset()  # the per-image work it reads (FEATURES, RADIOMICS)

    def wanted(self, options) -> bool:
        return True

    def needs(self, options) -> frozenset[str]:
        """The per-image work a job with these options runs for this metric (job.work_of)."""
        return self.uses if self.wanted(options) else frozenset()

    def section(self, real, generated, ctx: Context) -> dict:
        raise NotImplementedError

    def absent(self, options) -> dict:
        return dict.fromkeys(self.fields)

    def headline(self, sections: dict) -> tuple[dict, str | None, list[str]]:
        """Its part of the report's headline, from the sections made: (schemas.Headline fields, a sentence,
        warnings); by default none."""
        return {}, None, []
