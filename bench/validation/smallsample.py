"""KID and FID∞ at small N against large N, on the same photos (issue 9).

Two pools of ``POOL`` clean crops each of the seven colour photos (other seeds than the rest of the
study), and a third pool: the second one under gaussian blur at severity 2, so that one comparison
has a real difference and one has none. For each N in ``SIZES``, ``REPEATS`` draws of N crops from
each pool (without replacement; at the largest N the whole pools, once): plain FID, KID (the
engine's kid.py, clean-fid's definition) and FID∞ (the engine's kid.py, from those N rows alone).
An unbiased measure gives the same value at every N; the plain FID falls as N grows.
"""

from __future__ import annotations

import numpy as np

from trustfid.kid import fid_infinity, kid

from . import analysis as A
from . import data as D

POOL = 300
SIZES = (25, 50, 100, 200, 300)
REPEATS = 5
QUICK_POOL, QUICK_SIZES = 40, (20, 40)


def sets(quick: bool) -> dict[str, list[np.ndarray]]:
    n = QUICK_POOL if quick else POOL
    rgb = D.natural_rgb_sources()
    per = -(-n // len(rgb))
    a = D.crop_set("pool_a", rgb, per, seed=21)
    b = D.crop_set("pool_b", rgb, per, seed=22)
    blur = D.corrupted_set(b, "gaussian_blur", 2)
    return {"pool_a": a.images[:n], "pool_b": b.images[:n], "pool_b_blur2": blur.images[:n]}


def run(plain: dict[str, np.ndarray], quick: bool, seed: int = 0) -> dict:
    sizes = QUICK_SIZES if quick else SIZES
    rng = np.random.default_rng([seed, 0x5A11])
    out = {"sizes": list(sizes), "repeats": REPEATS, "pool": len(plain["pool_a"]), "pairs": {}}
    for label, other in (("same photos, clean vs clean", "pool_b"), ("clean vs blur severity 2", "pool_b_blur2")):
        a_all, b_all = plain["pool_a"], plain[other]
        rows = []
        for n in sizes:
            full = n >= min(len(a_all), len(b_all))
            vals = {"fid": [], "kid": [], "fid_inf": []}
            for r in range(1 if full else REPEATS):
                a = a_all if full else a_all[np.sort(rng.choice(len(a_all), n, replace=False))]
                b = b_all if full else b_all[np.sort(rng.choice(len(b_all), n, replace=False))]
                vals["fid"].append(A.fid(a, b))
                vals["kid"].append(kid(a, b, seed=r).value)
                fi = fid_infinity(a, b, seed=r)
                vals["fid_inf"].append(fi.value if fi else float("nan"))
            rows.append({"n": n, **{k: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1
                                        else 0.0, "values": v} for k, v in vals.items()}})
        out["pairs"][label] = rows
    return out
