"""The validation study, end to end (``python -m bench.validation``; see docs/VALIDATION.md).

1. data: real photos and medical images from installed packages, deterministic crops, five
   ImageNet-C corruption families at five severities (data.py);
2. features: every image's trunk once, up to the grid's earliest dropout point; the plain features;
3. grid: every MC setting at the grid's T, from the cached trunk outputs (grid.py);
4. table: Spearman rho of the set's mean latent variance and of the MC-FID std against severity per
   family, natural-vs-medical AUROC of per-image latent variance, and the same for the baselines
   (plain FID, embedding norm, distance to the reference mean);
5. choice: the stated rule (analysis.choose), then the chosen setting confirmed at its default T;
6. domain check (issue 9): per-image signals from the network's own batch-norm statistics, collected
   by forward hooks during step 2; candidate models under leave-one-source-out cross-validation
   (domain.py); KID and FID∞ at small against large N (smallsample.py);
7. calibration: the numbers the trust rule needs, into trustfid/trust_baseline.json; then the
   shipped check, through the product, on held-out sources (heldout.py);
8. outputs: docs/validation/results.json, the PNG plots, and the measured section of
   docs/VALIDATION.md (between its BEGIN/END markers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trustfid.schemas import ScoreOptions

from . import analysis as A
from . import calibrate, heldout, smallsample
from . import data as D
from .grid import DOMAIN_ONLY, GRID, Features, Setting, first_split, latent_variance, run_setting

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "VALIDATION.md"
DOC_DIR = ROOT / "docs" / "validation"
BASELINE = ROOT / "trustfid" / "trust_baseline.json"

# Sizes (crops per source image). 7 natural RGB photos, 4 grayscale photos, up to 12 medical sources.
SIZES = {"reference": 4, "test": 2, "gray": 4, "medical": 4}
QUICK_SIZES = {"reference": 2, "test": 1, "gray": 1, "medical": 1}
GRID_PASSES = 6
# The default T the chosen setting is confirmed at (docs/VALIDATION.md, "Choosing T").
DEFAULT_PASSES = 20
SEED = 0

# Measured share of one full forward pass (CPU, 2 threads) of each stage after the trunk split:
# the tail cost of a setting per pass is the sum of the stages after its first dropout point.
STAGE_COST = {"Mixed_6a": 0.045, "Mixed_6b": 0.074, "Mixed_6c": 0.076, "Mixed_6d": 0.072,
              "Mixed_6e": 0.079, "Mixed_7a": 0.045, "Mixed_7b": 0.065, "Mixed_7c": 0.069}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tail_cost(net, setting: Setting) -> float:
    start = net.stage_index(setting.dropout_at[0]) + 1
    return round(sum(STAGE_COST.get(n, 0.0) for n in net.stage_names[start:]), 3)


def load_network():
    from trustfid.pipeline import network

    net, weights, _ = network(ScoreOptions(device="cpu"))
    # A private copy in channels_last layout: the same function (features within ~1e-5), ~1.6x
    # faster on CPU. check_engine_equivalence() below compares it with pipeline.extract.
    net = copy.deepcopy(net).to(memory_format=torch.channels_last).eval()
    return net, weights


def model_input(images):
    from trustfid.preprocess import to_model_input

    return to_model_input([im.astype(np.float32) for im in images], "clean").contiguous(
        memory_format=torch.channels_last)


def extract_features(net, sets: dict[str, list[np.ndarray]], splits: dict[str, int], batch: int = 32,
                     probe=None) -> Features:
    """Trunk outputs and plain features of every set; with a ``probe`` (trustfid.domain.DomainProbe)
    also the raw per-image domain inputs, observed during the same single pass."""
    feats = Features()
    with torch.inference_mode():
        for name, images in sets.items():
            split = splits[name]
            hs, fs, ds = [], [], []
            for i in range(0, len(images), batch):
                with probe.active() if probe else contextlib.nullcontext():
                    h = net.forward_range(model_input(images[i:i + batch]), 0, split)
                    f = net.pool3(net.forward_range(h, split, len(net.stage_names))).float()
                hs.append(h)
                fs.append(f.numpy())
                if probe:
                    ds.append(probe.take(f))
            feats.trunk[name] = torch.cat(hs)
            feats.split[name] = split
            feats.plain[name] = np.concatenate(fs)
            if probe:
                feats.domain[name] = np.concatenate(ds)
    return feats


def plain_features(net, images: list[np.ndarray], batch: int = 32) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([net(model_input(images[i:i + batch])).float().numpy()
                               for i in range(0, len(images), batch)])


def check_engine_equivalence(net, images: list[np.ndarray], settings: list[Setting], probe,
                             passes: int = 2) -> tuple[float, float]:
    """Max relative differences between the study's per-image latent variance (cached trunk, passes
    stacked into one batch) and domain inputs (one pass, hooks) and the engine's pipeline.extract on
    the same images. Guards the study against measuring something other than the product."""
    from trustfid.job import open_job
    from trustfid.pipeline import extract

    worst, worst_domain = 0.0, 0.0
    arr = np.stack(images).astype(np.uint8)
    for setting in settings:
        opts = setting.options(passes, seed=SEED).model_copy(update={"batch_size": 2})
        stats = extract(arr, "generated", open_job(opts))
        engine = stats.latent_variance
        split = first_split(net, [setting])
        feats = extract_features(net, {"x": images}, {"x": split}, probe=probe)
        ours = latent_variance(run_setting(net, feats, setting, {"x": 1}, range(passes))["x"])
        worst = max(worst, float(np.max(np.abs(ours - engine) / engine)))
        d_engine = stats.per_image["domain_inputs"]
        worst_domain = max(worst_domain, float(np.max(np.abs(feats.domain["x"] - d_engine) / np.abs(d_engine))))
    return worst, worst_domain


def halves(mc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Even and odd images of a set (crops are ordered by source, so both halves cover every source)."""
    return mc[..., 0::2, :], mc[..., 1::2, :]


def evaluate(net, setting: Setting, mc: dict[str, np.ndarray], feats: Features, names: dict) -> dict:
    """One row of the table from the MC features of every set that was run."""
    lv = {k: latent_variance(v) for k, v in mc.items()}
    rel = {k: A.relative_variance(lv[k], feats.plain[k]) for k in mc}
    ref = mc["reference"]
    row = {"setting": setting.name, "dropout_at": list(setting.dropout_at), "rate": setting.rate,
           "kind": setting.kind, "mask_mode": setting.mask_mode, "passes": len(ref), "note": setting.note,
           "tail_cost": tail_cost(net, setting)}
    if all(c in mc for c in names["conditions_all"]):
        fid_t = {k: A.fid_passes(ref, mc[k]) for k in names["conditions_all"]}
        row.update({"rho_var": {}, "rho_rel": {}, "rho_std": {}, "rho_cv": {}, "rho_mcmean": {},
                    "curves": {"var": {}, "rel": {}, "std": {}, "cv": {}, "mcmean": {}}})
        for fam in D.FAMILIES:
            conds = ["clean"] + [f"{fam}/{s}" for s in D.SEVERITIES]
            curves = {
                "var": [float(lv[c].mean()) for c in conds],
                "rel": [float(rel[c].mean()) for c in conds],
                "std": [float(fid_t[c].std(ddof=1)) for c in conds],
                "mcmean": [float(fid_t[c].mean()) for c in conds],
            }
            curves["cv"] = [s / m if m > 0 else 0.0 for s, m in zip(curves["std"], curves["mcmean"])]
            for key, values in curves.items():
                row["curves"][key][fam] = values
                row[f"rho_{key}"][fam] = A.spearman(values)
        row["fid_t"] = {k: v.tolist() for k, v in fid_t.items()}
        row["condition_var_mean"] = {k: float(lv[k].mean()) for k in names["conditions_all"]}
    natural = np.concatenate([lv[k] for k in names["natural_eval"]])
    medical = lv["medical"]
    row["auroc_var"] = A.auroc(medical, natural)
    row["auroc_rel"] = A.auroc(rel["medical"], np.concatenate([rel[k] for k in names["natural_eval"]]))
    src = source_means(lv, names)
    row["auroc_var_sources"] = A.auroc(list(src["medical"].values()), list(src["natural"].values()))
    row["source_var_mean"] = src
    row["natural_var_mean"] = float(natural.mean())
    row["medical_var_mean"] = float(medical.mean())
    row["medical_over_natural"] = float(medical.mean() / natural.mean())
    row["per_image"] = {k: lv[k].tolist() for k in names["per_image_sets"]}
    # MC-FID within one domain: two halves of the natural reference, two halves of the medical set
    row["pair_fid_t"] = {}
    for key in ("reference", "medical"):
        a, b = halves(mc[key])
        row["pair_fid_t"][key] = A.fid_passes(a, b).tolist()
    return row


def source_means(values: dict[str, np.ndarray], names: dict) -> dict[str, dict[str, float]]:
    """Mean of a per-image quantity over the crops of each source image, natural and medical."""
    out: dict[str, dict[str, float]] = {"natural": {}, "medical": {}}
    for cls, keys in (("natural", names["natural_eval"]), ("medical", ["medical"])):
        acc: dict[str, list[float]] = {}
        for k in keys:
            for src, v in zip(names["sources"][k], values[k]):
                acc.setdefault(src, []).append(float(v))
        out[cls] = {s: float(np.mean(v)) for s, v in acc.items()}
    return out


def baselines(feats: Features, names: dict) -> dict:
    """Setting-free baselines: plain FID vs the reference, the set's mean embedding norm, and per
    image the embedding norm and the squared distance to the reference's mean embedding."""
    plain = feats.plain
    ref = plain["reference"]
    mu_ref = ref.astype(np.float64).mean(axis=0)
    norm = {k: np.linalg.norm(v.astype(np.float64), axis=1) for k, v in plain.items()}
    dist = {k: np.sum((v.astype(np.float64) - mu_ref) ** 2, axis=1) for k, v in plain.items()}
    fid = {k: A.fid(ref, plain[k]) for k in names["conditions_all"]}
    out = {"rho_fid": {}, "rho_norm": {}, "curves": {"fid": {}, "norm": {}}}
    for fam in D.FAMILIES:
        conds = ["clean"] + [f"{fam}/{s}" for s in D.SEVERITIES]
        out["curves"]["fid"][fam] = [fid[c] for c in conds]
        out["curves"]["norm"][fam] = [float(norm[c].mean()) for c in conds]
        out["rho_fid"][fam] = A.spearman(out["curves"]["fid"][fam])
        out["rho_norm"][fam] = A.spearman(out["curves"]["norm"][fam])
    nat = names["natural_eval"]
    held_out = [k for k in nat if k != "reference"]  # the distance uses the reference's mean
    out["auroc_norm"] = A.auroc(norm["medical"], np.concatenate([norm[k] for k in nat]))
    out["auroc_dist"] = A.auroc(dist["medical"], np.concatenate([dist[k] for k in held_out]))
    src = source_means(norm, names)
    out["auroc_norm_sources"] = A.auroc(list(src["medical"].values()), list(src["natural"].values()))
    out["fid"] = fid
    out["per_image_norm"] = {k: norm[k].tolist() for k in names["per_image_sets"]}
    a, b = halves(plain["reference"])
    c, d = halves(plain["medical"])
    out["pair_fid"] = {"reference": A.fid(a, b), "medical": A.fid(c, d)}
    # set-level distance to natural photos: the plain FID of each set against the reference
    out["fid_to_reference"] = {k: A.fid(ref, plain[k]) for k in ("clean", "gray", "medical")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.validation", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and 3 settings: a smoke run; writes only under bench/out/validation")
    p.add_argument("--grid-passes", type=int, default=GRID_PASSES)
    p.add_argument("--default-passes", type=int, default=DEFAULT_PASSES)
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default docs/validation, or bench/out/validation with --quick)")
    p.add_argument("--from-results", type=Path, default=None,
                   help="skip the network: redo calibration, plots and the document from a results.json")
    p.add_argument("--no-docs", action="store_true",
                   help="write results.json and plots to --out only; leave docs/ and trust_baseline.json alone")
    args = p.parse_args(argv)
    quick = args.quick
    out = args.out or (ROOT / "bench" / "out" / "validation" if quick else DOC_DIR)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        results = json.loads(args.from_results.read_text())
    else:
        results = measure(args, quick)
        # kept before calibration, so that a later step's failure can be redone with --from-results
        keep = ROOT / "bench" / "out" / "validation_measured.json"  # git-ignored
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text(json.dumps(results) + "\n")
    finish(results, out, write_docs=not (quick or args.no_docs))
    return 0


def measure(args, quick: bool) -> dict:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {timings[name]} s")
        return time.perf_counter()

    grid = [GRID[1], GRID[2], GRID[8]] if quick else GRID
    domain_only = [] if quick else DOMAIN_ONLY
    sizes = QUICK_SIZES if quick else SIZES

    t0 = time.perf_counter()
    data = D.build(sizes["reference"], sizes["test"], sizes["gray"], sizes["medical"])
    sets: dict[str, list[np.ndarray]] = {"reference": data.reference.images, "clean": data.test.images}
    for fam in D.FAMILIES:
        for sev in D.SEVERITIES:
            sets[f"{fam}/{sev}"] = D.corrupted_set(data.test, fam, sev).images
    sets["gray"] = data.gray.images
    sets["medical"] = data.medical.images
    names = {
        "conditions_all": ["clean"] + [f"{f}/{s}" for f in D.FAMILIES for s in D.SEVERITIES],
        "natural_eval": ["reference", "clean", "gray"],
        "per_image_sets": ["reference", "clean", "gray", "medical"],
        "domain_sets": ["reference", "clean", "gray", "medical"],
        "sources": {"reference": data.reference.sources, "clean": data.test.sources,
                    "gray": data.gray.sources, "medical": data.medical.sources},
    }
    set_tags = {k: (0 if k == "reference" else 1) for k in sets}
    n_images = sum(len(v) for v in sets.values())
    log(f"data: {n_images} images in {len(sets)} sets" + ("; " + "; ".join(data.notes) if data.notes else ""))
    t0 = lap("data", t0)

    net, weights = load_network()
    from trustfid.domain import DomainProbe
    probe = DomainProbe(net)
    threads = torch.get_num_threads()
    t0 = lap("network", t0)

    eq, eq_domain = check_engine_equivalence(net, data.test.images[:3], [GRID[2], GRID[8]], probe)
    log(f"study loop vs pipeline.extract: max relative difference of per-image latent variance {eq:.2e}, "
        f"of domain inputs {eq_domain:.2e}")
    if eq > 1e-3 or eq_domain > 1e-3:
        raise SystemExit(f"the study's loop disagrees with the engine ({eq:.2e}, {eq_domain:.2e}); fix it before "
                         "trusting the table")
    t0 = lap("engine_check", t0)

    split_all = first_split(net, grid)
    split_domain = first_split(net, grid + domain_only)
    splits = {k: (split_domain if k in names["domain_sets"] else split_all) for k in sets}
    feats = extract_features(net, sets, splits, probe=probe)
    t0 = lap("trunk_and_plain", t0)

    domain_results = measure_domain(net, probe, feats, quick, log)
    t0 = lap("domain", t0)

    pools = smallsample.sets(quick)
    small = smallsample.run({k: plain_features(net, v) for k, v in pools.items()}, quick)
    t0 = lap("kid_fid_infinity", t0)

    base = baselines(feats, names)
    rows, mcs = [], {}
    for setting, tags in [(s, set_tags) for s in grid] + [
            (s, {k: set_tags[k] for k in names["domain_sets"]}) for s in domain_only]:
        ts = time.perf_counter()
        mc = run_setting(net, feats, setting, tags, range(args.grid_passes))
        row = evaluate(net, setting, mc, feats, names)
        row["seconds"] = round(time.perf_counter() - ts, 1)
        rows.append(row)
        mcs[setting.name] = mc
        log(f"{setting.name}: " + (f"var rho {fmt(row['rho_var'])} | std rho {fmt(row['rho_std'])} | "
                                   if "rho_var" in row else "") +
            f"AUROC {row['auroc_var']:.3f} (sources {row['auroc_var_sources']:.3f}) | {row['seconds']} s")
    t0 = lap("grid", t0)

    chosen, why = A.choose([r for r in rows if "rho_var" in r])
    log(f"chosen: {why}")
    setting = next(s for s in grid if s.name == chosen["setting"])
    extra = run_setting(net, feats, setting, set_tags, range(args.grid_passes, args.default_passes))
    mc = {k: np.concatenate([mcs[setting.name][k], extra[k]]) for k in extra}
    confirmed = evaluate(net, setting, mc, feats, names)
    confirmed["goals_detail"] = A.goals_met(confirmed)
    log(f"confirmed at T={args.default_passes}: var rho {fmt(confirmed['rho_var'])} | std rho "
        f"{fmt(confirmed['rho_std'])} | AUROC {confirmed['auroc_var']:.3f}")
    # per-image latent variance at the grid's T vs the default T: is the grid's T enough to rank?
    lv_grid = np.concatenate([latent_variance(mcs[setting.name][k]) for k in names["per_image_sets"]])
    lv_full = np.concatenate([latent_variance(mc[k]) for k in names["per_image_sets"]])
    from scipy.stats import spearmanr
    confirmed["rank_agreement_grid_vs_default_T"] = float(spearmanr(lv_grid, lv_full).statistic)
    # per-image latent variance of every set at the chosen setting and default T (domain-model input)
    confirmed["per_image_all"] = {k: latent_variance(v).tolist() for k, v in mc.items()}
    t0 = lap("confirm", t0)
    timings["measure_total"] = round(time.perf_counter() - t_start, 1)

    return {
        "machine": machine(threads), "sizes": {k: len(v) for k, v in sets.items()},
        "crops_per_source": sizes, "notes": data.notes, "grid_passes": args.grid_passes,
        "default_passes": args.default_passes, "engine_check_max_rel_diff": eq,
        "engine_check_domain_max_rel_diff": eq_domain,
        "domain": domain_results,
        "sources_all": {k: list(v) for k, v in sources_of(data).items()}, "smallsample": small,
        "baselines": base, "grid": rows, "chosen": chosen["setting"], "choice": why,
        "confirmed": confirmed, "timings_s": timings, "weights_sha256": weights.sha256,
        "sources": {k: sorted(set(v)) for k, v in names["sources"].items()}, "quick": quick,
    }


def measure_domain(net, probe, feats, quick: bool, log) -> dict:
    """The domain study (bench/validation/domain.py) on every form of the training sources' crops; then,
    descriptively, the share of the first study's corrupted crops the chosen score puts above its
    threshold, by severity."""
    from trustfid.domain import DomainModel

    from . import domain as DM
    from . import domain_sets as DS

    items, notes = DS.training(1 if quick else DM.CROPS)
    log(f"domain study: {len(items)} training images" + ("; " + "; ".join(notes) if notes else ""))
    images = [it.image for it in items]
    raws, plains = [], []
    with torch.inference_mode():
        for i in range(0, len(images), 32):
            with probe.active():
                f = net(model_input(images[i:i + 32])).float()
            plains.append(f.numpy())
            raws.append(probe.take(f))
    raw, plain = np.concatenate(raws), np.concatenate(plains)
    y = np.array([int(it.medical) for it in items])
    groups = np.array([it.source for it in items])
    variants = np.array([it.variant for it in items])
    out = DM.run(raw, plain, y, groups, variants, log=log)
    model = DomainModel(out["model"])

    def above(key: str) -> float:
        emb = model.embedding_term(feats.plain[key]) if model.embedding is not None else None
        return float(np.mean(model.score(feats.domain[key], emb) > out["threshold"]))

    if all(f"{f}/5" in feats.domain for f in D.FAMILIES):
        out["severity_curves"] = {f: [above("clean")] + [above(f"{f}/{k}") for k in D.SEVERITIES] for f in D.FAMILIES}
    out.update(labels=y.tolist(), variants=variants.tolist(), groups=groups.tolist(), notes=notes,
               sources_natural=len(set(groups[y == 0])), sources_medical=len(set(groups[y == 1])))
    return out


def sources_of(data) -> dict[str, list[str]]:
    """The source image of every crop of every study set (corrupted sets: the test crops')."""
    out = {"reference": data.reference.sources, "clean": data.test.sources, "gray": data.gray.sources,
           "medical": data.medical.sources}
    for fam in D.FAMILIES:
        for sev in D.SEVERITIES:
            out[f"{fam}/{sev}"] = data.test.sources
    return out


def finish(results: dict, out: Path, write_docs: bool) -> None:
    t0 = time.perf_counter()
    calib = calibrate.calibrate(results)
    results["calibration"] = calib
    baseline_path = BASELINE if write_docs else out / "trust_baseline.json"
    baseline_path.write_text(json.dumps(calib["baseline"], indent=2) + "\n")
    log(f"wrote {baseline_path}")
    if "heldout" not in results:  # the shipped check through the product, on sources it never saw
        from trustfid import trust

        trust.BASELINE_FILE = baseline_path
        trust.baseline.cache_clear()
        th = time.perf_counter()
        results["heldout"] = heldout.run(results.get("quick", False), log=log)
        results["timings_s"]["heldout"] = round(time.perf_counter() - th, 1)
        results["timings_s"]["measure_total"] = round(results["timings_s"].get("measure_total", 0)
                                                      + results["timings_s"]["heldout"], 1)
    from . import report
    report.plots(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if write_docs:
        report.write_markdown(results, DOC)
        log(f"wrote {DOC.relative_to(ROOT)}")
    results["timings_s"]["report"] = round(time.perf_counter() - t0, 1)
    total = results["timings_s"].get("measure_total", 0) + results["timings_s"]["report"]
    log(f"total {total:.0f} s ({total / 60:.1f} min)")


def fmt(d: dict) -> str:
    return " ".join(f"{v:+.2f}" for v in d.values())


def machine(threads: int) -> dict:
    from bench.machine import describe

    m = describe()
    m["torch_threads"] = threads
    try:
        m["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    return m


if __name__ == "__main__":
    sys.exit(main())
