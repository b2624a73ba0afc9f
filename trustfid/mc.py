"""Monte Carlo dropout in a feature extractor (extractor.py), through its interface only.

Dropout (rate p, inverted: kept units are scaled by 1/(1-p)) follows the output of each chosen
stage. The network splits at the first chosen stage: the deterministic trunk (the stages up to and
including it) runs once per image; the stochastic tail (the remaining stages and the head) runs once
with dropout off — the plain FID features — and then T times with dropout on. The network runs in
eval mode (batch-norm uses its running statistics, not the batch's).

Masks. Each mask is drawn on the CPU from its own generator, seeded from (seed, pass, point) and,
with ``per_image`` masks, from the set and the image's index in it. A mask therefore never depends
on the batch size, on the device or on how a job is sharded:
- ``shared`` (default): pass t uses one mask for every image of both sets, so pass t *is* one sampled
  network θ_t and FID_t compares both sets under the same θ_t.
- ``per_image``: every image of every pass gets its own mask (classic MC dropout per input).
``element`` masks drop single activations (C×H×W); ``channel`` masks drop whole feature maps (C).

On CUDA the network runs in fixed-shape calls of ``gpu_batch`` images (the last padded with zero
images, whose outputs are dropped; in eval mode an image's features never depend on its
neighbours), and the T tail passes are stacked into one larger call (up to ``gpu_tail_rows`` rows):
the masks of passes t..t+k multiply k copies of the trunk output side by side. Shapes then depend
only on the settings and T, never on ``batch_size`` (numerics.py says why that matters). On a CPU
the passes run one by one, batch by batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch

from .extractor import Extractor, evaluating
from .numerics import precision_scope
from .schemas import ScoreOptions
from .timing import current

SET_TAGS = {"real": 0, "generated": 1}


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def stacked_passes(passes: int, settings) -> int:
    """Passes per stacked tail call on CUDA: at most ``gpu_tail_rows`` rows (passes x ``gpu_batch``),
    evened out over the calls (T=20 at the defaults: all 20 in one call)."""
    if not passes:
        return 1
    most = max(1, settings.gpu_tail_rows // settings.gpu_batch)
    calls = -(-passes // most)
    return -(-passes // calls)


class MCDropout:
    """Wraps a loaded Extractor with the MC-dropout settings of one job. ``options.dropout_at``
    names stages of the extractor (unknown names: InputError listing the valid ones)."""

    def __init__(self, net: Extractor, options: ScoreOptions, device: torch.device, settings=None):
        from .settings import get_engine_settings

        settings = settings or get_engine_settings()
        self.net = net
        self.device = device
        self.precision = options.precision
        self.gpu = device.type == "cuda"
        self.micro = settings.gpu_batch
        self.stack = stacked_passes(options.passes, settings) if self.gpu else 1
        self.passes = options.passes
        self.rate = options.dropout_rate
        self.kind = options.dropout_kind
        self.mask_mode = options.mask_mode
        self.seed = options.seed
        self.points = net.dropout_points(options.dropout_at)  # stage indices, in network order
        self.split = self.points[0] + 1  # trunk = stages[:split]
        self._shared: dict[tuple[int, int], torch.Tensor] = {}

    # -- masks ------------------------------------------------------------------------------------
    def _mask_shape(self, h: torch.Tensor) -> tuple[int, ...]:
        if self.kind == "channel":  # one value per feature map, broadcast over the spatial axes
            return (h.shape[1],) + (1,) * (h.ndim - 2)
        return tuple(h.shape[1:])

    def _draw(self, shape, gen: torch.Generator) -> torch.Tensor:
        keep = 1.0 - self.rate
        return (torch.rand(shape, generator=gen) < keep).to(torch.float32) / keep

    def _mask(self, t: int, point: int, h: torch.Tensor, set_tag: int, first_index: int) -> torch.Tensor:
        shape = self._mask_shape(h)
        if self.mask_mode == "shared":
            key = (t, point)
            if key not in self._shared:
                self._shared[key] = self._draw(shape, _generator(self.seed, t, point)).to(self.device)
            return self._shared[key].unsqueeze(0)
        masks = [self._draw(shape, _generator(self.seed, t, point, set_tag, first_index + i))
                 for i in range(h.shape[0])]
        return torch.stack(masks).to(self.device)

    def _masks(self, ts: list[int], point: int, h: torch.Tensor, set_tag: int, first_index: int) -> torch.Tensor:
        """The masks of passes ``ts`` for trunk output ``h`` (N, ...), as (len(ts), 1 or N, ...)."""
        return torch.stack([self._mask(t, point, h, set_tag, first_index) for t in ts])

    # -- forward ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.net.forward_range(x, 0, self.split)

    @torch.inference_mode()
    def tail(self, h: torch.Tensor, t: int | None, set_tag: int = 0, first_index: int = 0) -> torch.Tensor:
        """Features (N, d) from trunk output ``h``; ``t=None`` runs with dropout off."""
        stop = len(self.net.stage_names)
        point_set = set(self.points)
        x = h
        start = self.split - 1  # h is the output of stage split-1, which is a dropout point
        for i in range(start, stop):
            if i > start:
                x = self.net.forward_range(x, i, i + 1)
            if t is not None and i in point_set:
                x = x * self._mask(t, i, x, set_tag, first_index)
        return self.net.head(x)

    @torch.inference_mode()
    def tail_stacked(self, h: torch.Tensor, ts: list[int], set_tag: int = 0, first_index: int = 0) -> torch.Tensor:
        """Features (len(ts), N, d) of passes ``ts`` in one call: the tail runs on len(ts) copies of
        ``h`` side by side, each multiplied by its own pass's masks."""
        k, n = len(ts), h.shape[0]
        stop = len(self.net.stage_names)
        point_set = set(self.points)
        x = h.unsqueeze(0).expand(k, *h.shape).flatten(0, 1)
        start = self.split - 1
        for i in range(start, stop):
            if i > start:
                x = self.net.forward_range(x, i, i + 1)
            if i in point_set:
                per_pass = x.unflatten(0, (k, n))
                x = (per_pass * self._masks(ts, i, per_pass[0], set_tag, first_index)).flatten(0, 1)
        return self.net.head(x).unflatten(0, (k, n))

    @torch.inference_mode()
    def features(self, x: torch.Tensor, set_tag: int = 0, first_index: int = 0,
                 watch=contextlib.nullcontext,
                 on_step: Callable[[float], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(plain (N, d), mc (T, N, d)) for one batch of network inputs, on the CPU. ``watch()`` is entered
        around the deterministic pass (trunk + plain tail), where forward hooks may observe every stage
        exactly once per network call (extras.Collector's domain probe). In ``options.precision``.
        ``on_step(fraction)`` hears how much of the batch is done before each MC pass (progress within a
        batch, which takes many seconds on a CPU); the caller reports the batch's end itself."""
        step = on_step or (lambda fraction: None)
        with evaluating(self.net), precision_scope(self.precision, self.device):
            if not self.gpu:
                return self._features(x, set_tag, first_index, watch, step)
            n, parts = x.shape[0], []
            for start in range(0, n, self.micro):  # fixed-shape calls (module docstring)
                chunk = x[start:start + self.micro]
                k = chunk.shape[0]
                if k < self.micro:
                    chunk = torch.cat([chunk, chunk.new_zeros((self.micro - k, *chunk.shape[1:]))])
                plain, mc = self._features(chunk, set_tag, first_index + start, watch,
                                           lambda f, start=start, k=k: step((start + f * k) / n))
                parts.append((plain[:k], mc[:, :k]))
            return torch.cat([p for p, _ in parts]), torch.cat([m for _, m in parts], dim=1)

    def _features(self, x, set_tag, first_index, watch, step):
        clock = current()  # the set's network_s and mc_s (timing.py); the probe's hooks count their own
        t0, probe0 = time.perf_counter(), clock.get("probe_s", clock.set_name) if clock.set_name else 0.0
        with watch():
            h = self.trunk(x)
            plain = self.tail(h, None).float().cpu()
        probe = (clock.get("probe_s", clock.set_name) if clock.set_name else 0.0) - probe0
        t1 = time.perf_counter()
        clock.add("network_s", max(0.0, t1 - t0 - probe), "")
        if self.stack > 1:
            groups = [list(range(t, min(t + self.stack, self.passes))) for t in range(0, self.passes, self.stack)]
        else:
            groups = [[t] for t in range(self.passes)]
        mc = []
        for i, ts in enumerate(groups):  # the share done before each MC pass (group)
            step((i + 1) / (len(groups) + 1))
            out = (self.tail_stacked(h, ts, set_tag, first_index) if self.stack > 1
                   else self.tail(h, ts[0], set_tag, first_index)[None])
            mc.append(out.float().cpu())
        clock.add("mc_s", time.perf_counter() - t1, "")
        return plain, torch.cat(mc) if mc else torch.empty(0, *plain.shape)
