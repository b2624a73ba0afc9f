"""Plots (PNG, matplotlib) and the measured section of docs/VALIDATION.md.

docs/VALIDATION.md has hand-written prose and one generated section between the markers
``<!-- BEGIN MEASURED -->`` and ``<!-- END MEASURED -->``; every run of the study rewrites that
section (and only that section) from results.json, so the tables are always the last run's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import analysis as A
from .data import FAMILIES, SEVERITIES

BEGIN = "<!-- BEGIN MEASURED -->"
END = "<!-- END MEASURED -->"
FAM_SHORT = {"gaussian_noise": "noise", "gaussian_blur": "blur", "jpeg": "jpeg", "contrast": "contrast",
             "pixelate": "pixelate"}


# --- plots -------------------------------------------------------------------------------------

def plots(results: dict, out: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:  # the study extra is not installed: tables only
        print("matplotlib is not installed (pip install 'trustfid[study]'): no plots", flush=True)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "cpu_s" not in results.get("timings_s", {}):  # this process's CPU time so far: the load-free cost
        import resource

        u = resource.getrusage(resource.RUSAGE_SELF)
        results.setdefault("timings_s", {})["cpu_s"] = round(u.ru_utime + u.ru_stime, 1)
        try:
            import os

            results["timings_s"]["load_average_at_report"] = list(os.getloadavg())
        except OSError:
            pass
    conf, base = results["confirmed"], results["baselines"]
    grid = [r for r in results["grid"] if "curves" in r]
    sev = [0] + SEVERITIES

    # 1. latent variance vs severity, relative to the clean set, per family
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), sharey=True)
    for ax, fam in zip(axes, FAMILIES):
        for r in grid:
            v = np.asarray(r["curves"]["var"][fam])
            ax.plot(sev, v / v[0], color="0.75", lw=0.8)
        v = np.asarray(conf["curves"]["var"][fam])
        ax.plot(sev, v / v[0], "o-", color="C0", lw=2, label=f"latent variance ({conf['setting']}, T={conf['passes']})")
        nrm = np.asarray(base["curves"]["norm"][fam])
        ax.plot(sev, (nrm / nrm[0]) ** 2, "s--", color="C3", label="baseline: embedding norm² (no dropout)")
        ax.axhline(1, color="k", lw=0.5)
        ax.set_title(fam)
        ax.set_xlabel("severity (0 = clean)")
    axes[0].set_ylabel("set mean / clean set")
    axes[0].plot([], [], color="0.75", label=f"other grid settings (T={results['grid_passes']})")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Mean latent predictive variance of a corrupted set, relative to the same crops clean")
    fig.tight_layout()
    made.append(_save(fig, out / "variance_vs_severity.png"))

    # 2. MC-FID std vs severity, and the plain FID, both relative to the clean set
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), sharey=True)
    for ax, fam in zip(axes, FAMILIES):
        s = np.asarray(conf["curves"]["std"][fam])
        f = np.asarray(base["curves"]["fid"][fam])
        ax.plot(sev, s / s[0], "o-", color="C0", lw=2, label="std of the MC FID")
        ax.plot(sev, f / f[0], "s--", color="C3", label="baseline: plain FID")
        ax.set_title(fam)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_yscale("log")
    axes[0].set_ylabel("value / value at severity 0")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"MC-FID spread vs the plain FID against the clean reference ({conf['setting']}, T={conf['passes']})")
    fig.tight_layout()
    made.append(_save(fig, out / "fid_std_vs_severity.png"))

    # 3. natural vs medical per-image histograms: latent variance and embedding norm
    nat_keys = ["reference", "clean", "gray"]
    lv_n = np.concatenate([conf["per_image"][k] for k in nat_keys])
    lv_m = np.asarray(conf["per_image"]["medical"])
    no_n = np.concatenate([base["per_image_norm"][k] for k in nat_keys])
    no_m = np.asarray(base["per_image_norm"]["medical"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (a, b, label, auc) in zip(axes, [
            (lv_n, lv_m, "per-image latent variance", conf["auroc_var"]),
            (no_n, no_m, "embedding norm (baseline)", base["auroc_norm"])]):
        bins = np.geomspace(min(a.min(), b.min()) * 0.9, max(a.max(), b.max()) * 1.1, 30)
        ax.hist(a, bins=bins, alpha=0.6, label=f"natural (n={len(a)})", color="C2")
        ax.hist(b, bins=bins, alpha=0.6, label=f"medical (n={len(b)})", color="C1")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_title(f"AUROC medical > natural: {auc:.2f}")
        ax.legend(fontsize=8)
    fig.suptitle(f"Natural vs medical images ({conf['setting']}, T={conf['passes']})")
    fig.tight_layout()
    made.append(_save(fig, out / "natural_vs_medical.png"))

    # 4. latent variance vs embedding norm, per image
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.loglog(no_n, lv_n, "o", ms=4, alpha=0.7, color="C2", label="natural")
    ax.loglog(no_m, lv_m, "^", ms=4, alpha=0.7, color="C1", label="medical")
    slope, icpt = np.polyfit(np.log(no_n), np.log(lv_n), 1)
    xs = np.geomspace(min(no_n.min(), no_m.min()), max(no_n.max(), no_m.max()), 50)
    ax.loglog(xs, np.exp(icpt) * xs ** slope, "k--", lw=1, label=f"natural fit: variance ∝ norm^{slope:.2f}")
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("embedding norm (plain pass)")
    ax.set_ylabel("latent variance")
    ax.legend(fontsize=8)
    ax.set_title("Latent variance follows the embedding's size")
    fig.tight_layout()
    made.append(_save(fig, out / "variance_vs_norm.png"))

    # 5. per-source mean latent variance relative to the natural baseline
    calib = results.get("calibration", {})
    src = conf["source_var_mean"]
    basev = calib.get("baseline", {}).get("latent_variance_mean") or np.mean(lv_n)
    items = sorted([(v / basev, s, "natural") for s, v in src["natural"].items()]
                   + [(v / basev, s, "medical") for s, v in src["medical"].items()])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.barh(range(len(items)), [i[0] for i in items], color=["C2" if i[2] == "natural" else "C1" for i in items])
    ax.set_yticks(range(len(items)), [i[1] for i in items], fontsize=7)
    ax.axvline(1, color="k", lw=0.5)
    th = calib.get("baseline", {}).get("thresholds", {})
    for key, style in (("variance_ratio_medium", "--"), ("variance_ratio_low", ":")):
        if th.get(key):
            ax.axvline(th[key], color="k", ls=style, lw=1, label=key)
    ax.set_xlabel("mean latent variance of the source's crops / natural baseline")
    ax.set_title("Per source image: natural (green) and medical (orange)")
    if th:
        ax.legend(fontsize=8)
    fig.tight_layout()
    made.append(_save(fig, out / "sources.png"))
    made += domain_plots(results, out, plt)
    return made


def domain_plots(results: dict, out: Path, plt) -> list[str]:
    from . import domain_report

    made = domain_report.plots(results, out, plt)
    small = results.get("smallsample")
    if small:
        fig, axes = plt.subplots(1, len(small["pairs"]), figsize=(12, 4))
        for ax, (label, rows) in zip(np.atleast_1d(axes), small["pairs"].items()):
            n = [r["n"] for r in rows]
            for key, name, color in (("fid", "plain FID", "C3"), ("fid_inf", "FID∞", "C0")):
                ax.errorbar(n, [r[key]["mean"] for r in rows], yerr=[r[key]["sd"] for r in rows], fmt="o-",
                            color=color, label=name, capsize=3)
            ax2 = ax.twinx()
            ax2.errorbar(n, [1e3 * r["kid"]["mean"] for r in rows], yerr=[1e3 * r["kid"]["sd"] for r in rows],
                         fmt="s--", color="C2", label="KID ×10³ (right axis)", capsize=3)
            ax2.axhline(0, color="C2", lw=0.5)
            ax.set_xscale("log")
            ax.set_xticks(n, [str(v) for v in n])
            from matplotlib.ticker import NullFormatter
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("images per set (N)")
            ax.set_ylabel("FID")
            ax2.set_ylabel("KID ×10³")
            ax.set_title(label)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=8)
        fig.suptitle(f"Small-sample bias: mean ± sd over {small['repeats']} draws per N "
                     f"(pools of {small['pool']} crops)")
        fig.tight_layout()
        made.append(_save(fig, out / "kid_fid_infinity.png"))
    return made


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


# --- markdown ----------------------------------------------------------------------------------

def _f(x, nd=2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (abs(x) >= 1000 or (abs(x) < 0.01 and x != 0)):
        return f"{x:.3g}"
    return f"{x:.{nd}f}"


def _fams(d: dict, bold_at: float | None = None) -> list[str]:
    out = []
    for fam in FAMILIES:
        v = d.get(fam)
        s = _f(v)
        out.append(f"**{s}**" if bold_at is not None and v is not None and v >= bold_at else s)
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def measured_section(results: dict) -> str:
    conf, base, calib = results["confirmed"], results["baselines"], results["calibration"]
    m = results["machine"]
    t = results["timings_s"]
    sizes = results["sizes"]
    fam_cols = [FAM_SHORT[f] for f in FAMILIES]
    g = conf["goals_detail"]
    parts = [BEGIN, "",
             f"_Generated by `python -m bench.validation` on {time.strftime('%Y-%m-%d')}; do not edit by hand._", ""]

    parts += ["### Run", "",
              f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} with "
              f"{m.get('torch_threads')} threads, no GPU; load average at the end "
              f"{', '.join(f'{x:.1f}' for x in m.get('load_average_at_end', []))} (the machine was shared).",
              f"- Wall time of the one command: {t.get('measure_total', 0) + t.get('report', 0):.0f} s "
              f"({(t.get('measure_total', 0) + t.get('report', 0)) / 60:.1f} min) in all "
              f"(data {t.get('data')}, trunk + plain pass with the domain hooks {t.get('trunk_and_plain')}, "
              f"domain study {t.get('domain')}, "
              f"KID/FID∞ pools {t.get('kid_fid_infinity')}, grid {t.get('grid')}, "
              f"confirmation {t.get('confirm')}, engine check {t.get('engine_check')}, held-out sets through "
              f"the product {t.get('heldout')}; calibration, plots and this document take under a minute "
              "more). "
              f"CPU time of the process (user + system, both torch threads): {t.get('cpu_s', 0):.0f} s "
              f"({t.get('cpu_s', 0) / 60:.1f} min); on a quiet 2-core machine the wall time is at best about half "
              "of it "
              f"(load average {', '.join(f'{x:.1f}' for x in t.get('load_average_at_report', []))} when the "
              "report was written).",
              f"- Images: reference {sizes['reference']}, test {sizes['clean']} per condition × 26 conditions, "
              f"natural grayscale {sizes['gray']}, medical {sizes['medical']} "
              f"({sum(sizes.values())} network inputs in all); plus "
              f"{3 * results['smallsample']['pool'] if results.get('smallsample') else 0} crops for KID/FID∞ "
              "(plain pass "
              f"only) and {sum(v for k, v in results.get('heldout', {}).get('sizes', {}).items())} "
              "held-out images through the product.",
              f"- Grid at T={results['grid_passes']}; chosen setting confirmed at T={results['default_passes']}. "
              f"The study's MC loop matches `pipeline.extract` to {results['engine_check_max_rel_diff']:.1e} "
              f"(max relative difference of per-image latent variance), its domain inputs to "
              f"{results.get('engine_check_domain_max_rel_diff', float('nan')):.1e}.", ""]

    parts += domain_section(results)

    parts += ["### MC-dropout goals of the first study (chosen setting, confirmed at the default T)", "",
              _table(["goal", "measured", "met"], [
                  ["ρ(mean latent variance, severity) ≥ 0.9 in ≥ 4 of 5 families",
                   f"{g['families_var']} of 5 ({', '.join(_fams(conf['rho_var']))})", _yes(g["var"])],
                  ["ρ(std of MC FID, severity) ≥ 0.8 in ≥ 4 of 5 families",
                   f"{g['families_std']} of 5 ({', '.join(_fams(conf['rho_std']))})", _yes(g["std"])],
                  ["natural-vs-medical AUROC of per-image latent variance ≥ 0.9",
                   f"{conf['auroc_var']:.3f} (per source image: {conf['auroc_var_sources']:.3f})", _yes(g["auroc"])],
                  ["trust “low” on the medical set (the rule's latent-variance part)", calib["checks"]["medical"],
                   _yes(calib["checks"]["medical"] == "low")],
                  ["trust “high” on clean natural sets (the rule's latent-variance part; fewer than 50 images "
                   "per set add a sample-size concern on top)", calib["checks"]["natural"],
                   _yes(calib["checks"]["natural"] == "high")],
              ]), ""]

    parts += ["### The grid", "",
              f"ρ = Spearman correlation with severity 0..5 (0 = the clean crops), per family ({', '.join(fam_cols)}). "
              "Bold: meets its goal. AUROC: P(latent variance of a medical image > that of a natural image); "
              "“src”: the same over per-source means (a source = all crops of one image). "
              "Tail cost: the stochastic part's share of a full forward pass, per pass. "
              "Rows without ρ were run on the natural-vs-medical sets only.", ""]
    header = ["setting", "tail cost", "s"] + [f"ρ var {c}" for c in fam_cols] + \
             [f"ρ std {c}" for c in fam_cols] + ["AUROC", "AUROC src", "medical / natural", "goals", "score"]
    rows = []
    confirmed_row = dict(conf, setting=conf["setting"] + f" (T={conf['passes']})", seconds=None,
                         goals=sum(bool(conf["goals_detail"][k]) for k in ("var", "std", "auroc")),
                         score=A.selection_score(conf))
    for r in results["grid"] + [confirmed_row]:
        has = "rho_var" in r
        rows.append([r["setting"] + (" ⟵ chosen" if r["setting"] == results["chosen"] else ""),
                     _f(r["tail_cost"]), _f(r.get("seconds"), 0)]
                    + (_fams(r["rho_var"], A.GOAL_RHO_VAR) if has else ["–"] * 5)
                    + (_fams(r["rho_std"], A.GOAL_RHO_STD) if has else ["–"] * 5)
                    + [_bold(r["auroc_var"], A.GOAL_AUROC, 3), _f(r["auroc_var_sources"], 3),
                       _f(r["medical_over_natural"]), str(r.get("goals", "–")), _f(r.get("score"), 3)])
    parts += [_table(header, rows), ""]
    parts += [f"Choice: {results['choice']}.", ""]

    parts += ["### Baselines (no dropout)", "",
              _table(["baseline"] + [f"ρ {c}" for c in fam_cols] + ["AUROC", "AUROC src"], [
                  ["plain FID against the reference"] + _fams(base["rho_fid"]) + ["–", "–"],
                  ["set mean of the embedding norm"] + _fams(base["rho_norm"]) +
                  [_f(base["auroc_norm"], 3), _f(base["auroc_norm_sources"], 3)],
                  ["squared distance to the reference's mean embedding (per image)"] + ["–"] * 5 +
                  [_f(base["auroc_dist"], 3), "–"],
              ]), ""]
    ftr = base.get("fid_to_reference", {})
    if ftr:
        parts += ["Set-level distance to the natural reference (plain FID against the 28 reference crops): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in ftr.items())
                  + " (test-clean crops come from the same 7 photos as the reference; the grayscale photos "
                  "do not).", ""]

    parts += ["### Variants that need no extra passes", "",
              "ρ of the MC-FID coefficient of variation (std / mean: the spread with the FID's size divided out), "
              "and ρ / AUROC of the relative latent variance (per-image variance divided by the image's mean "
              "squared feature).", ""]
    rows = []
    for r in [x for x in results["grid"] if "rho_cv" in x]:
        rows.append([r["setting"]] + _fams(r["rho_cv"]) + _fams(r["rho_rel"]) + [_f(r["auroc_rel"], 3)])
    parts += [_table(["setting"] + [f"ρ cv {c}" for c in fam_cols] + [f"ρ rel {c}" for c in fam_cols]
                     + ["AUROC rel"], rows), ""]

    parts += [f"### Chosen setting, T={conf['passes']}: the curves", "",
              "Per family and severity 0..5: mean latent variance (×10⁻³), MC-FID mean ± std, plain FID.", ""]
    rows = []
    for fam in FAMILIES:
        c = conf["curves"]
        rows.append([fam, " / ".join(f"{v * 1e3:.2f}" for v in c["var"][fam]),
                     " / ".join(f"{m:.0f}±{s:.1f}" for m, s in zip(c["mcmean"][fam], c["std"][fam])),
                     " / ".join(f"{v:.0f}" for v in base["curves"]["fid"][fam])])
    parts += [_table(["family", "latent variance ×10⁻³", "MC FID mean±std", "plain FID"], rows), ""]
    slope, r = norm_law(results)
    parts += [f"Per-image latent variance against the embedding norm, natural crops: log-log slope {slope:.2f}, "
              f"correlation {r:.2f} (the latent variance largely follows the size of the embedding).", ""]
    parts += [f"Rank agreement (Spearman) of per-image latent variance at T={results['grid_passes']} vs "
              f"T={conf['passes']}: {conf['rank_agreement_grid_vs_default_T']:.3f}.", ""]

    b = calib["baseline"]
    parts += ["### Calibration: the numbers the trust rule uses (trustfid/trust_baseline.json)", ""]
    rows = [[k, _f(v, 3) if isinstance(v, float) else str(v), b["rules"].get(k, "")]
            for k, v in b["thresholds"].items()]
    parts += [_table(["threshold", "value", "derived as"], rows), ""]
    parts += [f"Natural baseline (mean per-image latent variance of {b['natural_images']} natural crops): "
              f"{b['latent_variance_mean']:.5f}.", ""]
    parts += ["Operating points (per source: all crops of one image; the mixed medical set: all 12 sources; "
              "severity-5 sets: the five corrupted test sets at severity 5):", "",
              _table(["threshold (× baseline)", "value", "natural sources flagged", "medical sources flagged",
                      "mixed medical set flagged", "severity-5 sets flagged"],
                     [[o["threshold"], _f(o["value"]), o["natural_sources"], o["medical_sources"],
                       "yes" if o["mixed_medical_set"] else "no", o["severity5_sets"]]
                      for o in calib["operating_points"]]), ""]
    parts += ["The same rule calibrated at every grid setting (T = grid T): no setting puts the mixed medical "
              "set above the natural range.", "",
              _table(["setting", "natural sources (× own baseline)", "threshold", "medical sources",
                      "medical sources flagged", "mixed medical set"],
                     [[x["setting"], f"{x['natural_range'][0]:.2f}–{x['natural_range'][1]:.2f}", _f(x["threshold"]),
                       f"{x['medical_range'][0]:.2f}–{x['medical_range'][1]:.2f}", x["medical_sources_flagged"],
                       _f(x["mixed_medical_set"])] for x in calib["per_setting"]]), ""]
    src_rows = []
    for cls in ("natural", "medical"):
        for s, v in sorted(calib["source_ratio"][cls].items(), key=lambda kv: kv[1]):
            src_rows.append([cls, s, _f(v)])
    parts += ["Per source image, mean latent variance / natural baseline:", "",
              _table(["class", "source", "ratio"], src_rows), ""]
    pr = calib["pairs"]
    parts += ["MC FID within one domain (two halves of a set, every source in both):", "",
              _table(["pair", "plain FID", "MC FID mean", "std", "cv"], [
                  [k, _f(v["fid"], 1), _f(v["mean"], 1), _f(v["std"], 2), _f(v["cv"], 3)] for k, v in pr.items()]), ""]
    parts += ["What the rule says on the study's own sets (both sides the named set's halves, or the "
              "corrupted set against the reference):", "",
              _table(["set", "trust", "reasons"], [[k, v["level"], "; ".join(v["reasons"])]
                                                   for k, v in calib["trust_on_sets"].items()]), ""]

    if results.get("notes"):
        parts += ["Notes: " + "; ".join(results["notes"]), ""]
    parts += ["![latent variance vs severity](validation/variance_vs_severity.png)", "",
              "![MC-FID std vs severity](validation/fid_std_vs_severity.png)", "",
              "![natural vs medical](validation/natural_vs_medical.png)", "",
              "![latent variance vs embedding norm](validation/variance_vs_norm.png)", "",
              "![per source](validation/sources.png)", "", END]
    return "\n".join(parts)


def domain_section(results: dict) -> list[str]:
    from . import domain_report

    parts = domain_report.section(results)
    small = results.get("smallsample")
    if small:
        parts += ["### KID and FID∞ at small N against large N, same photos", "",
                  f"Pools of {small['pool']} crops of the seven colour photos; per N, mean ± sd over "
                  f"{small['repeats']} draws (one at the full pool).", ""]
        for label, rows_ in small["pairs"].items():
            rows = [[str(r["n"]), f"{r['fid']['mean']:.1f} ± {r['fid']['sd']:.1f}",
                     f"{r['fid_inf']['mean']:.1f} ± {r['fid_inf']['sd']:.1f}",
                     f"{1e3 * r['kid']['mean']:.2f} ± {1e3 * r['kid']['sd']:.2f}"] for r in rows_]
            parts += [f"{label}:", "", _table(["N per set", "plain FID", "FID∞", "KID ×10³"], rows), ""]
    parts += ["![KID and FID∞ vs N](validation/kid_fid_infinity.png)", ""]
    return parts


def norm_law(results: dict) -> tuple[float, float]:
    """Log-log slope and correlation of per-image latent variance on embedding norm (natural crops)."""
    keys = ["reference", "clean", "gray"]
    lv = np.log(np.concatenate([results["confirmed"]["per_image"][k] for k in keys]))
    nm = np.log(np.concatenate([results["baselines"]["per_image_norm"][k] for k in keys]))
    return float(np.polyfit(nm, lv, 1)[0]), float(np.corrcoef(nm, lv)[0, 1])


def _yes(b: bool) -> str:
    return "yes" if b else "**no**"


def _bold(v: float, at: float, nd: int) -> str:
    s = _f(v, nd)
    return f"**{s}**" if v >= at else s


def write_markdown(results: dict, doc: Path) -> None:
    section = measured_section(results)
    text = doc.read_text() if doc.exists() else f"# Validation of the trust indicators\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n## Measured\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + section + tail)
