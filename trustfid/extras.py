"""What extraction keeps besides the streaming statistics, collected batch by batch in one place
(``pipeline.extract`` makes one ``Collector`` per set):

- the raw per-image domain inputs (domain.py: the batch-norm statistics of the stages observed by
  forward hooks during each batch's deterministic pass, and the embedding norm);
- a bounded, deterministic sample of plain feature rows (rows.py) for KID, FID∞ and the bootstrap;
- small thumbnails (``THUMB`` px, uint8) of the ``options.thumbnails`` images with the highest domain
  scores, for the report a person reads. Bounded: at most that many per set, and only when the
  shipped domain model can score this network's features;
- each image's print for the copy check (memorization.py; 1 KB per image, every image of the set).
"""

from __future__ import annotations

import contextlib
import heapq
import time

import numpy as np

from .domain import STATS_KEY, DomainModel, DomainProbe
from .inception import FIDInceptionV3
from .rows import KeptRows
from .timing import current

THUMB = 64


def shipped_model(weights_sha256: str, resize: str) -> DomainModel | None:
    """The study's domain model when it was measured with these weights and this resize mode."""
    from .trust import baseline

    spec = baseline().get("domain")
    if not spec:
        return None
    measured = spec.get("measured_with", {})
    if measured.get("weights_sha256") not in (None, weights_sha256) or measured.get("resize") not in (None, resize):
        return None
    return DomainModel(spec["model"])


def thumbnail(x) -> np.ndarray:
    """A network input (3, 299, 299) in [-1, 1) back to a THUMB x THUMB uint8 RGB image."""
    from PIL import Image

    a = ((x.float().cpu().numpy().transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(a).resize((THUMB, THUMB), Image.BILINEAR))


class Collector:
    """What extraction keeps for one set besides its statistics. The domain inputs and thumbnails need
    the FID Inception's batch-norm statistics; another extractor gets the feature rows only."""

    def __init__(self, ex, options):
        self.probe = DomainProbe(ex) if isinstance(ex, FIDInceptionV3) else None
        # entered around each batch's deterministic pass (mc.MCDropout.features)
        self.watch = self.probe.active if self.probe is not None else contextlib.nullcontext
        self.kept = KeptRows(ex.feature_dim, options.max_feature_rows, options.seed)
        self.parts: list[dict[str, np.ndarray]] = []  # per batch: the per-image domain arrays
        self.k = options.thumbnails
        self.copies = options.copy_check  # each image's print for the copy check (memorization.py)
        self.model = shipped_model(ex.weights_sha256, options.resize) if self.probe else None
        self._heap: list = []  # (score, -index, name, thumbnail): the k highest scores

    def add(self, x, f_plain, f_mc, names: list[str], first_index: int) -> None:
        self.kept.add(f_plain.numpy(), first_index)
        part = {}
        if self.copies:
            from .copies import PRINTS_KEY, batch_prints

            part[PRINTS_KEY] = batch_prints(x)
        raw = None
        if self.probe is not None:
            t0 = time.perf_counter()  # the domain probe's per-batch step: the set's probe_s (timing.py)
            raw = self.probe.take(f_plain)
            part.update({STATS_KEY: raw} if self.model is None else self.model.per_image(raw, f_plain))
            if self.model is not None and self.k:
                self._keep_thumbnails(x, part, raw, names, first_index)
            current().add("probe_s", time.perf_counter() - t0, "")
        if part:
            self.parts.append(part)

    def _keep_thumbnails(self, x, part: dict, raw, names: list[str], first_index: int) -> None:
        """The batch's images among the ``k`` highest domain scores so far, as thumbnails."""
        scores = self.model.score_stats(part, len(raw))
        for i, (s, name) in enumerate(zip(scores, names)):
            item = (float(s), -(first_index + i), name)
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, (*item, thumbnail(x[i])))
            elif item > self._heap[0][:3]:
                heapq.heapreplace(self._heap, (*item, thumbnail(x[i])))

    def finish(self) -> dict:
        """Keyword arguments for SetStats."""
        thumbs = [(name, score, im) for score, _, name, im in sorted(self._heap, reverse=True)]
        per_image = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]} if self.parts else {}
        return {"per_image": per_image, "rows": self.kept, "thumbnails": thumbs}
