"""What a decode process of loader.py runs, and the per-image step the prefetch thread and the Metric share:
decode, resize for the FID network, radiomic features for the FRD (``prepare``).

Kept apart from loader.py so that a decode process imports only what its work needs: torch (for the
resize) is imported on the first image that goes to the FID network, never for a job of metrics frd
alone. The radiomics' ITK filters keep ITK's default thread count, as frd-score's processes do: ITK's
thread count changes the last digits of some features (radiomics.py), so one thread per process would
move the FRD away from frd-score's.
"""

from __future__ import annotations

import queue
import time
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .inputs import open_images
from .inputs.events import Skip


class FrdLimits(NamedTuple):
    """What the FRD's radiomics may take of one image (EngineSettings.max_frd_pixels, max_frd_seconds)."""

    pixels: int
    seconds: float

    @classmethod
    def of(cls, settings) -> FrdLimits:
        return cls(settings.max_frd_pixels, settings.max_frd_seconds)


def prepare(name: str, image: np.ndarray, stored: np.ndarray | None, prep: tuple | None, frd: FrdLimits | None,
            seconds: dict[str, float] | None = None):
    """One decoded image as the job needs it: ``(name, network input or None, radiomic features or None)``.
    ``prep`` (resize mode, input size, input range) when the FID network runs; ``frd``, the FRD's per-image
    limits, when the FRD is asked for (None: no FRD): (feature names, values) of ``stored`` (the stored
    intensities; None: the image itself), or why the image is left out of the FRD (a str): over the pixel
    limit, over the time budget, blank, or pyradiomics failed on it. ``seconds["radiomics_s"]``, when given,
    gets the radiomics' time."""
    x = None
    if prep is not None:
        from .preprocess import to_model_input

        if _in_decode_process:
            _one_torch_thread()
        x = to_model_input([image], *prep)[0].numpy()
    feats = None
    h, w = np.shape(image)[:2]
    if frd is not None and h * w > frd.pixels:  # before pyradiomics' filters, whose memory grows with the pixels
        feats = (f"FRD: {w} x {h} = {w * h:,} pixels, over the FRD's limit of {frd.pixels:,} per image: left out of "
                 "the FRD (downscale it, or raise TRUSTFID_MAX_FRD_PIXELS on a machine with the memory)")
    elif frd is not None:
        from .radiomics import OverBudget, features

        t0 = time.perf_counter()
        try:
            feats = features(stored if stored is not None else image, frd.seconds)
        except (MemoryError, KeyboardInterrupt):
            raise
        except OverBudget:
            feats = (f"FRD: radiomics took over the FRD's budget of {frd.seconds:g} s per image: left out of the FRD "
                     "(downscale it, or raise TRUSTFID_MAX_FRD_SECONDS)")
        except Exception as e:  # a radiomics failure on one image never fails the job
            pixels = np.asarray(stored if stored is not None else image)
            if pixels.size and pixels.min() == pixels.max():  # pyradiomics' error says nothing of the cause
                feats = (f"FRD: a blank image (every pixel {pixels.flat[0]:g}): no texture for the radiomics: "
                         "left out of the FRD")
            else:
                feats = f"FRD: pyradiomics failed on this image ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        if seconds is not None:
            seconds["radiomics_s"] = seconds.get("radiomics_s", 0.0) + time.perf_counter() - t0
    return name, x, feats


_in_decode_process = False


@lru_cache
def _one_torch_thread() -> None:
    """A decode process's resize runs on one torch thread: the processes fill the cores."""
    import torch

    torch.set_num_threads(1)


def serve(k: int, n: int, current, tasks, out) -> None:
    """Decode process k of n: for each set it is given, the units k, k + n, k + 2n, ... (``work``)."""
    global _in_decode_process
    _in_decode_process = True
    while (task := tasks.get()) is not None:
        work(k, n, *task, current, out)


def work(k: int, n: int, generation: int, source, open_kwargs: dict, prep: tuple | None, frd: FrdLimits | None,
         current, out) -> None:
    """Decode and resize this process's units of one set, then report its intensity tally and its seconds
    (listing the set, decoding and resizing, radiomics: timing.DECODER_STAGES); stop early when the set is
    abandoned (``current`` moved past ``generation``: cancelled, failed, done). A limit or input error is
    sent back to be raised in the job; anything else too, with its type and message."""
    def send(kind, payload) -> bool:
        while current.value == generation:
            try:
                out.put((generation, kind, payload), timeout=0.5)
                return True
            except queue.Full:
                pass
        return False

    seconds = {"decode_s": 0.0, "decoder_listing_s": 0.0, "radiomics_s": 0.0}
    try:
        t0 = time.perf_counter()
        images = open_images(source, **open_kwargs)
        seconds["decoder_listing_s"] = time.perf_counter() - t0
        for u, unit in enumerate(images.units()):
            if u % n != k:
                continue
            t0, radiomics = time.perf_counter(), seconds["radiomics_s"]
            events = []
            for event in unit():
                if isinstance(event, Skip):
                    events.append(event)
                else:
                    events.append(prepare(*event, images.take_stored(), prep, frd, seconds))
            seconds["decode_s"] += time.perf_counter() - t0 - (seconds["radiomics_s"] - radiomics)
            if not send("unit", events):
                return
        send("end", (images.intensity, seconds))
    except BaseException as e:  # sent to the job, which raises it
        send("error", (type(e), e.__dict__, str(e)))
