"""FRD beside FID on the held-out medical sources (issue 15; docs/VALIDATION.md, "FRD beside FID"): the
range of each distance on the same pairs of sets, so a reader can see what an FRD of 5 or 8 means.

    python -m bench.validation.frd_study [--per-set 60]

The sets are the study's held-out medical crops (domain_sets.heldout: halves a and b, 256 px, the same
sources in both halves; never used to fit anything), written as 8-bit PNG under bench/out/frd_study and
scored by the engine as a user's folders are (FID: the plain network, no MC passes; FRD: frd-score v1).
Pairs, each against the reference half a:

- same sources: half b (other crops of the same acquisitions);
- one modality against itself and against another: the MR crops of half a against the MR crops of half
  b, and against the CT and the ultrasound crops of half b;
- corruptions: half b under each of the study's five ImageNet-C families (data.FAMILIES) at severities
  1, 3 and 5 (a generator that blurs, adds noise, loses contrast, compresses or pixelates).

Prints Markdown for docs/VALIDATION.md and writes docs/validation/frd.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from bench.common import OUT
from bench.validation import data as D
from bench.validation import domain_sets as DS
from bench.validation.sources import BY_NAME
from trustfid import score
from trustfid.pipeline import compute_stats

ROOT = Path(__file__).resolve().parents[2]
SEVERITIES = (1, 3, 5)
OPTIONS = {"metrics": ["fid", "frd"], "passes": 0, "device": "cpu", "bootstrap_resamples": 50, "seed": 0}


def _write(images: list[np.ndarray], folder: Path) -> Path:
    if not (folder / f"{len(images) - 1:04d}.png").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            Image.fromarray(np.asarray(im, np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def _modality(source: str) -> str:
    return BY_NAME[source].group if source in BY_NAME else "?"


def sets(per_set: int) -> tuple[dict[str, Path], dict[str, int]]:
    """name -> folder of PNGs; and the number of images of each."""
    held = DS.heldout(per_set)
    assert not held.notes, held.notes
    root = OUT / f"frd_study_{per_set}"
    a, b = held.sets["medical_a"], held.sets["medical_b"]
    folders = {"reference: held-out medical, half a": _write(a.images, root / "a"),
               "same sources: half b": _write(b.images, root / "b")}
    for name, half in (("a", a), ("b", b)):
        for modality in ("MR", "CT", "US"):
            ims = [im for im, s in zip(half.images, half.sources) if _modality(s) == modality]
            if len(ims) >= 4:
                folders[f"{modality} {name}"] = _write(ims, root / f"{modality}_{name}")
    for f, family in enumerate(D.FAMILIES):
        for severity in SEVERITIES:
            ims = [D.corrupt(np.asarray(im, np.uint8), family, severity, (f, i)) for i, im in enumerate(b.images)]
            folders[f"{family} {severity}"] = _write(ims, root / f"{family}_{severity}")
    return folders, {k: len(list(v.glob("*.png"))) for k, v in folders.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-set", type=int, default=60, help="crops per half (default 60)")
    args = p.parse_args(argv)
    t0 = time.time()
    folders, counts = sets(args.per_set)
    stats = {k: compute_stats(v, OPTIONS) for k, v in folders.items()}
    ref_name = "reference: held-out medical, half a"
    pairs = [(ref_name, k) for k in folders if k != ref_name and not k.startswith(("MR", "CT", "US"))]
    if "MR a" in folders:
        pairs += [("MR a", k) for k in ("MR b", "CT b", "US b") if k in folders]
    rows = []
    for real, gen in pairs:
        r = score(stats[real], stats[gen], OPTIONS)
        rows.append({"real": real, "generated": gen, "n_real": counts[real], "n_generated": counts[gen],
                     "fid": r.fid, "fid_ci95": r.headline.sampling_ci95, "frd": r.frd.value,
                     "frd_ci95": r.frd.sampling_ci95, "frd_features": r.frd.features,
                     "trust": r.trust.level, "reference_domain": r.trust.reference_domain})
    spearman = {}
    for family in D.FAMILIES:
        same = next(x for x in rows if x["generated"] == "same sources: half b")
        line = [same] + [next(x for x in rows if x["generated"] == f"{family} {s}") for s in SEVERITIES]
        sev = [0, *SEVERITIES]
        spearman[family] = {m: float(spearmanr(sev, [x[m] for x in line]).statistic) for m in ("fid", "frd")}
    out = {"per_set": args.per_set, "options": OPTIONS, "rows": rows, "spearman_severity": spearman,
           "minutes": (time.time() - t0) / 60}
    dest = ROOT / "docs" / "validation" / "frd.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")

    def ci(v):
        return f"{v[0]:.3g}–{v[1]:.3g}" if v else "—"

    print("| real | generated | images | FID | FID 95% | FRD | FRD 95% | trust |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['real']} | {x['generated']} | {x['n_real']} / {x['n_generated']} | {x['fid']:.1f} | "
              f"{ci(x['fid_ci95'])} | {x['frd']:.3f} | {ci(x['frd_ci95'])} | {x['trust']} |")
    print()
    print("| family | Spearman ρ (severity 0, 1, 3, 5) FID | FRD |")
    print("|---|---|---|")
    for family, s in spearman.items():
        print(f"| {family} | {s['fid']:.2f} | {s['frd']:.2f} |")
    print(f"\n{out['minutes']:.1f} min; wrote {dest.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
