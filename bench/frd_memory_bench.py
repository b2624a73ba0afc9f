"""FRD peak memory per image size (issue 28): pyradiomics' filters hold memory in proportion to an
image's pixels, so one large image decides a worker's peak. For each size, a whole command as a user
types it, `trustfid score REAL GEN --metrics frd` (4 + 2 images: two of the given size and two of 256 px in the
reference set, two of 256 px in the other), in a fresh parent that reads the largest resident set of the command
and every process under it (getrusage(RUSAGE_CHILDREN).ru_maxrss). The sizes up to the limit run with
TRUSTFID_MAX_FRD_PIXELS raised to fit; the last row is an 8000 x 8000 image under the default limit, where
it is left out of the FRD before pyradiomics runs.

    python -m bench.frd_memory_bench [--sizes 512,1024,2048,4096]

Prints Markdown for bench/RESULTS.md, section (k).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import OUT, load_average
from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]
MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(code)")


def _image(path: Path, size: int, seed: int) -> None:
    yy, xx = np.ogrid[:size, :size]
    rng = np.random.default_rng(seed)
    texture = 100 * np.sin(xx / (size / 27)) * np.cos(yy / (size / 16)) + rng.normal(0, 12, (size, size))
    Image.fromarray(np.clip(128 + texture, 0, 255).astype(np.uint8)).save(path)


def sets(size: int) -> tuple[Path, Path]:
    root = OUT / f"frd_memory_{size}"
    real, gen = root / "real", root / "gen"
    if not (gen / "1.png").exists():
        for folder in (real, gen):
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            _image(real / f"{i}.png", size, i)
            _image(real / f"small{i}.png", 256, 20 + i)
            _image(gen / f"{i}.png", 256, 10 + i)
    return real, gen


def run(size: int, limit: int | None) -> dict:
    real, gen = sets(size)
    out = OUT / f"frd_memory_{size}.json"
    env = dict(os.environ, **({"TRUSTFID_MAX_FRD_PIXELS": str(limit)} if limit else {}))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "app.cli", "score", str(real), str(gen),
                        "--metrics", "frd", "--bootstrap", "0", "-q", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    frd = json.loads(out.read_text())["frd"]
    return {"size": size, "peak_mb": int(r.stdout.split()[-1]), "wall_s": wall, "used": frd["real"]["used"],
            "skipped": [s["reason"] for s in frd["real"]["skipped"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024,2048,4096")
    args = ap.parse_args()
    before = load_average()
    rows = [run(s, s * s) for s in (int(x) for x in args.sizes.split(","))] + [run(8000, None)]
    print(f"Machine: {describe()}; load average {before:.1f} before, {load_average():.1f} after\n")
    print("| image size | pixels | reference images in the FRD | peak memory (command and its processes) | wall time |")
    print("|---|---|---|---|---|")
    for r in rows:
        left = " (left out: over the default limit)" if r["skipped"] else ""
        print(f"| {r['size']} x {r['size']} | {r['size'] ** 2 / 1e6:.1f} M | {r['used']} of 4{left} | "
              f"{r['peak_mb']:,} MB | {r['wall_s']:.1f} s |")


if __name__ == "__main__":
    main()
