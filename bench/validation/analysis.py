"""Numbers of the study: Spearman rho against severity, AUROC, MC-FID per pass, and the rule that
chooses the default MC setting."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from trustfid.frechet import frechet_distance
from trustfid.stats import Moments

SEVERITY_AXIS = [0, 1, 2, 3, 4, 5]

# The goals of the validation issue.
GOAL_RHO_VAR = 0.9  # mean latent variance: rho >= 0.9 ...
GOAL_RHO_STD = 0.8  # MC-FID std: rho >= 0.8 ...
GOAL_FAMILIES = 4  # ... in at least 4 of 5 families
GOAL_AUROC = 0.9


def spearman(values) -> float:
    v = np.asarray(values, np.float64)
    if np.allclose(v, v[0]):
        return 0.0
    return float(sps.spearmanr(SEVERITY_AXIS, v).statistic)


def auroc(positive, negative) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann-Whitney U / n1 n2)."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    ranks = sps.rankdata(np.concatenate([pos, neg]))
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def gaussian(rows: np.ndarray):
    m = Moments(rows.shape[1])
    m.add(rows)
    return m.gaussian()


def fid(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(gaussian(a), gaussian(b))


def fid_passes(ref_mc: np.ndarray, mc: np.ndarray) -> np.ndarray:
    """FID_t between the reference and a set under the same sampled network theta_t, per pass."""
    return np.asarray([fid(ref_mc[t], mc[t]) for t in range(len(mc))])


def relative_variance(lv: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Latent variance divided by the image's own mean squared plain feature: dropout noise relative
    to the size of the embedding (a scale-free variant; not what the engine reports)."""
    return lv / np.mean(plain.astype(np.float64) ** 2, axis=1)


def goals_met(row: dict) -> dict:
    fam_var = sum(r >= GOAL_RHO_VAR for r in row["rho_var"].values())
    fam_std = sum(r >= GOAL_RHO_STD for r in row["rho_std"].values())
    return {
        "families_var": fam_var, "families_std": fam_std,
        "var": fam_var >= GOAL_FAMILIES, "std": fam_std >= GOAL_FAMILIES,
        "auroc": row["auroc_var"] >= GOAL_AUROC,
    }


def selection_score(row: dict) -> float:
    """Mean of the three quantities the goals are about, each on a 0..1-like scale: the mean rho of
    the latent variance over families, the mean rho of the MC-FID std, and the AUROC."""
    return float(np.mean([np.mean(list(row["rho_var"].values())),
                          np.mean(list(row["rho_std"].values())), row["auroc_var"]]))


SCORE_TOLERANCE = 0.02


def choose(rows: list[dict]) -> tuple[dict, str]:
    """The stated rule (docs/VALIDATION.md):
    1. keep the settings that meet the most of the three goals;
    2. among them, keep those whose selection score is within SCORE_TOLERANCE of the best;
    3. of those, take the cheapest (tail cost per pass, the fraction of a full forward pass).
    """
    for r in rows:
        g = goals_met(r)
        r["goals"] = int(g["var"]) + int(g["std"]) + int(g["auroc"])
        r["score"] = selection_score(r)
    most = max(r["goals"] for r in rows)
    tier = [r for r in rows if r["goals"] == most]
    best = max(r["score"] for r in tier)
    close = [r for r in tier if r["score"] >= best - SCORE_TOLERANCE]
    chosen = min(close, key=lambda r: (r["tail_cost"], -r["score"]))
    why = (f"{len(tier)} setting(s) meet {most} of 3 goals; best selection score {best:.3f}; "
           f"{len(close)} within {SCORE_TOLERANCE}; cheapest of those: {chosen['setting']}")
    return chosen, why
