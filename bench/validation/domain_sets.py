"""The domain study's images: crops of every source (sources.py) in the forms users' images come in,
for fitting (training sources) and for the held-out sets (split.py), which the CI tests build too.

A crop is a square window of a frame (side uniform in [0.5, 1] x the short side, seeded position). The
forms (``VARIANTS``), each fed through the engine's own resize to 299 px as a user's image would be:

- ``full``: the crop as it is (at most ``CAP`` px; larger crops are reduced with PIL's antialiased
  bicubic), or in the held-out sets at a fixed ``SIDE`` px, as a generator's output would be;
- ``128``, ``64``, ``32``: the crop reduced to that side (antialiased bicubic), as the low-resolution
  benchmarks (CIFAR-10 at 32 px, ImageNet at 64 px) and small medical sets are;
- ``gray``: the crop in grayscale (ITU-R 601 luma, replicated to three channels), for colour sources;
- ``jpeg``: the crop JPEG-compressed at quality ``JPEG_QUALITY``.

Medical crops get the same forms, so that no form can stand for a domain: a 64-px natural photo must
score as natural, a 64-px CT slice as medical.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import data as D
from .sources import BY_NAME, MEDICAL, load
from .split import HELDOUT

CAP = 512
SIDE = 256
JPEG_QUALITY = 30
RESOLUTIONS = (128, 64, 32)
VARIANTS = ("full", "128", "64", "32", "gray", "jpeg")


def crop(frame: np.ndarray, rng: np.random.Generator, side_out: int | None = None) -> np.ndarray:
    h, w = frame.shape[:2]
    short = min(h, w)
    side = max(1, min(short, int(round(rng.uniform(0.5, 1.0) * short))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    window = Image.fromarray(frame[y:y + side, x:x + side])
    out = side_out or min(side, CAP)
    return np.asarray(window if out == side else window.resize((out, out), Image.BICUBIC))


def is_gray(im: np.ndarray) -> bool:
    return bool(np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2]))


def variant(im: np.ndarray, name: str) -> np.ndarray | None:
    """One form of a crop; None where it does not apply (a resolution not below the crop's, gray of gray)."""
    pil = Image.fromarray(im)
    if name == "full":
        return im
    if name.isdigit():
        side = int(name)
        return np.asarray(pil.resize((side, side), Image.BICUBIC)) if side < im.shape[0] else None
    if name == "gray":
        return None if is_gray(im) else np.repeat(np.asarray(pil.convert("L"))[:, :, None], 3, axis=2)
    if name == "jpeg":
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=JPEG_QUALITY)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    raise KeyError(name)


@dataclass
class Item:
    image: np.ndarray
    source: str
    medical: bool
    variant: str


def _crops(frames: list[np.ndarray], n: int, rng: np.random.Generator, side_out: int | None = None):
    """``n`` crops, the frames of a multi-frame source taken in turn."""
    return [crop(frames[i % len(frames)], rng, side_out) for i in range(n)]


def training(crops_per_source: int, frames: dict[str, list[np.ndarray]] | None = None) -> tuple[list[Item], list[str]]:
    """Every form of ``crops_per_source`` crops of every training source (none of split.HELDOUT)."""
    if frames is None:
        frames, notes = load([s for s in BY_NAME.values() if s.name not in HELDOUT])
    else:
        notes = []
    items = []
    for k, (name, fr) in enumerate(sorted(frames.items())):
        if name in HELDOUT:
            continue
        rng = np.random.default_rng([14, k])
        for c in _crops(fr, crops_per_source, rng):
            for v in VARIANTS:
                im = variant(c, v)
                if im is not None:
                    items.append(Item(im, name, BY_NAME[name].kind == MEDICAL, v))
    return items, notes


# --- held-out sets --------------------------------------------------------------------------------------

@dataclass
class HeldoutSets:
    sets: dict[str, D.ImageSet]  # name -> images with their sources
    notes: list[str]


def heldout(per_set: int = 100) -> HeldoutSets:
    """The held-out sets (docs/VALIDATION.md, "Held-out sets"): at least ``per_set`` images in each of
    two disjoint halves a and b, the same number of crops of every held-out source, at ``SIDE`` px:

    - natural_{full,128,64,32,gray,jpeg}_{a,b}: the held-out natural photos in each form;
    - natural_blur, natural_noise: half b blurred / noised (ImageNet-C severity 3 at SIDE px): poor
      generators of natural photos;
    - medical_{a,b} and medical_64_{a,b}: the held-out medical sources at SIDE px and at 64 px.
    """
    frames, notes = load([BY_NAME[n] for n in HELDOUT])
    sets: dict[str, D.ImageSet] = {}
    for cls in ("natural", "medical"):
        names = sorted(n for n in frames if (BY_NAME[n].kind == MEDICAL) == (cls == "medical"))
        halves: dict[str, list[tuple[str, np.ndarray]]] = {"a": [], "b": []}
        for k, name in enumerate(names):
            rng = np.random.default_rng([41, k])
            per_source = -(-per_set // len(names))
            cs = _crops(frames[name], 2 * per_source, rng, side_out=SIDE)
            halves["a"] += [(name, c) for c in cs[0::2]]
            halves["b"] += [(name, c) for c in cs[1::2]]
        forms = ("full", "64") if cls == "medical" else VARIANTS
        for half, items in halves.items():
            for v in forms:
                made = [(s, variant(c, v)) for s, c in items]
                made = [(s, im if im is not None else c) for (s, im), (_, c) in zip(made, items)]  # gray of gray
                key = f"{cls}_{half}" if (cls, v) == ("medical", "full") else f"{cls}_{v}_{half}"
                sets[key] = D.ImageSet(key, [im for _, im in made], [s for s, _ in made])
    b = sets["natural_full_b"]
    for fam, name in (("gaussian_blur", "natural_blur"), ("gaussian_noise", "natural_noise")):
        fam_i = list(D.FAMILIES).index(fam)
        sets[name] = D.ImageSet(name, [D.corrupt(im, fam, 3, (fam_i, i)) for i, im in enumerate(b.images)],
                                list(b.sources))
    return HeldoutSets(sets, notes)
