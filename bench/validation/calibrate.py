"""From the study's measurements to the numbers the trust rule needs (trustfid/trust_baseline.json).

All at the chosen MC setting and the default T (the confirmed row). The rules, stated once here and
in docs/VALIDATION.md, are fixed before looking at which set they flag:

- ``latent_variance_mean`` (the baseline): the mean per-image latent variance over every natural
  crop of the study (reference, test-clean and grayscale photos).
- ``variance_ratio_medium``: the upper 97.5% limit of the natural range — exp(mean + 1.96 sd) of
  log(source mean / baseline) over the natural source photos. A set above it has a latent variance
  that clean natural content is unlikely to produce.
- ``variance_ratio_low``: ``variance_ratio_medium`` times the median, over the five corruption
  families, of (mean latent variance at severity 5 / the same crops clean): above the natural range
  by as much as severe corruption moves natural photos.
"""

from __future__ import annotations

import time

import numpy as np

from . import domain as DM

Z975 = 1.959964
MIXED_SET = 24


def calibrate(results: dict) -> dict:
    conf = results["confirmed"]
    per_image = conf["per_image"]
    natural = np.concatenate([per_image[k] for k in ("reference", "clean", "gray")])
    base_value = float(natural.mean())

    src = conf["source_var_mean"]
    nat_ratio = {s: v / base_value for s, v in src["natural"].items()}
    med_ratio = {s: v / base_value for s, v in src["medical"].items()}
    logs = np.log(list(nat_ratio.values()))
    medium = float(np.exp(logs.mean() + Z975 * logs.std(ddof=1)))
    sev5 = {fam: c[5] / c[0] for fam, c in conf["curves"]["var"].items()}
    low = medium * float(np.median(list(sev5.values())))

    fid_t = {k: np.asarray(v) for k, v in conf["fid_t"].items()}
    pairs = {}
    for key, label in (("reference", "natural (two halves of the reference)"),
                       ("medical", "medical (two halves of the medical set)")):
        v = np.asarray(conf["pair_fid_t"][key])
        pairs[label] = {"fid": results["baselines"]["pair_fid"][key], "mean": float(v.mean()),
                        "std": float(v.std(ddof=1)), "cv": float(v.std(ddof=1) / v.mean())}
    clean = fid_t["clean"]
    pairs["natural (test clean vs reference)"] = {"fid": results["baselines"]["fid"]["clean"],
                                                  "mean": float(clean.mean()), "std": float(clean.std(ddof=1)),
                                                  "cv": float(clean.std(ddof=1) / clean.mean())}
    cvs = [float(v.std(ddof=1) / v.mean()) for v in fid_t.values()] + [p["cv"] for p in pairs.values()]
    medical_ratio = float(np.mean(per_image["medical"]) / base_value)

    measured_with = {"dropout_at": conf["dropout_at"], "dropout_rate": conf["rate"],
                     "dropout_kind": conf["kind"], "mask_mode": conf["mask_mode"], "passes": conf["passes"],
                     "seed": 0, "resize": "clean", "weights_sha256": results["weights_sha256"]}
    baseline = {
        "latent_variance_mean": base_value,
        "natural_images": int(len(natural)),
        "measured_with": measured_with,
        "thresholds": {"variance_ratio_medium": round(medium, 4), "variance_ratio_low": round(low, 4)},
        "rules": {
            "variance_ratio_medium": "upper 97.5% limit of the natural range: exp(mean + 1.96 sd) of "
                                     f"log(per-source mean / baseline) over {len(nat_ratio)} natural photos",
            "variance_ratio_low": "variance_ratio_medium x the median over 5 corruption families of "
                                  "(set mean at severity 5 / same crops clean) = "
                                  f"{medium:.3f} x {np.median(list(sev5.values())):.3f}",
        },
        "study": {
            "document": "docs/VALIDATION.md",
            "generated": time.strftime("%Y-%m-%d"),
            "natural_source_ratio_range": [round(min(nat_ratio.values()), 3), round(max(nat_ratio.values()), 3)],
            "medical_source_ratio_range": [round(min(med_ratio.values()), 3), round(max(med_ratio.values()), 3)],
            "medical_set_ratio": round(medical_ratio, 3),
            "natural_vs_medical_auroc": round(conf["auroc_var"], 3),
            "severity5_over_clean": {k: round(v, 3) for k, v in sev5.items()},
            "mc_fid_cv_range": [round(min(cvs), 4), round(max(cvs), 4)],
        },
    }

    # What the old rule (latent variance against its natural range; replaced by the domain check,
    # kept here for the comparison) says on the study's own sets.
    def level(real: float | None, generated: float) -> dict:
        worst, reasons = 0.0, []
        for name, mean in (("real", real), ("generated", generated)):
            if mean is None:
                continue
            ratio = mean / base_value
            if ratio >= low or ratio >= medium:
                worst = max(worst, 1.0 if ratio >= low else 0.5)
                reasons.append(f"latent variance of the {name} set is {ratio:.1f}x the natural-image baseline")
        lvl = "low" if worst >= 1.0 else "medium" if worst > 0 else "high"
        return {"level": lvl, "reasons": reasons or ["none"]}

    ref_mean = float(np.mean(per_image["reference"]))
    on_sets = {
        "natural: reference vs test (clean)": level(ref_mean, float(np.mean(per_image["clean"]))),
        "natural: reference vs grayscale photos": level(ref_mean, float(np.mean(per_image["gray"]))),
        "medical vs medical (halves of the medical set)": level(float(np.mean(per_image["medical"][0::2])),
                                                                float(np.mean(per_image["medical"][1::2]))),
    }
    for fam, curve in conf["curves"]["var"].items():
        on_sets[f"{fam} severity 5 vs reference"] = level(ref_mean, curve[5])
    for s, v in sorted(src["medical"].items()):
        on_sets[f"medical source alone: {s}"] = level(None, v)
    # operating points: which sources and sets a threshold flags
    rng = np.random.default_rng(0)
    mixed = float(np.percentile([rng.choice(natural, MIXED_SET).mean() / base_value for _ in range(20000)], 97.5))
    points = []
    for label, t in ((f"97.5% limit of mixed natural sets of {MIXED_SET} images (not used)", mixed),
                     ("variance_ratio_medium", medium), ("variance_ratio_low", low)):
        points.append({
            "threshold": label, "value": t,
            "natural_sources": f"{sum(v >= t for v in nat_ratio.values())} of {len(nat_ratio)}",
            "medical_sources": f"{sum(v >= t for v in med_ratio.values())} of {len(med_ratio)}",
            "mixed_medical_set": bool(medical_ratio >= t),
            "severity5_sets": f"{sum(c[5] / base_value >= t for c in conf['curves']['var'].values())} of "
                              f"{len(conf['curves']['var'])}",
        })
    # the same rule calibrated at every grid setting (grid T): would another setting flag medical sets?
    per_setting = []
    for row in results["grid"]:
        pi = row["per_image"]
        nat_all = np.concatenate([pi[k] for k in ("reference", "clean", "gray")])
        b = float(nat_all.mean())
        nr = np.array(list(row["source_var_mean"]["natural"].values())) / b
        mr = np.array(list(row["source_var_mean"]["medical"].values())) / b
        lg = np.log(nr)
        thr = float(np.exp(lg.mean() + Z975 * lg.std(ddof=1)))
        per_setting.append({"setting": row["setting"], "natural_range": [float(nr.min()), float(nr.max())],
                            "threshold": thr, "medical_range": [float(mr.min()), float(mr.max())],
                            "medical_sources_flagged": f"{int(np.sum(mr >= thr))} of {len(mr)}",
                            "mixed_medical_set": float(np.mean(pi["medical"]) / b)})
    checks = {"medical": on_sets["medical vs medical (halves of the medical set)"]["level"],
              "natural": max((on_sets[k]["level"] for k in on_sets if k.startswith("natural")),
                             key=["high", "medium", "low"].index)}
    dom = domain_calibration(results)
    baseline["domain"] = dom.pop("spec")
    return {"baseline": baseline, "source_ratio": {"natural": nat_ratio, "medical": med_ratio},
            "pairs": pairs, "trust_on_sets": on_sets, "checks": checks,
            "operating_points": points, "per_setting": per_setting, "domain": dom}


def domain_calibration(results: dict) -> dict:
    """The shipped domain check (bench/validation/domain.py, run on the training sources): its model,
    threshold and set rule, for trust_baseline.json."""
    dom = results["domain"]
    n_nat = sum(1 for y in dom["labels"] if y == 0)
    n_med = len(dom["labels"]) - n_nat
    spec = {
        "model": dom["model"],
        "threshold": dom["threshold"],
        "natural_rate": DM.NATURAL_RATE,
        "natural_quantiles": {"q": DM.QUANTILES, "value": dom["natural_quantiles"]},
        "rule": DM.RULE,
        "measured_with": {"resize": "clean", "weights_sha256": results["weights_sha256"]},
        "derived": {
            "model": f"{dom['chosen']}: {n_nat} natural images of {dom['sources_natural']} photos against {n_med} "
                     f"medical images of {dom['sources_medical']} sources, in every form (full size, 128, 64, 32 px, "
                     "grayscale, JPEG); held-out sources never fitted (bench/validation/split.py)",
            "threshold": f"{100 * (1 - DM.NATURAL_RATE):.0f}% quantile of the natural training images' "
                         "leave-one-source-out scores",
            "rule": f"one-sided binomial test against {100 * DM.NATURAL_RATE:.0f}% at alpha {DM.RULE['alpha']}; "
                    f"partly outside from {100 * DM.RULE['fraction_medium']:.0f}% of a set above the threshold, "
                    f"outside from {100 * DM.RULE['fraction_low']:.0f}%",
        },
        "study": {"document": "docs/VALIDATION.md", "generated": time.strftime("%Y-%m-%d"),
                  "auroc_cv": round(dom["candidates"][dom["chosen"]]["auroc"], 3),
                  "auroc_cv_sources": round(dom["candidates"][dom["chosen"]]["auroc_sources"], 3)},
    }
    return {"spec": spec}
