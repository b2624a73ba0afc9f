"""The shipped check on sets it never saw, through the product (issue 9).

Held-out sources (data.py: never used to fit or calibrate anything): four natural photos (Grace
Hopper's portrait; brick, grass and a motion-blurred clock) and two medical images (an MR brain slice,
an RGB ultrasound), cut into crops; the natural crops again under gaussian noise at severity 5; and
tiny 25-px face thumbnails (natural, but far below the network's resolution). Each set goes through
``pipeline.extract`` with the default options, and the pairs through ``pipeline.score``, with the
trust_baseline.json the study has just written: what a user would get.
"""

from __future__ import annotations

import numpy as np

from . import analysis as A
from . import data as D

PER_NATURAL, PER_MEDICAL, FACES = 25, 50, 50
QUICK = (3, 4, 6)


def build(quick: bool) -> tuple[dict[str, D.ImageSet], list[str]]:
    per_nat, per_med, faces = QUICK if quick else (PER_NATURAL, PER_MEDICAL, FACES)
    natural = D.crop_set("heldout_natural", D.heldout_natural_sources(), per_nat, seed=31)
    med_sources, notes = D.heldout_medical_sources()
    medical = D.crop_set("heldout_medical", med_sources, per_med, seed=32)
    half = [i % 2 for i in range(len(natural))]
    sets = {
        "natural_a": D.ImageSet("natural_a", [im for im, h in zip(natural.images, half) if h == 0],
                                [s for s, h in zip(natural.sources, half) if h == 0]),
        "natural_b": D.ImageSet("natural_b", [im for im, h in zip(natural.images, half) if h == 1],
                                [s for s, h in zip(natural.sources, half) if h == 1]),
        "medical": medical,
        "natural_noise5": D.corrupted_set(natural, "gaussian_noise", 5),
        "faces": D.tiny_faces(faces),
    }
    return sets, notes


def run(quick: bool, log=print) -> dict:
    from trustfid import score
    from trustfid.extras import shipped_model
    from trustfid.pipeline import extract
    from trustfid.report import domain_scores
    from trustfid.schemas import ScoreOptions

    sets, notes = build(quick)
    options = ScoreOptions(device="cpu", batch_size=16)
    stats = {}
    for name, s in sets.items():
        first = len(sets["natural_a"]) if name == "natural_b" else 0  # natural_b continues natural_a
        stats[name] = extract(np.stack(s.images), "generated", options, first_index=first)
        log(f"held-out {name}: {stats[name].n} images extracted")
    stats["natural"] = stats["natural_a"].merge(stats["natural_b"])
    model = shipped_model(stats["natural"].fingerprint["weights_sha256"], options.resize)
    scores = {k: domain_scores(v, model).tolist() for k, v in stats.items()}
    pairs = {
        "natural vs natural (two halves of the held-out photos' crops)": ("natural_a", "natural_b"),
        "natural vs medical (MR brain, ultrasound)": ("natural", "medical"),
        "natural vs the same natural crops under gaussian noise, severity 5": ("natural", "natural_noise5"),
        "natural vs tiny face thumbnails (25 px, upscaled)": ("natural", "faces"),
    }
    verdicts = {}
    for label, (a, b) in pairs.items():
        rep = score(stats[a], stats[b], options)
        verdicts[label] = {
            "real": a, "generated": b, "n_real": rep.counts.real.used, "n_generated": rep.counts.generated.used,
            "fid": rep.fid, "headline": rep.headline.text, "kid": rep.kid.value if rep.kid else None,
            "fid_infinity": rep.fid_infinity.value if rep.fid_infinity else None,
            "level": rep.trust.level, "reasons": rep.trust.reasons,
            "above": {side: (getattr(rep.domain, side).above, getattr(rep.domain, side).images)
                      for side in ("real", "generated")},
        }
        log(f"held-out {label}: FID {rep.fid:.1f}, trust {rep.trust.level}")
    nat = np.asarray(scores["natural"])
    return {
        "sizes": {k: v.n for k, v in stats.items()}, "sources": {k: sorted(set(v.sources)) for k, v in sets.items()},
        "notes": notes, "scores": scores, "verdicts": verdicts,
        "auroc": {"medical": A.auroc(scores["medical"], nat), "natural_noise5": A.auroc(scores["natural_noise5"], nat),
                  "faces": A.auroc(scores["faces"], nat)},
    }
