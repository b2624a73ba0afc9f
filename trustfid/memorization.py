"""The copy check as a metric (plugins.py): did the generator copy its training images?

Each image's print (copies.batch_prints: 32 x 32 grayscale, 1 KB) is made from the network's input as the
image goes through the FID network (extras.Collector) and kept for every image of a set, in image order,
in the set's per-image arrays: shards merge them by concatenation and saved statistics carry them, as the
domain check's inputs. The report's ``memorization`` section lists the copies, worst first, with the
prints of the worst ``options.thumbnails`` pairs for the page a person reads, and a copy found is a
finding in ``trust.findings``: the FID is right, the generator is the problem."""

from __future__ import annotations

import numpy as np

from .plugin import FEATURES, Plugin

LISTED = 1000  # copies listed in the report (all are counted)


def _thumb(p: np.ndarray) -> str:
    from PIL import Image

    from .report import _png_data_uri

    return _png_data_uri(np.asarray(Image.fromarray(p).resize((64, 64), Image.Resampling.NEAREST)))


def copies_text(m) -> str:
    """The finding's words."""
    worst = ", ".join(f"{c.generated} ≈ {c.reference} ({c.score:.3f})" for c in m.copies[:3])
    return (f"copies found: {m.copies_found} of {m.generated} generated images ({100 * m.share:.1f}%) are near-copies "
            f"of reference images (worst: {worst}): if the reference set is the generator's training data, it "
            "memorised and leaks those images; a finding about the generator, not about this FID")


class _Memorization(Plugin):
    name = "memorization"
    uses = frozenset({FEATURES})  # the prints come from the network input (extras.Collector)
    fields = ("memorization",)

    def wanted(self, options) -> bool:
        return options.fid_on and options.copy_check

    def section(self, r, g, ctx) -> dict:
        from .copies import PRINTS_KEY, find_copies
        from .schemas import CopyPair, Memorization

        ref, gen = r.per_image.get(PRINTS_KEY), g.per_image.get(PRINTS_KEY)
        if ref is None or gen is None or not len(ref) or not len(gen):
            return {"memorization": None}  # statistics saved without prints (an earlier version, another tool)
        check = find_copies(ref, r.names, gen, g.names)
        ref_index, gen_index = ({name: i for i, name in enumerate(s.names)} for s in (r, g))
        shown = ctx.options.thumbnails
        pairs = []
        for k, c in enumerate(check.copies[:LISTED]):
            thumbs = {}
            if k < shown:
                thumbs = dict(generated_print=_thumb(gen[gen_index[c["generated"]]]),
                              reference_print=_thumb(ref[ref_index[c["reference"]]]))
            pairs.append(CopyPair(**c, **thumbs))
        m = Memorization(method=check.method, threshold=check.threshold, generated=len(gen), reference=len(ref),
                         too_plain=int(np.sum(check.plain)), copies_found=len(check.copies), share=check.share,
                         copies=pairs, median_score=float(np.median(check.score)))
        trust = ctx.sections.get("trust")
        if m.copies_found and trust is not None:
            trust.findings.append(copies_text(m))
        return {"memorization": m}


PLUGIN = _Memorization()
