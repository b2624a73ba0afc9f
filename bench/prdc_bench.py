"""Benchmark (j): precision, recall, density and coverage (trustfid/prdc.py) against the prdc package's
``compute_prdc`` on the same rows (2048-d float32, a shared low-rank structure plus noise, like network
features), side by side in one run: time, peak memory growth and the largest difference of the four values.

    python -m bench.prdc_bench [--rows 2048 10000] [--resamples 50]

Ours holds O(BLOCK x n) distances at a time; compute_prdc holds three n x n float32 matrices (1.2 GB at
10,000 rows). The intervals (``--resamples``) are timed at the sizes up to prdc.BOOT_LIMIT.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import time

import numpy as np

from bench.machine import describe
from trustfid import prdc as P

D = 2048


def rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, D)).astype(np.float32) / 8
    return (rng.normal(size=(n, 64)).astype(np.float32) @ basis + rng.normal(size=(n, D)).astype(np.float32) * 0.3)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[2048, 10000])
    ap.add_argument("--resamples", type=int, default=50)
    args = ap.parse_args()
    from prdc import compute_prdc

    print(describe())
    print("| rows per set | ours: values | ours: + intervals | compute_prdc | max abs diff |")
    print("|---|---|---|---|---|")
    for n in args.rows:
        real, gen = rows(n, 1), rows(n, 2) * 1.05
        t = time.perf_counter()
        ours = P.values(real, gen, 5)
        t_ours = time.perf_counter() - t
        t_boot = None
        if n <= P.BOOT_LIMIT:
            t = time.perf_counter()
            P.bootstrap(real, gen, 5, args.resamples, 0)
            t_boot = time.perf_counter() - t
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            theirs = compute_prdc(real, gen, 5)
        t_theirs = time.perf_counter() - t
        diff = max(abs(ours[k] - float(theirs[k])) for k in P.NAMES)
        boot = f"+ {t_boot:.1f} s ({args.resamples} resamples)" if t_boot is not None else "no intervals above 4096"
        print(f"| {n} | {t_ours:.1f} s | {boot} | {t_theirs:.1f} s | {diff:.1e} |", flush=True)
    print(f"peak RSS of the whole run: {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
