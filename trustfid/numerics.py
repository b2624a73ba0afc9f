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

On a CPU, torch sends a float32 2-D convolution to oneDNN or to its own im2col + GEMM by the batch
size and the thread count: with one thread (``TRUSTFID_THREADS=1``, as ``trustfid serve --workers 2``
gives each worker on 2 cores), a 1x1 convolution of fewer than 16 images takes its own path and any
larger batch oneDNN's. The two round differently: an image's features moved by up to 4e-6 with the
batch it ran in, and a job of 100 images sharded by 30 (its last shard of 10 ran in a batch of 10,
those images unsharded in one of 32) differed from the unsharded job by 9.8e-9 relative in an
``fid_mc`` sample. So in fp32 and tf32 the engine sends every float32 2-D convolution on the CPU
through oneDNN (``torch.mkldnn_convolution``), the path torch itself takes with two threads or more:
features are then bit-identical whatever the batch size and the thread count, and equal to what those
runs gave before. (Convolutions inside a TorchScript module are not reached; with oneDNN switched off,
``torch.backends.mkldnn.flags(enabled=False)``, torch chooses as before.)
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

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
        if device.type == "cpu" and precision != "bf16":
            stack.enter_context(OneDNNConvolutions())
        if precision == "bf16":
            stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        yield


def _conv2d_args(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return input, weight, bias, stride, padding, dilation, groups


def _pair(v) -> list[int]:
    v = [int(v)] if isinstance(v, int) else [int(a) for a in v]
    return v * 2 if len(v) == 1 else v


def _plain(t) -> bool:
    """A dense float32 CPU tensor (a Parameter counts; other tensor subclasses are left to torch)."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" and t.layout == torch.strided
            and t.dtype == torch.float32)


def onednn_conv2d(*args, **kwargs) -> torch.Tensor | None:
    """``F.conv2d(*args, **kwargs)`` through oneDNN, the path torch takes for it with two threads or
    more whatever the batch (module docstring); None where torch should decide: not a batched float32
    CPU convolution, oneDNN unavailable or switched off, autocast on, or a ``"same"`` padding that is
    not symmetric."""
    x, w, b, stride, padding, dilation, groups = _conv2d_args(*args, **kwargs)
    if not (_plain(x) and _plain(w) and (b is None or _plain(b)) and x.dim() == 4 and w.dim() == 4 and x.numel()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")):
        return None
    dilation = _pair(dilation)
    if isinstance(padding, str):  # "valid" or "same" (torch refuses any other)
        total = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])] if padding == "same" else [0, 0]
        if padding not in ("valid", "same") or any(t % 2 for t in total):
            return None
        padding = [t // 2 for t in total]
    return torch.mkldnn_convolution(x, w, b, _pair(padding), _pair(stride), dilation, int(groups))


class OneDNNConvolutions(TorchFunctionMode):
    """Inside: every float32 2-D convolution on the CPU runs through oneDNN (``onednn_conv2d``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:
            out = onednn_conv2d(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)
