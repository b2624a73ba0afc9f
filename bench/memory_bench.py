"""Benchmark (d): peak resident memory (RSS) of a whole score job — goal <= 3 GB for 2,000 images, T=20.

What runs: ``pipeline.score`` of two folders of N/2 PNGs each (real, generated) with T MC passes and
otherwise the shipped default options (``ScoreOptions()``: batch 32, bootstrap, report), in a fresh
Python process, so the peak belongs to that job alone. The child reads its own peak RSS (VmHWM
in /proc/self/status) at every stage change of the job and at the end; the parent cross-checks the
total with getrusage(RUSAGE_CHILDREN).ru_maxrss. The PNGs are small (default 64x64): every image is
resized to 299x299 anyway, so the source size changes neither the network's cost nor the statistics.

Where the memory goes (d = 2048 features, T passes, two sets of n images; trustfid/stats.py and
report.fid_mc):
- while extracting, per set: if n <= d every pass keeps its float32 rows, (1 + T) * n * d * 4 bytes
  (8 KiB per image per pass); if n > d every pass holds a float64 d x d co-moment matrix instead
  (32 MiB per pass) plus fewer than 256 pending rows, and the plain pass also keeps its rows for the
  bootstrap (8 KiB per image, without bound). Both sets are held until the Fréchet step.
- at the Fréchet step, fid_mc takes the passes in groups (report.PASS_GROUP) and asks each pass of
  both sets for its Gaussian: with n <= d that concatenates the rows again (one more copy of a group's
  rows); with n > d it makes a d x d covariance per pass (another 32 MiB per pass and set), and the
  batched Fréchet core stacks the group (several group x 32 MiB float64 temporaries).
- plus Python, torch and the weights, and the network's activations for one batch.

``--stats-model`` measures the statistics and the Fréchet step alone, without the network (fast): in
a fresh process per size it streams random float32 features of two sets of n images through the same
``Moments`` objects extract() uses, then runs report.fid_mc, and compares the memory this adds with
the model (``stats_model_bytes``). It is how the n > d regime is measured, which 2,000 images do not
reach.

    python -m bench.memory_bench [--images 2000] [--size 64] [--passes 20] [--stats-model 1000,2100] [--json PATH]
    --images takes a comma list (e.g. 250,500,1000) to show the trend when 2,000 would take too long.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from bench.common import OUT, gb, load_average, make_image_folder, vm_hwm_bytes
from bench.machine import describe, write_results
from trustfid.inception import FEATURE_DIM as D
from trustfid.report import PASS_GROUP
from trustfid.stats import (
    CHUNK as CHUNK_ROWS,  # rows buffered before a merge once n > d
)


def stats_model_bytes(n: int, passes: int, d: int = D) -> dict:
    """Model of the statistics' memory for two sets of n images each (see the module docstring):
    bytes held when extraction ends, and the peak during fid_mc (held + what that step adds)."""
    group = min(PASS_GROUP, passes)
    row, matrix = d * 4, d * d * 8
    if n <= d:
        held = (1 + passes) * n * row
        added = 2 * group * n * row + 2 * n * d * 8  # a group's rows concatenated; one pair's float64 factors
    else:
        held = n * row + (1 + passes) * (matrix + (n % CHUNK_ROWS) * row)
        added = 2 * group * matrix + 5 * group * matrix  # a group's covariances; the batched core's temporaries
    return {"held": 2 * held, "frechet_peak": 2 * held + added}


# --- children (run in a fresh process each) -------------------------------------------------------

def _child_score(half: int, size: int, passes: int) -> dict:
    from trustfid import pipeline
    from trustfid.schemas import ScoreOptions

    real, generated = _folders(half, size)
    marks, last = [], [None]

    def progress(p):
        key = (p.stage, p.set)
        if key != last[0]:
            marks.append({"stage": p.stage, "set": p.set, "peak_rss_gb": gb(vm_hwm_bytes())})
            last[0] = key

    t0 = time.perf_counter()
    report = pipeline.score(real, generated, ScoreOptions(passes=passes, device="cpu"), progress=progress)
    return {"images": 2 * half, "passes": passes, "wall_s": time.perf_counter() - t0,
            "options": report.config.model_dump(include={"dropout_at", "dropout_rate", "batch_size",
                                                          "bootstrap_resamples"}),
            "used": report.counts.real.used + report.counts.generated.used, "fid": report.fid,
            "stage_peaks": marks, "peak_rss_gb": gb(vm_hwm_bytes())}


def _child_stats(n: int, passes: int) -> dict:
    import numpy as np

    from trustfid import report
    from trustfid.stats import Moments, SetStats

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    rng = np.random.default_rng(0)
    batch = 32
    noise = rng.standard_normal((batch + 64, D), dtype=np.float32)  # reused: the values do not matter
    base = rss()
    sets = []
    for shift in (0.0, 0.5):
        plain, mc = Moments(D, keep_rows=True), [Moments(D) for _ in range(passes)]
        for start in range(0, n, batch):
            rows = min(batch, n - start)
            plain.add(noise[:rows] + shift)
            for t, m in enumerate(mc):
                m.add(noise[t:t + rows] + shift)
        sets.append(SetStats(plain=plain, mc=mc))
    held = vm_hwm_bytes() - base
    report.fid_mc(*sets)
    model = stats_model_bytes(n, passes)
    return {"images_per_set": n, "passes": passes, "held_gb": gb(held),
            "frechet_peak_gb": gb(vm_hwm_bytes() - base),
            "model_held_gb": gb(model["held"]), "model_frechet_peak_gb": gb(model["frechet_peak"])}


def _folders(half: int, size: int):
    return (make_image_folder(OUT / f"mem-{size}px-{half}-real", half, size, seed=1),
            make_image_folder(OUT / f"mem-{size}px-{half}-generated", half, size, seed=2))


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.memory_bench", "--child", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- parent ---------------------------------------------------------------------------------------

def _estimate(target: int, score_runs: list[dict], stats_runs: list[dict], passes: int) -> dict | None:
    """Peak for ``target`` images when no score run reached it: the largest score run's peak (torch,
    weights, activations, its own small statistics) plus what the statistics of target/2 images per
    set add over that run's (measured network-free, minus the model for the small run). A sum of two
    peaks that need not coincide, so it errs high. The score run should fill whole batches (>= 2 x 32
    images), since the activations of a batch are part of the floor."""
    if not score_runs or any(r["images"] >= target for r in score_runs):
        return None
    stats = next((r for r in stats_runs if r["images_per_set"] == target // 2), None)
    if stats is None:
        return None
    run = max(score_runs, key=lambda r: r["images"])
    small = gb(stats_model_bytes(run["images"] // 2, passes)["frechet_peak"])
    value = run["peak_rss_gb"] + stats["frechet_peak_gb"] - small
    return {"images": target, "peak_rss_gb": value,
            "how": f"estimate for {target} images: score peak at {run['images']} images {run['peak_rss_gb']:.2f} GB "
                   f"+ statistics and fid_mc of 2 x {target // 2} images {stats['frechet_peak_gb']:.2f} GB "
                   f"- model of the statistics at {run['images']} images {small:.2f} GB = {value:.2f} GB"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="2000",
                   help="total images (half real, half generated); a comma list for a trend")
    p.add_argument("--size", type=int, default=64, help="side of the source PNGs")
    p.add_argument("--passes", type=int, default=20, help="T, MC passes")
    p.add_argument("--stats-model", default="1000,2100",
                   help="images per set for the network-free check of the statistics' memory ('' to skip)")
    p.add_argument("--target", type=int, default=2000, help="images the goal is about (for the estimate)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", choices=["score", "stats"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child:  # inside the fresh process: measure, print one JSON line
        n = int(a.images)
        out = _child_score(n // 2, a.size, a.passes) if a.child == "score" else _child_stats(n, a.passes)
        print(json.dumps(out))
        return out

    load_before = load_average()
    score_runs = []
    for total in sorted(int(s) for s in a.images.split(",")):
        _folders(total // 2, a.size)  # made here, so the child only scores
        r = _run_child(["score", "--images", str(total), "--size", str(a.size), "--passes", str(a.passes)])
        r["model_stats_gb"] = gb(stats_model_bytes(total // 2, a.passes)["frechet_peak"])
        score_runs.append(r)
        print(f"score {total} images ({total // 2} per set, {a.size}x{a.size} PNG), T={a.passes}: "
              f"peak RSS {r['peak_rss_gb']:.2f} GB in {r['wall_s'] / 60:.1f} min "
              f"(statistics by the model {r['model_stats_gb']:.2f} GB)", flush=True)
    # read now, before the network-free children: the peak of the score children alone
    children_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    stats_runs = []
    for n in [int(s) for s in a.stats_model.split(",") if s.strip()]:
        r = _run_child(["stats", "--images", str(n), "--passes", str(a.passes)])  # n per set
        stats_runs.append(r)
        print(f"statistics only, two sets of {n}, T={a.passes}: +{r['held_gb']:.2f} GB after extraction "
              f"(model {r['model_held_gb']:.2f}), +{r['frechet_peak_gb']:.2f} GB peak with fid_mc "
              f"(model {r['model_frechet_peak_gb']:.2f})", flush=True)
    estimate = _estimate(a.target, score_runs, stats_runs, a.passes)
    if estimate:
        print(estimate["how"], flush=True)
    results = {"machine": describe(), "passes": a.passes, "source_size": a.size, "score": score_runs,
               "stats_model": stats_runs, "target_images": a.target,
               "estimate": estimate, "rusage_children_max_gb": gb(children_max),
               "load_average_1min": {"before": load_before, "after": load_average()}}
    return write_results(a.json, results)


if __name__ == "__main__":
    main()
