"""The domain check (issue 14): the per-image score that tells natural photos from images the FID
network's features do not describe, fitted on the training sources and never on a held-out one.

Everything here was fixed before the first fit on the study's sources (docs/VALIDATION.md, "The
domain check"):

- data: every form (domain_sets.VARIANTS: full size, 128, 64 and 32 px, grayscale, JPEG) of
  ``CROPS`` crops of every training source; natural = label 0, medical = label 1;
- candidates (``CANDIDATES``), all linear: logistic regression (L2, classes weighted equally) on
  standardised log batch-norm terms (trustfid/domain.py), on the principal components of the
  standardised square-root pool3 embedding, or both, as the sum of the two models' scores, each
  standardised by the natural training images' scores. Each is collapsed into one linear function
  of the log terms and of sqrt(pool3) (trustfid.domain.DomainModel);
- cross-validation: leave one source out (every form of every crop of a source is scored by a model
  fitted without that source);
- the choice: the best cross-validated per-image AUROC, natural (every form) against medical (every
  form); among candidates within ``TOLERANCE`` of it, the fewest parameters;
- the threshold: the (1 - ``NATURAL_RATE``) quantile of the natural training images' out-of-fold
  scores; the set rule's constants (``RULE``) are the issue-9 study's, unchanged.
"""

from __future__ import annotations

import hashlib

import numpy as np

from trustfid.domain import RAW_INPUTS, STAGES, DomainModel, embedding_dot, embedding_features, model_inputs

from . import analysis as A

KL_EARLY = [f"log_kl:{s}" for s in STAGES[:5]]
KL_ALL = [f"log_kl:{s}" for s in STAGES]
TERMS = [f"log_{t}:{s}" for s in STAGES for t in ("m", "v")]
NORM = "log_norm"

CANDIDATES: dict[str, dict] = {
    "KL early stages + norm (the issue-9 model)": {"inputs": KL_EARLY + [NORM], "embedding": False},
    "KL all stages + norm": {"inputs": KL_ALL + [NORM], "embedding": False},
    "mean and variance terms, all stages + norm": {"inputs": TERMS + [NORM], "embedding": False},
    "embedding (32 components)": {"inputs": [], "embedding": True},
    "mean and variance terms + norm + embedding": {"inputs": TERMS + [NORM], "embedding": True},
}
C_TERMS = 1.0
C_EMBEDDING = 0.1
COMPONENTS = 32
CROPS = 4
TOLERANCE = 0.01
NATURAL_RATE = 0.10  # the share of natural images above the threshold (its quantile)
RULE = {"alpha": 0.01, "fraction_medium": 0.3, "fraction_low": 0.5}
QUANTILES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.99]


def parameters(candidate: dict) -> int:
    return len(candidate["inputs"]) + (COMPONENTS if candidate["embedding"] else 0)


def _logistic(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=10_000).fit(x, y)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    center, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    return center, scale


def fit(candidate: dict, raw: np.ndarray, emb: np.ndarray, y: np.ndarray) -> dict:
    """A candidate fitted on (raw batch-norm statistics, sqrt-pool3 rows, labels), as the linear
    DomainModel spec trust_baseline.json ships."""
    names = candidate["inputs"]
    spec = {"inputs": list(names), "center": [], "scale": [], "coef": [], "intercept": 0.0, "embedding": None}
    natural = y == 0
    if names:
        x = model_inputs(raw, names)
        center, scale = _standardise(x)
        m = _logistic((x - center) / scale, y, C_TERMS)
        s = m.decision_function((x - center) / scale)
        mu, sd = s[natural].mean(), s[natural].std()
        spec.update(center=center.tolist(), scale=scale.tolist(), coef=(m.coef_[0] / sd).tolist(),
                    intercept=float((m.intercept_[0] - mu) / sd))
    if candidate["embedding"]:
        from sklearn.decomposition import PCA

        center, scale = _standardise(emb)
        z = (emb - center) / scale
        pca = PCA(COMPONENTS, random_state=0).fit(z)
        m = _logistic(pca.transform(z), y, C_EMBEDDING)
        beta = pca.components_.T @ m.coef_[0]  # decision = b0 + beta . (z - pca.mean_)
        s = m.decision_function(pca.transform(z))
        mu, sd = s[natural].mean(), s[natural].std()
        w = beta / scale / sd
        const = (m.intercept_[0] - beta @ (center / scale + pca.mean_) - mu) / sd
        spec["intercept"] += float(const)
        spec["embedding"] = {"id": hashlib.sha256(np.asarray(w, "<f8").tobytes()).hexdigest()[:12],
                             "weights": w.tolist()}
    return spec


def score(spec: dict, raw: np.ndarray, emb: np.ndarray) -> np.ndarray:
    model = DomainModel(spec)
    return model.score(raw, embedding_dot(emb, model.embedding) if model.embedding is not None else None)


def loso(candidate: dict, raw: np.ndarray, emb: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Out-of-fold scores, one fold per source."""
    out = np.zeros(len(y))
    for g in np.unique(groups):
        test = groups == g
        out[test] = score(fit(candidate, raw[~test], emb[~test], y[~test]), raw[test], emb[test])
    return out


def choose(results: dict[str, dict]) -> tuple[str, str]:
    best = max(r["auroc"] for r in results.values())
    close = [k for k, r in results.items() if r["auroc"] >= best - TOLERANCE]
    chosen = min(close, key=lambda k: (parameters(CANDIDATES[k]), -results[k]["auroc"]))
    return chosen, (f"best cross-validated AUROC {best:.3f}; {len(close)} candidate(s) within {TOLERANCE}; "
                    f"fewest parameters among them: {chosen}")


def side_level(above: np.ndarray) -> str:
    """The set rule (trustfid/trust.py) on one set's above/not-above flags: natural, partly_outside, outside."""
    from scipy.stats import binom

    n, k = len(above), int(np.sum(above))
    p = float(binom.sf(k - 1, n, NATURAL_RATE)) if k > 0 else 1.0
    if p < RULE["alpha"] and k / n >= RULE["fraction_low"]:
        return "outside"
    if p < RULE["alpha"] and k / n >= RULE["fraction_medium"]:
        return "partly_outside"
    return "natural"


def _source_auroc(s: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    keys = np.unique(groups)
    means = [s[groups == g].mean() for g in keys]
    labels = [y[groups == g][0] for g in keys]
    return A.auroc([m for m, lab in zip(means, labels) if lab == 1], [m for m, lab in zip(means, labels) if lab == 0])


def evaluate(s: np.ndarray, y: np.ndarray, groups: np.ndarray, variants: np.ndarray, threshold: float) -> dict:
    """Per-image AUROC (all forms; each natural form against every medical image), per-source AUROC,
    the share above the threshold per form and class, and each source's set verdict."""
    nat, med = s[y == 0], s[y == 1]
    forms = [v for v in dict.fromkeys(variants.tolist())]
    return {
        "auroc": A.auroc(med, nat), "auroc_sources": _source_auroc(s, y, groups),
        "auroc_by_form": {v: A.auroc(med, s[(y == 0) & (variants == v)]) for v in forms
                          if np.any((y == 0) & (variants == v))},
        "above_by_form": {v: {"natural": float(np.mean(s[(y == 0) & (variants == v)] > threshold)),
                              "medical": float(np.mean(s[(y == 1) & (variants == v)] > threshold))}
                          for v in forms if np.any((y == 0) & (variants == v)) and np.any((y == 1) & (variants == v))},
        "sources": {str(g): {"medical": bool(y[groups == g][0]), "images": int(np.sum(groups == g)),
                             "above": int(np.sum(s[groups == g] > threshold)), "mean": float(s[groups == g].mean()),
                             "level": side_level(s[groups == g] > threshold)} for g in np.unique(groups)},
    }


def run(raw: np.ndarray, plain: np.ndarray, y: np.ndarray, groups: np.ndarray, variants: np.ndarray,
        log=print) -> dict:
    """Signals alone, every candidate under leave-one-source-out CV, the choice, the shipped model and
    its threshold, from the training images' raw statistics and plain features."""
    emb = embedding_features(plain)
    signals = {}
    for name in [f"log_kl:{s}" for s in STAGES] + [NORM]:
        v = model_inputs(raw, [name])[:, 0]
        signals[name] = {"auroc": A.auroc(v[y == 1], v[y == 0]), "auroc_sources": _source_auroc(v, y, groups)}
    cands = {}
    for name, cand in CANDIDATES.items():
        s = loso(cand, raw, emb, y, groups)
        thr = float(np.quantile(s[y == 0], 1 - NATURAL_RATE))
        cands[name] = {**evaluate(s, y, groups, variants, thr), "parameters": parameters(cand), "oof": s.tolist(),
                       "threshold": thr}
        c = cands[name]
        log(f"domain candidate {name}: CV AUROC {c['auroc']:.3f} (sources {c['auroc_sources']:.3f})")
    chosen, why = choose(cands)
    spec = fit(CANDIDATES[chosen], raw, emb, y)
    oof = np.asarray(cands[chosen]["oof"])
    q = [float(np.quantile(oof[y == 0], p)) for p in QUANTILES]
    return {"signals": signals, "candidates": cands, "chosen": chosen, "why": why, "model": spec,
            "threshold": float(np.quantile(oof[y == 0], 1 - NATURAL_RATE)), "natural_quantiles": q,
            "raw_inputs": list(RAW_INPUTS)}
