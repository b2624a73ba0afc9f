"""A sharded job on 1 worker against 2 workers on one machine (issue 7), side by side in one run.

`trustfid serve --workers N` (embedded Redis, N supervised workers, the API), each worker with
cores / N torch threads (serve's default without GPUs; set here explicitly), so both runs use the
machine's cores; the same job each time: 2 x --images
PNGs (128 x 128) uploaded, ``shard_size`` --shard, T=--passes. Timed from the upload's 202 to the job's
end (the service start is not timed); rounds alternate 1 and 2 workers. Also timed: the unsharded job on
1 worker, the baseline a shard plan must beat.

    python -m bench.shard_bench [--images 96] [--shard 24] [--passes 4] [--rounds 2] [--json PATH]

On a machine with several GPUs each worker would have its own GPU (`--workers` sets
CUDA_VISIBLE_DEVICES); on a CPU machine the workers share the cores, so 2 workers can at best match
1 worker that already uses every core: the figure shows the cost of the shard plan and the merge.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import OUT, make_image_folder
from bench.load_bench import Serve
from bench.machine import describe, write_results


def timed_job(workers: int, real: Path, gen: Path, options: dict, threads: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        serve = Serve(Path(d), nice=0, workers=workers, env={"TRUSTFID_THREADS": str(threads)})
        try:
            t0 = time.perf_counter()
            rec = serve.wait(serve.submit(real, gen, options))
            if rec["state"] != "succeeded":
                raise RuntimeError(f"the job ended {rec['state']}: {rec.get('error')}")
            return time.perf_counter() - t0
        finally:
            serve.stop()


def main(argv=None):
    import os

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--shard", type=int, default=24)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args(argv)
    real = make_image_folder(OUT / f"shard-real-{a.images}", a.images, 128, seed=1)
    gen = make_image_folder(OUT / f"shard-gen-{a.images}", a.images, 128, seed=2)
    cores = os.cpu_count() or 1
    base = {"passes": a.passes, "bootstrap_resamples": 10, "kid_subsets": 10, "device": "cpu"}
    runs = {"unsharded_1_worker": [], "sharded_1_worker": [], "sharded_2_workers": []}
    for _ in range(a.rounds):
        runs["unsharded_1_worker"].append(timed_job(1, real, gen, base, cores))
        runs["sharded_1_worker"].append(timed_job(1, real, gen, {**base, "shard_size": a.shard}, cores))
        runs["sharded_2_workers"].append(timed_job(2, real, gen, {**base, "shard_size": a.shard}, max(1, cores // 2)))
    med = {k: statistics.median(v) for k, v in runs.items()}
    results = {"machine": describe(), "images_per_set": a.images, "shard_size": a.shard, "passes": a.passes,
               "seconds": runs, "median_s": med,
               "two_workers_vs_one": med["sharded_1_worker"] / med["sharded_2_workers"],
               "sharded_vs_unsharded_1_worker": med["sharded_1_worker"] / med["unsharded_1_worker"]}
    for k, v in med.items():
        print(f"{k:22s} {v:7.1f} s  ({2 * a.images / v:.1f} img/s)")
    print(f"2 workers vs 1 (sharded): {results['two_workers_vs_one']:.2f}x faster; "
          f"sharded vs unsharded on 1 worker: {results['sharded_vs_unsharded_1_worker']:.2f}x the time")
    return write_results(a.json, results)


if __name__ == "__main__":
    main()
