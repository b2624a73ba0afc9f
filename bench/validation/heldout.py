"""The shipped check on sources it never saw, through the product (issue 14).

The held-out sets (domain_sets.heldout: every source of split.HELDOUT, cut into two disjoint halves of
at least 100 images, in every form) go through ``pipeline.extract`` and the pairs through
``pipeline.score``, with the trust_baseline.json the study has just written: what a user would get.
MC dropout is off (``passes=0``): the verdict does not use it, and the first study measured the
network interval (docs/VALIDATION.md, "MC FID within one domain").
"""

from __future__ import annotations

import numpy as np

from . import analysis as A
from . import domain_sets as DS
from .domain import side_level

PER_SET, QUICK_PER_SET = 100, 6

# (label, real, generated, what the semantics say: "high" or "medium only for the sample size",
# "not low", "low")
PAIRS: list[tuple[str, str, str, str]] = [
    *[(f"natural vs natural, {v}", f"natural_{v}_a", f"natural_{v}_b", "high")
      for v in ("full", "128", "64", "32", "gray", "jpeg")],
    ("natural vs a generator at 64 px", "natural_full_a", "natural_64_b", "not low"),
    ("natural vs a generator at 32 px", "natural_full_a", "natural_32_b", "not low"),
    ("natural vs a blurry generator", "natural_full_a", "natural_blur", "not low"),
    ("natural vs a noisy generator", "natural_full_a", "natural_noise", "not low"),
    ("natural vs medical images as generated", "natural_full_a", "medical_b", "not low"),
    ("medical vs medical", "medical_a", "medical_b", "low"),
    ("medical vs medical, 64 px", "medical_64_a", "medical_64_b", "low"),
]


def options():
    from trustfid.schemas import ScoreOptions

    return ScoreOptions(device="cpu", batch_size=16, passes=0)


def extract_sets(sets: dict, log=print) -> dict:
    """Each held-out set through pipeline.extract (the engine, as a user's arrays)."""
    from trustfid.job import open_job
    from trustfid.pipeline import extract

    stats, job = {}, open_job(options())
    for name, s in sets.items():
        stats[name] = extract(np.stack(s.images), "generated", job)
        log(f"held-out {name}: {stats[name].n} images extracted")
    return stats


SAMPLE_SIZE = ("only ", "the sampling interval")  # how the sample-size concerns begin (trustfid/trust.py)


def verdict_ok(level: str, expected: str, reasons: list[str]) -> bool:
    if expected == "low":
        return level == "low"
    if expected == "not low":
        return level != "low"
    concerns = [r for r in reasons if not r.startswith(("domain check:", "no MC-dropout"))]
    return level == "high" or (level == "medium" and all(r.startswith(SAMPLE_SIZE) for r in concerns))


def run(quick: bool, log=print) -> dict:
    from trustfid import score
    from trustfid.extras import shipped_model
    from trustfid.report import domain_scores
    from trustfid.trust import baseline

    held = DS.heldout(QUICK_PER_SET if quick else PER_SET)
    stats = extract_sets(held.sets, log)
    any_stats = next(iter(stats.values()))
    model = shipped_model(any_stats.provenance["weights_sha256"], options().resize)
    scores = {k: domain_scores(v, model) for k, v in stats.items()}
    threshold = baseline()["domain"]["threshold"]

    verdicts = {}
    for label, a, b, expected in PAIRS:
        rep = score(stats[a], stats[b], options())
        t = rep.trust
        verdicts[label] = {
            "real": a, "generated": b, "expected": expected, "n_real": rep.counts.real.used,
            "n_generated": rep.counts.generated.used, "fid": rep.fid, "level": t.level,
            "reference_domain": t.reference_domain, "reasons": t.reasons, "findings": t.findings,
            "above": {side: (getattr(rep.domain, side).above, getattr(rep.domain, side).images)
                      for side in ("real", "generated")},
            "ok": verdict_ok(t.level, expected, t.reasons),
        }
        ok = "as expected" if verdicts[label]["ok"] else "NOT as expected"
        log(f"held-out {label}: FID {rep.fid:.1f}, trust {t.level} ({ok})")

    natural_keys = [k for k in scores if k.startswith("natural_") and k.endswith(("_a", "_b"))]
    medical_keys = [k for k in scores if k.startswith("medical")]
    nat = np.concatenate([scores[k] for k in natural_keys])
    med = np.concatenate([scores[k] for k in medical_keys])
    by_form = {v: A.auroc(med, np.concatenate([scores[f"natural_{v}_{h}"] for h in "ab"])) for v in DS.VARIANTS}
    sources: dict[str, dict] = {}
    for keys, cls in ((["medical_a", "medical_b"], "medical"), ([f"natural_{v}_{h}" for v in DS.VARIANTS
                                                                 for h in "ab"], "natural")):
        per: dict[str, list[float]] = {}
        for k in keys:
            for src, sc in zip(held.sets[k].sources, scores[k]):
                per.setdefault(src, []).append(float(sc))
        for src, sc in per.items():
            v = np.asarray(sc)
            sources[src] = {"class": cls, "images": len(v), "above": int(np.sum(v > threshold)),
                            "mean": float(v.mean()), "level": side_level(v > threshold)}
    return {
        "sizes": {k: v.n for k, v in stats.items()}, "notes": held.notes,
        "sources": {k: sorted(set(v.sources)) for k, v in held.sets.items()},
        "scores": {k: v.tolist() for k, v in scores.items()}, "verdicts": verdicts,
        "auroc": A.auroc(med, nat), "auroc_by_form": by_form,
        "above_by_set": {k: float(np.mean(v > threshold)) for k, v in scores.items()},
        "per_source": sources,
    }
