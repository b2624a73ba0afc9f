"""How fast a mistake in the generated argument fails, whatever the size of the real set (issue 17's
goal: under 5 s). Each run is the whole `trustfid score REAL BAD` command as a user types it (Python
start-up and imports included), with REAL a folder or a .tar.gz of N small PNGs and BAD a missing
path, an empty folder or a folder of text files. Nothing is extracted in any of them: both sets are
listed and sniffed first (trustfid/pipeline.py ``open_set``).

    python -m bench.fail_fast_bench --images 20000 [--rounds 3]

Prints a Markdown table for bench/RESULTS.md, section (h).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import OUT, load_average
from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]


def real_sets(n: int) -> dict[str, Path]:
    """A folder and a .tar.gz of ``n`` 32x32 PNGs (made once, kept under bench/out)."""
    folder = OUT / f"fail_fast_real_{n}"
    if not (folder / f"{n - 1:06d}.png").exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    archive = folder.with_suffix(".tar.gz")
    if not archive.exists():
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(folder, arcname=".")
    return {"folder": folder, ".tar.gz": archive}


def bad_sets() -> dict[str, Path]:
    root = OUT / "fail_fast_bad"
    (root / "empty").mkdir(parents=True, exist_ok=True)
    (root / "texts").mkdir(exist_ok=True)
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / "texts" / name).write_text("a caption, not an image")
    return {"missing path": root / "missing", "empty folder": root / "empty", "3 text files": root / "texts"}


def run(real: Path, bad: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "app.cli", "score", str(real.relative_to(ROOT)),
                        str(bad.relative_to(ROOT))], capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - t0, p.returncode, p.stderr.strip().splitlines()[-1] if p.stderr else ""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000, help="images in the real set (default 20000)")
    p.add_argument("--rounds", type=int, default=3, help="runs per case; the median is reported")
    a = p.parse_args(argv)
    reals, bads = real_sets(a.images), bad_sets()
    load0 = load_average()
    rows = []
    for real_kind, real in reals.items():
        for bad_kind, bad in bads.items():
            runs = [run(real, bad) for _ in range(a.rounds)]
            assert all(rc == 2 for _, rc, _ in runs), runs
            times = [t for t, _, _ in runs]
            rows.append(f"| {real_kind}, {a.images:,} images | {bad_kind} | {statistics.median(times):.2f} s "
                        f"| {max(times):.2f} s | {runs[0][2][:90]}… |")
    m = describe()
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, GPU: {m['gpu'] or 'none'}; Python "
          f"{m['python']}, torch {m['torch']}; load average {load0:.1f} before, {load_average():.1f} after.\n")
    print("| real set | generated argument | median | slowest | the error (start) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
