"""The copy check's study (issue 24; docs/VALIDATION.md, "The copy check"): does ``trustfid.copies`` find
near-copies of reference images among generated ones, name the right reference, and stay quiet on honest
images of the same sources?

    python -m bench.validation.copy_study [--timing]

**Images.** The domain study's sources (sources.py), split as it is (split.py): every choice below is
made on the training sources, and the held-out sources are looked at once, in the final run. A source
whose frames are pixel-identical to an earlier source's is dropped (the copy check found one:
imagecorruptions ships frost3.png as the same picture as frost2.png). Per domain (photos: the three
natural kinds; medical: every modality), two experiments, each with its own reference set:

- **tiles**: every frame whose short side is at least 2 x ``MIN_TILE`` px is cut into a grid of square
  tiles (2 to 4 along the short side); tiles on the black squares of a checkerboard are reference
  images, and each tile on a white square gives ``HONEST_PER_TILE`` honest images: random windows of
  50-100% of its side. An honest image therefore shares no pixel with any reference image while coming
  from the same photo or scan, next to a reference tile: the hardest honest image a source can give.
  Tiles and windows with little content are left out (a gray standard deviation under ``MIN_STD``, or
  more than half of the pixels within ``BACKGROUND_LEVELS`` of the frame's darkest percent): a
  generator's image shows a scene or an anatomy, not a patch of air.
- **frames**: the centre square of every frame, alternately a reference and an honest image in the
  order (modality, source, frame): honest frames are whole images of the same modality, and of the
  same volume or cine loop where a source has several frames (other slices of one scan: the honest
  image most like a reference that a generator could produce without copying).

Every image is resized to ``OUT`` px (antialiased bicubic), as a generator's output would be.

**Copies** of every reference image, one per kind, seeded; ``KINDS`` are what the check must find,
``STRESS`` what it is not claimed to find (its limits, measured). A copy is *found* when its score
reaches the threshold and its nearest reference is the image it was made from.

**Candidates** (``CANDIDATES``), each with its own threshold by the same rule: ``threshold_rule`` on the
training sources' honest images. The choice: the highest smallest detection over ``KINDS`` on the
training sources; the held-out numbers are reported for all of them.

Prints Markdown for docs/VALIDATION.md and writes docs/validation/copies.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

from trustfid import copies as TC

from .sources import BY_NAME, MEDICAL, SOURCES, load
from .split import HELDOUT

ROOT = Path(__file__).resolve().parents[2]
OUT = 128
MIN_TILE = 48
HONEST_PER_TILE = 2
MIN_STD = 8.0
BACKGROUND_LEVELS = 10
DOMAINS = ("photos", "medical")
FORMS = ("tiles", "frames")


# --- images ---------------------------------------------------------------------------------------

def gray(im: np.ndarray) -> np.ndarray:
    return im.astype(np.float32) @ np.array(TC.LUMA, np.float32)


def resize(im: np.ndarray, side: int = OUT) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(im)).resize((side, side), Image.Resampling.BICUBIC))


def study_frames(heldout: bool) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """The training (or held-out) sources' frames, duplicates of an earlier source dropped (and named)."""
    frames, notes = load([s for s in SOURCES if (s.name in HELDOUT) == heldout])
    seen: dict[str, str] = {}
    for name in sorted(frames):
        key = hashlib.sha256(b"".join(np.ascontiguousarray(f).tobytes() for f in frames[name])).hexdigest()
        if key in seen:
            notes.append(f"{name}: pixel-identical to {seen[key]}, left out")
            del frames[name]
        else:
            seen[key] = name
    return frames, notes


@dataclass
class Split:
    """One experiment: reference images and honest images (names: their sources)."""

    ref: list[np.ndarray] = field(default_factory=list)
    ref_src: list[str] = field(default_factory=list)
    honest: list[np.ndarray] = field(default_factory=list)
    honest_src: list[str] = field(default_factory=list)


def has_content(im: np.ndarray, dark: float) -> bool:
    g = gray(im)
    return bool(g.std() >= MIN_STD and np.mean(g <= dark + BACKGROUND_LEVELS) <= 0.5)


def build(frames: dict[str, list[np.ndarray]], seed: int = 24) -> dict[str, dict[str, Split]]:
    """{domain: {"tiles": Split, "frames": Split}} (module docstring)."""
    out = {d: {f: Split() for f in FORMS} for d in DOMAINS}
    order = sorted(frames, key=lambda n: (BY_NAME[n].kind == MEDICAL, BY_NAME[n].group, n))
    alternate = dict.fromkeys(DOMAINS, 0)
    for k, name in enumerate(order):
        domain = "medical" if BY_NAME[name].kind == MEDICAL else "photos"
        rng = np.random.default_rng([seed, k])
        for frame in frames[name]:
            h, w = frame.shape[:2]
            short = min(h, w)
            centre = frame[(h - short) // 2:(h - short) // 2 + short, (w - short) // 2:(w - short) // 2 + short]
            fr = out[domain]["frames"]
            if alternate[domain] % 2 == 0:
                fr.ref.append(resize(centre))
                fr.ref_src.append(name)
            else:
                fr.honest.append(resize(centre))
                fr.honest_src.append(name)
            alternate[domain] += 1
            if short < 2 * MIN_TILE:
                continue
            n = int(np.clip(short // 96, 2, 4))
            side = short // n
            dark = float(np.percentile(gray(frame), 1))
            ny, nx = h // side, w // side
            oy, ox = (h - ny * side) // 2, (w - nx * side) // 2
            ts = out[domain]["tiles"]
            for i in range(ny):
                for j in range(nx):
                    tile = frame[oy + i * side:oy + (i + 1) * side, ox + j * side:ox + (j + 1) * side]
                    if (i + j) % 2 == 0:
                        if has_content(tile, dark):
                            ts.ref.append(resize(tile))
                            ts.ref_src.append(name)
                        continue
                    for _ in range(HONEST_PER_TILE):
                        s = max(8, int(round(rng.uniform(0.5, 1.0) * side)))
                        y, x = int(rng.integers(0, side - s + 1)), int(rng.integers(0, side - s + 1))
                        window = tile[y:y + s, x:x + s]
                        if has_content(window, dark):
                            ts.honest.append(resize(window))
                            ts.honest_src.append(name)
    return out


# --- copies -----------------------------------------------------------------------------------------

def jpeg(im: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def noise(im: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(np.rint(im + rng.normal(0.0, sigma, im.shape)), 0, 255).astype(np.uint8)


def crop(im: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Each side cut by a share drawn from [lo, hi] of the side, then resized back."""
    h, w = im.shape[:2]
    t, b, left, right = rng.uniform(lo, hi, 4)
    y0, y1, x0, x1 = round(t * h), h - round(b * h), round(left * w), w - round(right * w)
    return np.asarray(Image.fromarray(np.ascontiguousarray(im[y0:y1, x0:x1])).resize((w, h), Image.Resampling.BICUBIC))


def mirror(im: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(im[:, ::-1])


def rotate(im: np.ndarray, degrees: float) -> np.ndarray:
    return np.asarray(Image.fromarray(im).rotate(degrees, Image.Resampling.BICUBIC))


def blur(im: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return np.clip(np.rint(ndimage.gaussian_filter(im.astype(np.float64), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


Kind = Callable[[np.ndarray, np.random.Generator], np.ndarray]
KINDS: dict[str, tuple[str, Kind]] = {
    "exact": ("the reference image itself", lambda im, r: im),
    "jpeg75": ("JPEG at quality 75", lambda im, r: jpeg(im, 75)),
    "mirror": ("mirrored left-right", lambda im, r: mirror(im)),
    "noise5": ("Gaussian noise, σ = 5 of 255", lambda im, r: noise(im, r, 5.0)),
    "crop10": ("each side cut by 0-10% (drawn per side), resized back", lambda im, r: crop(im, r, 0.0, 0.1)),
    "half": ("resized to half the side", lambda im, r: resize(im, OUT // 2)),
    "window": ("intensity window changed: 0.8 x + 20", lambda im, r: np.clip(0.8 * im + 20.5, 0, 255).astype(np.uint8)),
    "mirror+jpeg75": ("mirrored, then JPEG at quality 75", lambda im, r: jpeg(mirror(im), 75)),
    "crop10+noise5": ("cropped as crop10, then noise as noise5", lambda im, r: noise(crop(im, r, 0.0, 0.1), r, 5.0)),
}
STRESS: dict[str, tuple[str, Kind]] = {
    "noise15": ("Gaussian noise, σ = 15 of 255", lambda im, r: noise(im, r, 15.0)),
    "jpeg30": ("JPEG at quality 30", lambda im, r: jpeg(im, 30)),
    "blur2": ("Gaussian blur, σ = 2 px (at 128 px)", lambda im, r: blur(im, 2.0)),
    "gamma0.6": ("gamma 0.6 (a non-linear intensity change)",
                 lambda im, r: np.rint(255 * (im / 255.0) ** 0.6).astype(np.uint8)),
    "crop10-20": ("each side cut by 10-20%, resized back", lambda im, r: crop(im, r, 0.1, 0.2)),
    "rotate5": ("rotated by 5°", lambda im, r: rotate(im, 5.0)),
    "rotate90": ("rotated by 90°", lambda im, r: np.ascontiguousarray(np.rot90(im))),
}


def make_copies(ref: list[np.ndarray], kind: str, seed: int = 24) -> list[np.ndarray]:
    fn = {**KINDS, **STRESS}[kind][1]
    k = list({**KINDS, **STRESS}).index(kind)
    return [fn(im, np.random.default_rng([seed, k, i])) for i, im in enumerate(ref)]


# --- candidate representations --------------------------------------------------------------------------

@dataclass
class Candidate:
    name: str
    description: str
    bytes_per_image: int
    prints: Callable[[list[np.ndarray]], np.ndarray]
    match: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (ref, gen) -> nearest, score
    choosable: bool = True  # False: a check on another candidate, not a contender


def _area(im: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(gray(im)).resize((side, side), Image.Resampling.BOX), np.float64)


def _thumb_prints(images: list[np.ndarray]) -> np.ndarray:
    """16 x 16 grayscale area average, mean removed, unit length, with the mirrored image's beside it."""
    out = []
    for im in images:
        t = _area(im, 16)
        pair = np.stack([t, t[:, ::-1]]).reshape(2, -1)
        pair = pair - pair.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(pair, axis=1, keepdims=True)
        out.append(np.divide(pair, norm, out=np.zeros_like(pair), where=norm > 1e-9))
    return np.stack(out).astype(np.float32)


def _best(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nearest = sim.argmax(axis=1)
    return nearest, sim[np.arange(len(sim)), nearest]


def _thumb_match(ref: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _best(np.max(np.einsum("nfd,rd->nfr", gen, ref[:, 0]), axis=1))


def _phash_prints(images: list[np.ndarray]) -> np.ndarray:
    """pHash: 32 x 32 grayscale, 2-D DCT, the 8 x 8 lowest frequencies above their median; of the image
    and of its mirror (64 bits each)."""
    out = []
    for im in images:
        t = _area(im, 32)
        bits = []
        for x in (t, t[:, ::-1]):
            c = dctn(x, norm="ortho")[:8, :8].ravel()
            bits.append(c > np.median(c))
        out.append(np.stack(bits))
    return np.stack(out)


def _phash_match(ref: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = ref[:, 0].astype(np.float32) * 2 - 1
    g = gen.astype(np.float32) * 2 - 1
    agree = np.max(np.einsum("nfd,rd->nfr", g, r), axis=1)  # 64 - 2 * Hamming distance
    return _best((agree + 64) / 128)  # 1 - Hamming / 64


def _aligned_prints(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([TC.fingerprint(im) for im in images])


def _aligned_match(ref: np.ndarray, gen: np.ndarray, ramp: bool = True,
                   candidates: int = TC.CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
    r = TC.find_copies(ref, [str(i) for i in range(len(ref))], gen, [str(i) for i in range(len(gen))], threshold=2.0,
                       ramp=ramp, candidates=candidates)
    return r.nearest, r.score


CANDIDATES = {
    "thumbnail": Candidate("thumbnail", "16 x 16 grayscale area average, mean removed; cosine, best of the image "
                           "and its mirror; exact nearest neighbour", 16 * 16 * 2, _thumb_prints, _thumb_match),
    "phash": Candidate("phash", "DCT perceptual hash: 32 x 32 grayscale, 8 x 8 lowest DCT frequencies against their "
                       "median (64 bits); 1 - Hamming / 64, best of the image and its mirror", 8, _phash_prints,
                       _phash_match),
    "aligned, mean only": Candidate("aligned, mean only", "as aligned, but only the mean removed from the grids, "
                                    "not the linear ramp", TC.SIDE * TC.SIDE, _aligned_prints,
                                    lambda ref, gen: _aligned_match(ref, gen, ramp=False)),
    "aligned": Candidate("aligned", "trustfid.copies: 32 x 32 print; correlation of 16 x 16 grids, mean and ramp "
                         "removed, best over mirror and crop windows", TC.SIDE * TC.SIDE, _aligned_prints,
                         _aligned_match),
    "aligned, every reference scored": Candidate(
        "aligned, every reference scored", "as aligned, with every reference image a candidate (no first search "
        "on 8 x 8 prints): what the first search loses", TC.SIDE * TC.SIDE, _aligned_prints,
        lambda ref, gen: _aligned_match(ref, gen, candidates=len(ref)), choosable=False),
}


# --- the measurements ----------------------------------------------------------------------------------

def score_all(sets: dict[str, dict[str, Split]], cand: Candidate, kinds: list[str]) -> dict:
    """Per domain and form: the honest images' nearest scores, and per copy kind the scores and whether the
    nearest reference is the right one."""
    out: dict = {}
    for domain, forms in sets.items():
        for form, s in forms.items():
            if not s.ref:
                continue
            ref = cand.prints(s.ref)
            entry = {"honest": cand.match(ref, cand.prints(s.honest))[1].tolist() if s.honest else []}
            for kind in kinds:
                nearest, score = cand.match(ref, cand.prints(make_copies(s.ref, kind)))
                entry[kind] = {"score": score.tolist(), "right": (nearest == np.arange(len(s.ref))).tolist()}
            out[f"{domain}/{form}"] = entry
    return out


def threshold_rule(scores: dict) -> float:
    """The threshold, from the training sources' honest images alone: the largest over the two domains of
    the 99% quantile of their honest images' scores (tiles and frames together), rounded up to 0.005."""
    q = max(float(np.quantile(np.concatenate([scores[f"{d}/{f}"]["honest"] for f in FORMS
                                              if f"{d}/{f}" in scores]), 0.99)) for d in DOMAINS)
    return math.ceil(q * 200 - 1e-9) / 200


def rates(scores: dict, threshold: float, kinds: list[str]) -> dict:
    """Per domain (tiles and frames together): found per kind, honest flagged; counts beside the rates."""
    out = {}
    for d in DOMAINS:
        keys = [k for k in scores if k.startswith(d + "/")]
        honest = np.concatenate([scores[k]["honest"] for k in keys])
        row = {"honest": {"n": len(honest), "flagged": int(np.sum(honest >= threshold)),
                          "rate": float(np.mean(honest >= threshold)), "max": float(honest.max())}}
        for kind in kinds:
            sc = np.concatenate([scores[k][kind]["score"] for k in keys])
            right = np.concatenate([scores[k][kind]["right"] for k in keys])
            found = (sc >= threshold) & right
            row[kind] = {"n": len(sc), "found": int(found.sum()), "rate": float(found.mean()),
                         "right": float(np.mean(right))}
        for k in keys:
            h = np.asarray(scores[k]["honest"])
            row[f"honest {k.split('/')[1]}"] = {"n": len(h), "flagged": int(np.sum(h >= threshold)),
                                                "max": float(h.max()) if len(h) else None}
        out[d] = row
    return out


def timing(n: int = 10_000, seed: int = 0) -> dict:
    """Seconds for the prints of one image (512 x 512 RGB, uint8 and float32; 2048 x 2048 gray float32) and
    for find_copies with n generated against n reference prints (prints of random windows of the training
    frames; reference and generated sets disjoint)."""
    rng = np.random.default_rng(seed)
    out = {}
    for label, im in (("512x512 RGB uint8", rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)),
                      ("512x512 RGB float32", rng.uniform(0, 255, (512, 512, 3)).astype(np.float32)),
                      ("2048x2048 gray float32", rng.uniform(0, 255, (2048, 2048)).astype(np.float32))):
        TC.fingerprint(im)
        t0 = time.perf_counter()
        for _ in range(20):
            TC.fingerprint(im)
        out[f"fingerprint {label}, ms"] = (time.perf_counter() - t0) / 20 * 1e3
    frames, _ = study_frames(heldout=False)
    pool = [f for fs in frames.values() for f in fs]
    prints = []
    for i in range(2 * n):
        f = pool[i % len(pool)]
        short = min(f.shape[:2])
        s = max(16, int(rng.uniform(0.2, 1.0) * short))
        y, x = int(rng.integers(0, f.shape[0] - s + 1)), int(rng.integers(0, f.shape[1] - s + 1))
        prints.append(TC.fingerprint(f[y:y + s, x:x + s]))
    p = np.stack(prints)
    names = [str(i) for i in range(2 * n)]
    t0 = time.perf_counter()
    TC.find_copies(p[:n], names[:n], p[n:], names[n:])
    out[f"find_copies {n} x {n}, s"] = time.perf_counter() - t0
    out["load average (1, 5, 15 min) after"] = list(os.getloadavg())
    out["cores"] = os.cpu_count()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timing", action="store_true", help="also time the prints and a 10,000 x 10,000 search")
    p.add_argument("--training-only", action="store_true",
                   help="the training sources alone (while choosing; nothing written)")
    args = p.parse_args(argv)
    t0 = time.time()
    kinds, stress = list(KINDS), list(STRESS)
    result: dict = {"kinds": {k: v[0] for k, v in {**KINDS, **STRESS}.items()}, "candidates": {}}
    split_sets = {}
    for split in ("training", "held-out"):
        frames, notes = study_frames(heldout=split == "held-out")
        split_sets[split] = build(frames)
        result[f"{split} notes"] = notes
        result[f"{split} sizes"] = {f"{d}/{f}": {"reference": len(s.ref), "honest": len(s.honest),
                                                 "sources": len(set(s.ref_src + s.honest_src))}
                                    for d, forms in split_sets[split].items() for f, s in forms.items()}
    for name, cand in CANDIDATES.items():
        train = score_all(split_sets["training"], cand, kinds)
        thr = threshold_rule(train)
        entry = {"description": cand.description, "bytes_per_image": cand.bytes_per_image, "threshold": thr,
                 "training": rates(train, thr, kinds)}
        entry["training_smallest_detection"] = min(entry["training"][d][k]["rate"] for d in DOMAINS for k in kinds)
        result["candidates"][name] = entry
        print(f"{name}: threshold {thr:.3f}, smallest training detection {entry['training_smallest_detection']:.3f}",
              flush=True)
    chosen = max((c for c in result["candidates"] if CANDIDATES[c].choosable),
                 key=lambda c: result["candidates"][c]["training_smallest_detection"])
    result["chosen"] = chosen
    if args.training_only:
        print(json.dumps({n: c["training"] for n, c in result["candidates"].items()}, indent=1))
        return 0
    for name, cand in CANDIDATES.items():  # the held-out sources, once, for every candidate at its threshold
        held = score_all(split_sets["held-out"], cand, kinds + stress)
        result["candidates"][name]["held-out"] = rates(held, result["candidates"][name]["threshold"], kinds + stress)
    if args.timing:
        result["timing"] = timing()
    result["minutes"] = (time.time() - t0) / 60
    (ROOT / "docs" / "validation" / "copies.json").write_text(json.dumps(result, indent=1) + "\n")
    print_markdown(result)
    return 0


def print_markdown(r: dict) -> None:
    print(f"\nchosen: {r['chosen']}; shipped THRESHOLD {TC.THRESHOLD}; {r['minutes']:.1f} min\n")
    print("| candidate | bytes per image | threshold | smallest detection, training | held-out: smallest "
          "detection | held-out: honest flagged, photos | medical |")
    print("|---|---|---|---|---|---|---|")
    for name, c in r["candidates"].items():
        h = c["held-out"]
        small = min(h[d][k]["rate"] for d in DOMAINS for k in KINDS)
        print(f"| {name} | {c['bytes_per_image']} | {c['threshold']:.3f} | {c['training_smallest_detection']:.1%} | "
              f"{small:.1%} | {h['photos']['honest']['rate']:.1%} | {h['medical']['honest']['rate']:.1%} |")
    for name in (r["chosen"], *[c for c in r["candidates"] if c != r["chosen"]]):
        c = r["candidates"][name]
        print(f"\n{name} (threshold {c['threshold']:.3f}), held-out sources:\n")
        print("| copy kind | what | photos found | medical found |")
        print("|---|---|---|---|")
        for kind in [*KINDS, *STRESS]:
            cells = [f"{c['held-out'][d][kind]['found']}/{c['held-out'][d][kind]['n']} "
                     f"({c['held-out'][d][kind]['rate']:.1%})" for d in DOMAINS]
            print(f"| {kind}{' (limit)' if kind in STRESS else ''} | {r['kinds'][kind]} | {cells[0]} | {cells[1]} |")
        for d in DOMAINS:
            h = c["held-out"][d]
            parts = ", ".join(f"{f} {h[f'honest {f}']['flagged']}/{h[f'honest {f}']['n']} (max "
                              f"{h[f'honest {f}']['max']:.3f})" for f in FORMS if f"honest {f}" in h)
            print(f"\nhonest {d}: {h['honest']['flagged']}/{h['honest']['n']} flagged ({h['honest']['rate']:.1%}); "
                  f"{parts}")
    if "timing" in r:
        print("\n" + "; ".join(f"{k}: {v}" for k, v in r["timing"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
