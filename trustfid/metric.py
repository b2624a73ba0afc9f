"""``Metric``: the FID and its MC-dropout uncertainty as a streaming metric for training loops, in
the style of torchmetrics::

    from trustfid import Metric
    metric = Metric({"passes": 10, "seed": 0})     # ScoreOptions, or a dict of them
    for real, fake in batches:
        metric.update(real, real=True)
        metric.update(fake, real=False)
    report = metric.compute()                       # a Report, as score() gives
    metric.reset()

Images: torch tensors or numpy arrays, (N, H, W, C) or (N, C, H, W) with C = 1 (replicated to
RGB) or 3 (4: the alpha channel is dropped), or (N, H, W) grayscale — score's rules for arrays
(inputs/array_rules.py) — uint8 on 0..255 or float on [0, 1]. Float
values outside [0, 1] are an error, never clipped. Tensors may live on any device and the work stays
there: the resize (preprocess.network_input) and the network run on it; only the features come to
the CPU, into the engine's float64 streaming statistics, so memory does not grow with the images.
``options.device`` is not used.

The report equals ``score(real_images, generated_images, options)`` on the same images whatever the
batch sizes of the updates (tests/test_metric.py): image indices count across updates (per_image
masks depend on them) and the statistics depend only on the order of the images.

With ``metrics`` ["fid", "frd"] (or ["frd"]) each image's radiomic features are computed in this process
as it arrives (about 0.3 s of CPU per image): the FRD in the report equals score()'s on the same arrays.

``extractor``: None (``options.extractor``, by default the FID Inception), a registry name, an
``Extractor`` or a list of stages (extractor.py); a given network is moved to the images' device.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .decode_worker import FrdLimits, prepare
from .errors import InputError
from .extractor import Extractor
from .inputs.array_rules import array_layout
from .inputs.intensity import EIGHT_BIT, FLOAT_01
from .job import Job, open_job, resolve, work_of
from .pipeline import SetFeatures, report_from_stats
from .plugins import FEATURES
from .preprocess import network_input
from .registry import as_extractor
from .schemas import Report, ScoreOptions
from .stats import SetStats
from .timing import Clock, recording


class Metric:
    """update(images, real=True|False), compute() -> Report, reset(); see the module docstring."""

    def __init__(self, options: ScoreOptions | dict | None = None, *, extractor=None, settings=None):
        self._given = extractor if extractor is None or isinstance(extractor, str) else as_extractor(extractor)
        self.options = resolve(options, self._given)
        if isinstance(self._given, Extractor):  # a wrong dropout stage fails here, not at the first update
            self.options = self._given.options_for(self.options)
        self._settings = settings
        if self.options.frd_mode == "auto":
            raise InputError("the Metric streams its images, so frd:auto cannot come back for a second pass once the "
                             "domain check is known: use metrics ['fid', 'frd'] (or score() on files)")
        self._work = work_of(self.options)
        self._job: Job | None = None  # opened at the first update, on the images' device
        self._load_s = 0.0
        self._network_load_s = 0.0
        self.reset()

    def reset(self) -> None:
        """Forget every image (the network stays loaded)."""
        self._sets: dict[str, SetFeatures | None] = {"real": None, "generated": None}
        self._extract_s = 0.0
        self._clock = Clock()  # where the updates' time went (schemas.Timing)

    def _job_on(self, device: torch.device) -> Job:
        if self._job is None or (FEATURES in self._work and self._job.device != device):
            t0 = time.perf_counter()
            self._job = open_job(self.options, self._given, self._settings, device=device, work=self._work)
            self.options = self._job.options
            self._load_s += time.perf_counter() - t0
            self._network_load_s += time.perf_counter() - t0
        return self._job

    def update(self, images, real: bool = True) -> None:
        """Add a batch of images to the real (``real=True``) or the generated set."""
        set_name = "real" if real else "generated"
        x = image_batch(images)
        if not len(x):
            return
        job = self._job_on(x.device)
        with recording(self._clock):
            self._update(x, set_name, job)

    def _update(self, x: torch.Tensor, set_name: str, job: Job) -> None:
        t0 = time.perf_counter()
        found = self._sets[set_name] or SetFeatures.start(job, set_name)
        if found.model is not None:
            found.model = job.model  # the network on this update's device
        self._sets[set_name] = found
        for start in range(0, len(x), self.options.batch_size):
            chunk = x[start:start + self.options.batch_size]
            names = [f"{set_name}[{found.n + i:05d}]" for i in range(len(chunk))]
            # uint8 -> float 0..255; float [0, 1] * 255 in float32: what the file pipeline does for arrays
            found.intensity[EIGHT_BIT if chunk.dtype == torch.uint8 else FLOAT_01] += len(chunk)
            radiomics = None
            if found.radiomics is not None:  # on the CPU, image by image: the stored intensities (uint8 or floats)
                stored, frd = chunk.permute(0, 2, 3, 1).cpu().numpy(), FrdLimits.of(job.settings)
                radiomics = [prepare(n, im, None, None, frd)[2] for n, im in zip(names, stored)]
            found.take(names, self._network_input(chunk, job) if found.model is not None else None, radiomics,
                       found.n)
        self._extract_s += time.perf_counter() - t0

    @staticmethod
    def _network_input(chunk: torch.Tensor, job: Job) -> torch.Tensor:
        """The FID network's input of a chunk of the caller's images, on their device."""
        mode, ex = job.options.resize, job.extractor
        chunk = chunk.to(torch.float32) if chunk.dtype == torch.uint8 else chunk.to(torch.float32) * 255.0
        inp = network_input(chunk, mode, ex.input_size, ex.input_range_for(mode))
        if inp.shape[1] == 1:  # channels are resized independently: replicate after the resize
            inp = inp.expand(-1, 3, -1, -1)
        return inp

    def stats(self, real: bool = True) -> SetStats:
        """One set's statistics so far (``.save(path)`` writes them for later scores)."""
        set_name = "real" if real else "generated"
        found = self._sets[set_name]
        if found is None:
            raise InputError(f"the {set_name} set has no images yet: call update(images, real={real}) first",
                             code="too_few_images")
        return found.stats(f"Metric {set_name}")

    def compute(self) -> Report:
        """The report of every image given since the last reset (more updates may follow)."""
        r, g = self.stats(real=True), self.stats(real=False)
        clock = Clock()
        clock.sets = {k: dict(v) for k, v in self._clock.sets.items()}
        clock.job["network_load_s"] = self._network_load_s
        with recording(clock):
            return report_from_stats(r, g, self._job, load_s=self._load_s, extract_s=self._extract_s)


def image_batch(images) -> torch.Tensor:
    """The caller's images as an (N, C, H, W) view on their own device, C = 1 or 3, uint8 or
    floating point, checked (float values must lie in [0, 1])."""
    if isinstance(images, np.ndarray):
        t = torch.from_numpy(images if images.flags.writeable else images.copy())
    elif isinstance(images, torch.Tensor):
        t = images.detach()
    else:
        raise InputError("Metric.update takes a torch tensor or a numpy array of images, not a "
                         f"{type(images).__name__}")
    layout = array_layout(tuple(t.shape), f"images of shape {tuple(t.shape)}")  # score's rules for arrays
    t = t.permute(0, 3, 1, 2) if layout == "NHWC" else t[:, None] if layout == "NHW" else t
    if t.dtype != torch.uint8:
        if not t.is_floating_point():
            raise InputError(f"images must be uint8 (0..255) or float in [0, 1]; got {t.dtype}")
        if t.numel():
            finite = bool(torch.isfinite(t).all())
            lo, hi = float(t.min()), float(t.max())
            if not finite or lo < 0 or hi > 1:
                raise InputError(f"float images must hold values in [0, 1]; found min {lo:g}, max {hi:g}"
                                 f"{' and NaN/inf values' if not finite else ''}. trustfid never clips: divide "
                                 "0..255 data by 255, or pass uint8")
    return t[:, :3] if t.shape[1] == 4 else t
