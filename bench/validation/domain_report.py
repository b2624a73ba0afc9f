"""The domain check's plots and tables in docs/VALIDATION.md (issue 14): goals, data, candidates, the
shipped model, the training sources under cross-validation, and the held-out sets through the product."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from . import domain as DM
from . import domain_sets as DS
from . import split
from .sources import BY_NAME, MEDICAL

FORM_LABEL = {"full": "full size", "128": "128 px", "64": "64 px", "32": "32 px", "gray": "grayscale",
              "jpeg": f"JPEG q{DS.JPEG_QUALITY}"}
LEVEL_COLOUR = {"high": "#2e7d32", "medium": "#f9a825", "low": "#c62828"}


def _f(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _yes(b: bool) -> str:
    return "yes" if b else "**no**"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _short(name: str) -> str:
    return name.split(":", 1)[1] if ":" in name else name


# --- plots ----------------------------------------------------------------------------------------

def plots(results: dict, out: Path, plt) -> list[str]:
    dom, ho = results.get("domain"), results.get("heldout")
    if not dom:
        return []
    made = []
    thr = dom["threshold"]
    y, forms = np.asarray(dom["labels"]), np.asarray(dom["variants"])
    oof = np.asarray(dom["candidates"][dom["chosen"]]["oof"])
    rows = [(f"training natural, {FORM_LABEL[v]} (CV)", oof[(y == 0) & (forms == v)], "C2") for v in DS.VARIANTS]
    rows += [(f"training medical, {FORM_LABEL[v]} (CV)", oof[(y == 1) & (forms == v)], "C1")
             for v in ("full", "64", "32")]
    if ho:
        sc = {k: np.asarray(v) for k, v in ho["scores"].items()}
        rows += [(f"held-out natural, {FORM_LABEL[v]}", np.concatenate([sc[f"natural_{v}_a"], sc[f"natural_{v}_b"]]),
                  "C2") for v in DS.VARIANTS]
        rows += [("held-out natural, blurred", sc["natural_blur"], "C7"),
                 ("held-out natural, noisy", sc["natural_noise"], "C7"),
                 ("held-out medical, full size", np.concatenate([sc["medical_a"], sc["medical_b"]]), "C1"),
                 ("held-out medical, 64 px", np.concatenate([sc["medical_64_a"], sc["medical_64_b"]]), "C1")]
    rows = [r for r in rows if len(r[1])]
    fig, ax = plt.subplots(figsize=(10, 0.36 * len(rows) + 1.8))
    rng = np.random.default_rng(0)
    for i, (_, v, colour) in enumerate(rows):
        ax.scatter(v, i + rng.uniform(-0.18, 0.18, len(v)), s=7, alpha=0.5, color=colour)
        ax.plot([np.median(v)] * 2, [i - 0.32, i + 0.32], color="k", lw=1.5)
    ax.axvline(thr, color="k", ls="--", lw=1,
               label=f"threshold: natural training images' {100 * (1 - DM.NATURAL_RATE):.0f}% quantile ({thr:.2f})")
    ax.set_yticks(range(len(rows)), [f"{r[0]} (n={len(r[1])})" for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("domain score (higher = less like a natural photo)")
    ax.set_title("Per-image domain scores by kind and form; black tick: median")
    ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    made.append(_save(fig, out / "domain_scores.png", plt))

    if "severity_curves" in dom:
        fams = list(dom["severity_curves"])
        fig, axes = plt.subplots(1, len(fams), figsize=(17, 3.4), sharey=True)
        for ax, fam in zip(np.atleast_1d(axes), fams):
            ax.plot(range(6), dom["severity_curves"][fam], "o-", color="C0", label="images above the threshold")
            ax.axhline(DM.NATURAL_RATE, color="k", lw=0.6, ls=":", label="natural photos' rate")
            ax.axhline(DM.RULE["fraction_medium"], color="C1", lw=0.8, ls="--", label="partly outside")
            ax.axhline(DM.RULE["fraction_low"], color="C3", lw=0.8, ls="--", label="outside")
            ax.set_title(fam)
            ax.set_xlabel("severity (0 = clean)")
        np.atleast_1d(axes)[0].set_ylabel("share of images")
        np.atleast_1d(axes)[0].legend(fontsize=8)
        fig.suptitle("The shipped score on the first study's corrupted crops (a finding about a generator, never "
                     "a reason for “low”)")
        fig.tight_layout()
        made.append(_save(fig, out / "domain_vs_severity.png", plt))

    if ho:
        v = ho["verdicts"]
        fig, ax = plt.subplots(figsize=(10, 0.42 * len(v) + 1.2))
        for i, (label, r) in enumerate(v.items()):
            ax.barh(i, 1, color=LEVEL_COLOUR[r["level"]])
            ax.text(0.02, i, f"{label}: {r['level']} (expected {r['expected']})" + ("" if r["ok"] else "  ✗"),
                    va="center", fontsize=10, color="white")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.invert_yaxis()
        ax.set_title("Trust verdicts on the held-out sets, through the product (green high, amber medium, red low)")
        fig.tight_layout()
        made.append(_save(fig, out / "verdicts.png", plt))
    return made


def _save(fig, path: Path, plt) -> str:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


# --- tables ---------------------------------------------------------------------------------------

def section(results: dict) -> list[str]:
    dom, ho = results.get("domain"), results.get("heldout")
    if not dom:
        return []
    cand = dom["candidates"][dom["chosen"]]
    parts = ["### Domain check: goals (issue 14)", ""]
    if ho:
        nat_concern = {v: max(_level_of(ho, f"natural_{v}_{h}") for h in "ab") for v in DS.VARIANTS}
        med = {k: s for k, s in ho["per_source"].items() if s["class"] == "medical"}
        med_low = [k for k, s in med.items() if s["level"] == "outside"]
        pairs_ok = [k for k, r in ho["verdicts"].items() if r["ok"]]
        parts += [_table(["goal", "measured", "met"], [
            ["per-image AUROC ≥ 0.9, natural (every form) vs medical, held-out sources",
             f"{ho['auroc']:.3f} (cross-validated on the training sources: {cand['auroc']:.3f})",
             _yes(ho["auroc"] >= 0.9)],
            ["held-out natural photos: no form from 32 px up triggers a domain concern as a set",
             ", ".join(f"{FORM_LABEL[v]} {nat_concern[v]}" for v in DS.VARIANTS),
             _yes(all(c == "natural" for c in nat_concern.values()))],
            ["every held-out medical source rated low as a reference (its crops as one set)",
             f"{len(med_low)} of {len(med)}" + ("" if len(med_low) == len(med) else " (not: " + ", ".join(
                 _short(k) for k in med if k not in med_low) + ")"),
             _yes(len(med_low) == len(med))],
            ["the verdict follows the semantics on the held-out pairs", f"{len(pairs_ok)} of {len(ho['verdicts'])}",
             _yes(len(pairs_ok) == len(ho["verdicts"]))],
        ]), ""]
    parts += _data(dom, ho)
    parts += _candidates(dom)
    parts += _model(results)
    parts += _training_sources(dom)
    if ho:
        parts += _heldout(ho)
    if "severity_curves" in dom:
        rows = [[fam] + [f"{100 * v:.0f}%" for v in c] for fam, c in dom["severity_curves"].items()]
        parts += ["The shipped score on the first study's corruptions (the same 14 test crops at each severity; a "
                  "generated set like these is a finding about its generator, never a reason for “low”): share above "
                  "the threshold, severity 0..5.", "", _table(["family", "0", "1", "2", "3", "4", "5"], rows), ""]
    parts += ["![domain scores](validation/domain_scores.png)", "", "![verdicts](validation/verdicts.png)", "",
              "![domain score vs corruption severity](validation/domain_vs_severity.png)", ""]
    return parts


def _level_of(ho: dict, key: str) -> str:
    """The set rule on one held-out set (its share above the threshold and size)."""
    n = ho["sizes"][key]
    above = int(round(ho["above_by_set"][key] * n))
    return DM.side_level(np.arange(n) < above)


def _data(dom: dict, ho: dict | None) -> list[str]:
    kinds = Counter((s.kind if s.kind != MEDICAL else f"medical, {s.group}", s.name in split.HELDOUT)
                    for s in BY_NAME.values())
    labels = sorted({k for k, _ in kinds})
    rows = [[k, str(kinds[(k, False)]), str(kinds[(k, True)])] for k in labels]
    rows.append(["all", str(sum(v for (_, h), v in kinds.items() if not h)),
                 str(sum(v for (_, h), v in kinds.items() if h))])
    y = np.asarray(dom["labels"])
    parts = ["### Domain check: data", "",
             "Sources by kind (bench/validation/sources.py), in training and held out (bench/validation/split.py, "
             "fixed before any fit):", "", _table(["kind", "training sources", "held-out sources"], rows), "",
             f"Training images: {int(np.sum(y == 0))} natural and {int(np.sum(y == 1))} medical ({DM.CROPS} crops of "
             f"every training source in every form that applies: {', '.join(FORM_LABEL.values())})."]
    if ho:
        parts += [f"Held-out images through the product: {sum(ho['sizes'].values())} in {len(ho['sizes'])} sets."]
    notes = dom.get("notes", []) + (ho.get("notes", []) if ho else [])
    if notes:
        parts += ["Not loaded on this machine: " + "; ".join(notes) + "."]
    return parts + [""]


def _candidates(dom: dict) -> list[str]:
    rows = [[k, _f(v["auroc"], 3)] for k, v in dom["signals"].items()]
    parts = ["### Domain check: each signal alone (training sources, no fitting)", "",
             "AUROC = P(a medical image's value > a natural image's), every form of every training crop.", "",
             _table(["signal", "AUROC"], [[k.replace("log_", ""), v] for k, v in rows]), ""]
    rows = []
    for k, v in dom["candidates"].items():
        ab = v["above_by_form"]
        rows.append([k + (" ⟵ chosen" if k == dom["chosen"] else ""), str(v["parameters"]),
                     f"**{v['auroc']:.3f}**" if v["auroc"] >= 0.9 else f"{v['auroc']:.3f}", _f(v["auroc_sources"]),
                     " / ".join(f"{100 * ab[f]['natural']:.0f}" for f in DS.VARIANTS if f in ab),
                     " / ".join(f"{100 * ab[f]['medical']:.0f}" for f in DS.VARIANTS if f in ab)])
    forms = " / ".join(FORM_LABEL[f] for f in DS.VARIANTS)
    parts += ["### Domain check: candidates, leave-one-source-out cross-validation (training sources)", "",
              f"Every image scored by the model fitted without its source. Choice: {dom['why']}. Shares above each "
              f"candidate's own threshold, by form ({forms}).", "",
              _table(["model", "parameters", "CV AUROC (per image)", "CV AUROC (per source)", "natural above, %",
                      "medical above, %"], rows), ""]
    return parts


def _model(results: dict) -> list[str]:
    spec = results["calibration"]["baseline"]["domain"]
    m = spec["model"]
    rows = [[n.replace("log_", "log "), _f(c), _f(s), _f(w)] for n, c, s, w in
            zip(m["inputs"], m["center"], m["scale"], m["coef"])]
    rows.append(["intercept", "", "", _f(m["intercept"])])
    emb = m.get("embedding")
    parts = ["Shipped model (`trustfid/trust_baseline.json`), fitted on every training image:", "",
             _table(["input", "centre", "scale", "coefficient"], rows), ""]
    if emb:
        w = np.asarray(emb["weights"])
        parts += [f"plus the embedding term w · √pool3 (2048 weights, id `{emb['id']}`, "
                  f"‖w‖ = {np.linalg.norm(w):.3f}).",
                  ""]
    parts += [f"Threshold ({spec['derived']['threshold']}): {spec['threshold']:.3f}. "
              f"Set rule: {spec['derived']['rule']}.",
              ""]
    return parts


def _training_sources(dom: dict) -> list[str]:
    src = dom["candidates"][dom["chosen"]]["sources"]
    rows = [["medical" if v["medical"] else "natural", _short(k), BY_NAME[k].group if k in BY_NAME else "",
             str(v["images"]), str(v["above"]), _f(v["mean"], 2), v["level"]]
            for k, v in sorted(src.items(), key=lambda kv: (kv[1]["medical"], kv[1]["mean"]))]
    return ["Training sources alone (every form of its crops as one set; each scored by the model fitted without it):",
            "", _table(["class", "source", "kind", "images", "above", "mean score", "as a reference"], rows), ""]


def _heldout(ho: dict) -> list[str]:
    parts = ["### Held-out sources through the product", "",
             "`pipeline.extract` and `pipeline.score` with the baseline just written, MC dropout off. Per-image AUROC "
             f"against every held-out medical image: all natural forms {ho['auroc']:.3f}; "
             + ", ".join(f"{FORM_LABEL[k]} {v:.3f}" for k, v in ho["auroc_by_form"].items()) + ".", ""]
    rows = []
    for label, r in ho["verdicts"].items():
        notes = [x.split(": ")[0] if x.startswith("domain check") else x for x in r["reasons"]]
        what = "; ".join(notes + r["findings"])
        rows.append([label, f"{r['n_real']} / {r['n_generated']}", f"{r['fid']:.1f}",
                     f"{r['above']['real'][0]}/{r['above']['real'][1]}, "
                     f"{r['above']['generated'][0]}/{r['above']['generated'][1]}",
                     f"{r['level']}" + ("" if r["ok"] else " ✗"), r["expected"], what])
    header = ["comparison", "images", "FID", "above (real, generated)", "trust", "expected", "reasons and findings"]
    parts += [_table(header, rows), ""]
    rows = [[v["class"], _short(k), BY_NAME[k].group if k in BY_NAME else "", str(v["images"]), str(v["above"]),
             _f(v["mean"], 2), v["level"]]
            for k, v in sorted(ho["per_source"].items(), key=lambda kv: (kv[1]["class"], kv[1]["mean"]))]
    parts += ["Held-out sources alone (natural: every form of their crops; medical: full size):", "",
              _table(["class", "source", "kind", "images", "above", "mean score", "as a reference"], rows), ""]
    return parts
