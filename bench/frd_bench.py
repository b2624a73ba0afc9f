"""FRD throughput (issue 15): `trustfid score --metrics frd` against frd-score's own command on the same
images and cores, and what the FRD adds to a FID job. Each run is a whole command as a user types it
(Python start-up, imports, process start-up and both sets included); the variants run in turn within
each round (A B C ... A B C ...), and each ratio is the median of its per-round ratios.

    python -m bench.frd_bench --images 40 [--rounds 3]

Images: ``--images`` crops per set of the validation study's held-out medical sources
(bench/validation/domain_sets.heldout, halves a and b, 256 px), written as 8-bit PNG.

Variants:
- trustfid: `trustfid score A B --metrics frd` (radiomics in the decode processes: one per core);
- trustfid_1_worker: the same with TRUSTFID_DECODE_WORKERS=1 (for the scaling with cores);
- frd_score_default: `python -m frd_score A B` (its default: cpu_count - 2 processes, at least 1);
- frd_score_matched: the same with `--num_workers` = the core count;
- fid / fid_frd: `trustfid score A B --metrics fid` and `--metrics fid,frd` (T = 20 passes, the
  defaults): what the FRD adds to a FID job.

Prints Markdown for bench/RESULTS.md, section (i).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import OUT, load_average
from bench.machine import describe
from trustfid.loader import available_cores

ROOT = Path(__file__).resolve().parents[1]


def image_sets(n: int) -> tuple[Path, Path]:
    """Two folders of ``n`` 8-bit PNG crops of the held-out medical sources (made once under bench/out)."""
    root = OUT / f"frd_medical_{n}"
    a, b = root / "a", root / "b"
    if not (b / f"{n - 1:04d}.png").exists():
        from bench.validation import domain_sets as DS

        held = DS.heldout(n)
        assert not held.notes, held.notes
        for folder, key in ((a, "medical_a"), (b, "medical_b")):
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(held.sets[key].images[:n]):
                Image.fromarray(np.asarray(im, np.uint8)).save(folder / f"{i:04d}.png")
    return a, b


def variants(a: Path, b: Path, cores: int) -> dict[str, tuple[list[str], dict]]:
    trustfid = [sys.executable, "-m", "app.cli", "score", str(a), str(b), "-q", "--device", "cpu"]
    frd = [sys.executable, "-m", "frd_score", str(a), str(b)]
    return {
        "trustfid": (trustfid + ["--metrics", "frd"], {}),
        "trustfid_1_worker": (trustfid + ["--metrics", "frd"], {"TRUSTFID_DECODE_WORKERS": "1"}),
        "frd_score_default": (frd, {}),
        "frd_score_matched": (frd + ["--num_workers", str(cores)], {}),
        "fid": (trustfid + ["--metrics", "fid"], {}),
        "fid_frd": (trustfid + ["--metrics", "fid,frd"], {}),
    }


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    found = re.search(r"FRD \(v1\): (\S+)|FRD (\d+\.\d+)", p.stdout)
    return wall, (found.group(1) or found.group(2)) if found else ""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=40, help="images per set (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every variant; medians are reported")
    p.add_argument("--only", help="comma-separated variants to run (default: all)")
    args = p.parse_args(argv)
    cores = available_cores()
    a, b = image_sets(args.images)
    cases = variants(a, b, cores)
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only.split(",")}
    load0 = load_average()
    times: dict[str, list[float]] = {k: [] for k in cases}
    values: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, (cmd, env) in cases.items():
            wall, value = run(cmd, env)
            times[name].append(wall)
            values[name] = value
    images = 2 * args.images

    def ratio(x: str, y: str) -> float:  # how many times faster x is than y: median of per-round ratios
        return statistics.median(ty / tx for tx, ty in zip(times[x], times[y]))

    m = describe()
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, GPU: {m['gpu'] or 'none'}; Python "
          f"{m['python']}, torch {m['torch']}; {args.images} + {args.images} images; {args.rounds} rounds; "
          f"load average {load0:.1f} before, {load_average():.1f} after.\n")
    print("| variant | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " | median | images/s | FRD |")
    print("|---|" + "---|" * (args.rounds + 3))
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | " + " | ".join(f"{t:.1f} s" for t in ts) + f" | {med:.1f} s | {images / med:.2f} | "
              f"{values[name]} |")
    print()
    for x, y, what in (("trustfid", "frd_score_default", "trustfid / frd-score with its defaults"),
                       ("trustfid", "frd_score_matched", f"trustfid / frd-score with --num_workers {cores}"),
                       ("trustfid", "trustfid_1_worker", f"trustfid with {cores} decode workers / with 1")):
        if x in times and y in times:
            print(f"- {what}: **{ratio(x, y):.2f}x** (per round: "
                  + ", ".join(f"{ty / tx:.2f}" for tx, ty in zip(times[x], times[y])) + ")")
    if "fid" in times and "fid_frd" in times:
        print(f"- the FRD's cost in a FID job: fid,frd takes {1 / ratio('fid_frd', 'fid'):.2f}x the time of fid "
              f"alone (+{statistics.median(times['fid_frd']) - statistics.median(times['fid']):.1f} s)")


if __name__ == "__main__":
    main()
