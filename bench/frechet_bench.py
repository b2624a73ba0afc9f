"""Benchmark (a): T MC-dropout FIDs at d=2048 — our Fréchet core vs pytorch-fid's
calculate_frechet_distance (scipy sqrtm), on the same statistics, side by side in one run.

Two regimes:
- small sets (n < 2048 images per set, typical of medical data): our nuclear-norm route;
- large sets (10,000 images per set): our Cholesky + eigvalsh route.

pytorch-fid takes ~10-20 s per call at d=2048 on 2 cores, so by default it is timed on
--ref-passes of the T passes and its per-call time is multiplied by T (stated in the output);
--ref-passes T runs it on all of them. The relative difference is checked on every pass both ran.

    python -m bench.frechet_bench [--passes 50] [--small 1000] [--large 10000] [--ref-passes 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.machine import describe, write_results
from trustfid.frechet import frechet_distances
from trustfid.stats import Moments

D = 2048


def pass_stats(n: int, passes: int, seed: int):
    """Per-pass statistics of a synthetic feature set: a shared low-rank structure plus noise,
    perturbed per pass like MC-dropout features are."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, D)).astype(np.float32) / 8
    base = (rng.normal(size=(n, 64)).astype(np.float32) @ basis + rng.normal(size=(n, D)).astype(np.float32) * 0.3
            + np.abs(rng.normal(size=D)).astype(np.float32))
    out = []
    for t in range(passes):
        noise = np.random.default_rng([seed, t]).normal(size=(n, D)).astype(np.float32) * 0.05
        m = Moments(D)
        for i in range(0, n, 1024):
            m.add(base[i:i + 1024] + noise[i:i + 1024])
        out.append(m.gaussian())
    return out


def run_regime(n: int, passes: int, ref_passes: int) -> dict:
    from pytorch_fid.fid_score import calculate_frechet_distance

    real, gen = pass_stats(n, passes, 1), pass_stats(n, passes, 2)
    t0 = time.perf_counter()
    ours = frechet_distances(list(zip(real, gen)))
    t_ours = time.perf_counter() - t0

    ref, t_ref = [], 0.0
    for t in range(min(ref_passes, passes)):
        a, b = real[t], gen[t]
        s1, s2 = a.covariance(), b.covariance()  # pytorch-fid's input: mu and sigma
        t1 = time.perf_counter()
        ref.append(float(calculate_frechet_distance(a.mu, s1, b.mu, s2)))
        t_ref += time.perf_counter() - t1
    per_ref = t_ref / max(len(ref), 1)
    rel = max(abs(o - r) / abs(r) for o, r in zip(ours, ref)) if ref else float("nan")
    return {"images_per_set": n, "passes": passes, "ours_s": t_ours, "ours_per_pass_s": t_ours / passes,
            "pytorch_fid_per_call_s": per_ref, "pytorch_fid_calls_timed": len(ref),
            "pytorch_fid_total_s": per_ref * passes, "speedup": per_ref * passes / t_ours,
            "max_rel_diff": rel}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passes", type=int, default=50)
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=10000)
    p.add_argument("--ref-passes", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    results = {"machine": describe(), "regimes": [run_regime(n, a.passes, a.ref_passes) for n in (a.small, a.large)]}
    for r in results["regimes"]:
        print(f"n={r['images_per_set']:>6}  T={r['passes']}  ours {r['ours_s']:.1f} s  "
              f"pytorch-fid {r['pytorch_fid_total_s']:.1f} s ({r['pytorch_fid_per_call_s']:.2f} s/call x "
              f"{r['passes']}, {r['pytorch_fid_calls_timed']} timed)  speed-up {r['speedup']:.0f}x  "
              f"max rel diff {r['max_rel_diff']:.1e}")
    return write_results(a.json, results)


if __name__ == "__main__":
    main()
