"""How the network's arithmetic runs on each device, scoped to the engine's own calls.

``precision`` (ScoreOptions, CLI ``--precision``):

- ``fp32`` (default): strict IEEE float32. On CUDA, TF32 is switched off for cuDNN convolutions and
  float32 matmuls, which torch leaves on for convolutions by default: with TF32 the FID of a
  published-size set moves at the second decimal (docs/API.md, "Precision on a GPU").
- ``tf32``: TensorFloat-32 convolutions and matmuls on CUDA (Ampere and later); the same as fp32 on
  a CPU.
- ``bf16``: bfloat16 autocast for the network (features come back as float32; the statistics and
  the Fréchet step stay float64 whatever the precision).

The flags are set when the engine enters the network and restored on the way out, so importing or
calling trustfid never changes a caller's global torch settings. On CUDA, cuDNN runs with
``benchmark`` off and ``deterministic`` on, and the engine feeds the network batches of one fixed
shape (``EngineSettings.gpu_batch`` images, the last one padded; ``MCDropout``): cuDNN picks its
kernels by tensor shape, so a fixed shape makes a report independent of ``batch_size`` on a given
GPU and torch version. The precision is part of the statistics' provenance: statistics of different
precisions never combine.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def _cudnn_fp32(tf32: bool):
    """cuDNN convolutions in TF32 or IEEE float32, deterministic, no autotuning; restored after.
    Newer torch has per-backend ``fp32_precision`` strings and refuses a mix of them with the legacy
    ``allow_tf32`` flag, so the API the running torch offers is the one used."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    new_api = conv is not None and hasattr(conv, "fp32_precision")
    saved_conv = conv.fp32_precision if new_api else cudnn.allow_tf32
    saved = (cudnn.deterministic, cudnn.benchmark, torch.get_float32_matmul_precision())
    try:
        if new_api:
            conv.fp32_precision = "tf32" if tf32 else "ieee"
        else:
            cudnn.allow_tf32 = tf32
        cudnn.deterministic, cudnn.benchmark = True, False
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        yield
    finally:
        if new_api:
            conv.fp32_precision = saved_conv
        else:
            cudnn.allow_tf32 = saved_conv
        cudnn.deterministic, cudnn.benchmark = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device):
    """Run the network inside: the arithmetic ``precision`` names, on ``device`` (module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(_cudnn_fp32(precision == "tf32"))
        if precision == "bf16":
            stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        yield
