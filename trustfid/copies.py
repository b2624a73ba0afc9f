"""The copy check: is a generated image a near-copy of a reference (training) image?

A generator that reproduces its training images leaks them, and for a hospital that is a leak of
patients' images; FID cannot tell (a set of copies has a perfect FID). This module gives every generated
image its nearest reference image and a score, and flags the pairs whose score reaches ``THRESHOLD``.
It works in the pixel domain, so it means the same for CT slices as for photos; the FID network's
features, which describe photos, play no part. docs/VALIDATION.md ("The copy check") has the study
behind every choice and number here (``python -m bench.validation.copy_study``).

**The print** (``fingerprint``, once per image where it is decoded): the image in grayscale (ITU-R 601
luma; alpha dropped), area-averaged to ``SIDE`` x ``SIDE`` = 32 x 32 whatever its size and shape, then
stretched to 0..255: ``uint8``, 1,024 bytes per image. The stretch makes it independent of the image's
intensity scale (8-bit, 16-bit mapped to 8-bit, float in [0, 1] or 0..255 give the same print) and of
any linear window or level change; a constant image has the all-zero print. About 1.2 ms for a 512 x 512
RGB image and 7 ms for a 2048 x 2048 one on the 2-core machine (the FID network takes about 90 ms per
image there). The state of a set is its prints stacked in image order and its names (``to_arrays`` and
``from_arrays`` for an ``.npz`` that loads without pickle; shards merge by concatenation, ``merge``).

**The score** of a generated image g against a reference image r: the correlation of their 16 x 16 grids
(2 x 2 blocks of the print) after removing from each the mean and the linear ramp (a plane fitted over
the compared cells), the best over

- g as it is and g mirrored left-right, and
- crop windows: g against the window of r that leaves out 0 to 10% of r's side at each side
  (``CUTS``, steps of 1/60, each side on its own), resampled onto r's cells inside it; so g may be r
  cropped by up to 10% per side and resized back.

1 is an exact copy (also mirrored, or cropped so); JPEG, light noise, resizing and another linear
intensity window lower it little. Removing the ramp keeps smooth gradients (sky, the shading across a
body) from matching each other. An image whose structure (after removing mean and ramp) fills fewer
than ``MIN_CELLS`` of the 256 cells, a blank or nearly blank image, is *plain*: it has nothing to copy
and is never matched (score 0; ``CopyCheck.plain``).

**The search** (``find_copies``): for each generated image an exact search over all reference images on
8 x 8 prints (mean and ramp removed, the image and its mirror) picks the ``CANDIDATES`` = 16 nearest;
each is scored over the windows leaving out 0, 5 or 10% per side (``SEARCH_CUTS``), and the best two
are refined over all ``CUTS``, one axis at a time (``ROUNDS``). The nearest reference is the best of
them. Generated images go through in blocks of ``block`` (against reference blocks of ``ref_block``)
and 64 at a time through the scoring, so the working memory stays near 100 MB whatever the set sizes,
plus about 1.6 KB per reference image (its grids and norms); the result does not depend on the blocks.
Measured on the 2-core machine shared with other work (load average 3 to 5), prints made: 10,000
generated against 10,000 reference images in 8.7 s, against 100,000 in 27 s with about 240 MB at the
peak. The first search grows with the product of the set sizes, the rest with the generated images.

**Measured on held-out sources** (docs/VALIDATION.md, "The copy check"): every exact, JPEG (quality 75),
mirrored, noisy (sigma 5 of 255), half-size and re-windowed copy found with its reference, photos and
medical alike; copies cropped by up to 10% per side 94% (photos) and 100% (medical); 1 of 186 honest
photos and 1 of 87 honest medical images flagged, both nearly plain. Not found: crops of more than 10%
per side, rotations, and what no pixel check sees (a copy re-synthesised in another pose, a copied part
pasted into another image). Near the threshold: other frames or slices of one scan, the mirror image of
a symmetric anatomy, and scans that share one outline against black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

SIDE = 32  # the print: SIDE x SIDE uint8, 1,024 bytes
GRID = 16  # the compared cells: GRID x GRID, 2 x 2 blocks of the print
COARSE = 8  # the first step's prints: COARSE x COARSE
CUTS = tuple(i / 60 for i in range(7))  # crop windows: the share of the reference's side left out, per side
SEARCH_CUTS = (0.0, 0.05, 0.1)  # the windows every candidate is scored over, before refining (among CUTS)
CANDIDATES = 16  # reference images scored with crop windows, per generated image
REFINE = 2  # of those, the best refined over all CUTS
ROUNDS = 2  # refinement rounds (top and bottom cuts, then left and right)
MIN_CELLS = 3.0  # structure in fewer cells than this (participation ratio): too plain to check
THRESHOLD = 0.97  # a score at or above it is a copy (the study's rule, on its training sources)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")

METHOD = (f"pixel-domain print: grayscale {SIDE}x{SIDE} area average stretched to 0..255; score: correlation of "
          f"{GRID}x{GRID} grids with mean and linear ramp removed, best over mirroring and crop windows leaving "
          f"out up to {max(CUTS):.0%} of each side; nearest reference among the {CANDIDATES} nearest by an exact "
          f"search on {COARSE}x{COARSE} prints; a copy from a score of {THRESHOLD}")
PRINTS_KEY = "copies_v1_prints"  # a saved state's arrays (to_arrays); v1: the print defined above
NAMES_KEY = "copies_v1_names"


# --- the print ------------------------------------------------------------------------------------

def fingerprint(image: np.ndarray) -> np.ndarray:
    """The print of one decoded image: (SIDE, SIDE) uint8, 1,024 bytes (module docstring).

    ``image``: H x W or H x W x C with C in 1, 3, 4 (alpha dropped), any real dtype (uint8, uint16, float
    in [0, 1] or 0..255, as the engine's reader and the Metric's arrays give it); the print does not
    depend on the intensity scale. A constant image gives all zeros. Raises InputError for another
    shape, an empty image or a value that is not finite. About 1.2 ms for a 512 x 512 RGB image on one
    core of the 2-core machine (the FID network takes about 90 ms per image there).
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        channels = [a[..., 0]] if a.shape[2] == 1 else [a[..., c] for c in range(3)]
    elif a.ndim == 2:
        channels = [a]
    else:
        raise InputError(f"copy check: an image must be H x W or H x W x C with C in 1, 3, 4, not shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"copy check: an empty image (shape {a.shape}) has no print")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise InputError(f"copy check: image values must be real numbers, not {a.dtype}")
    # area averages first, then luma: both are linear, so this equals the luma's area average, and the
    # large image is read once per channel without a float copy of the whole
    small = [_area_average(c.astype(np.float32, copy=False)) for c in channels]
    thumb = small[0] if len(small) == 1 else sum(w * s for w, s in zip(LUMA, small))
    if not np.all(np.isfinite(thumb)):
        raise InputError("copy check: the image holds values that are not finite (NaN or infinity)")
    lo, hi = float(thumb.min()), float(thumb.max())
    if not hi - lo > 1e-6 * max(abs(lo), abs(hi)):
        return np.zeros((SIDE, SIDE), np.uint8)  # constant: nothing to copy, matches nothing
    return np.rint((thumb - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def batch_prints(x) -> np.ndarray:
    """(n, SIDE, SIDE) uint8 prints of a batch of images (n, C, H, W), a numpy array or a torch tensor on any
    device (the FID network's input as the collector sees it, extras.py)."""
    a = x.float().cpu().numpy() if hasattr(x, "cpu") else np.asarray(x, np.float32)
    return np.stack([fingerprint(im.transpose(1, 2, 0)) for im in a]) if len(a) else np.zeros((0, SIDE, SIDE), np.uint8)


def _area_average(channel: np.ndarray) -> np.ndarray:
    """A 2-D float32 array area-averaged (Pillow's BOX filter: exact pixel-area weights) to SIDE x SIDE,
    as float64; a smaller image is enlarged by the same rule (each print cell takes the pixel it lies in)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
    return np.asarray(im.resize((SIDE, SIDE), Image.Resampling.BOX), np.float64)


# --- the state of a set ---------------------------------------------------------------------------

def stack(prints) -> np.ndarray:
    """A list of prints (or an array of them) as one (n, SIDE, SIDE) uint8 array, checked."""
    arr = np.asarray(prints) if not isinstance(prints, np.ndarray) else prints
    if arr.size == 0 and arr.ndim != 3:
        arr = np.zeros((0, SIDE, SIDE), np.uint8)
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE) or arr.dtype != np.uint8:
        raise InputError(f"copy check: prints must be (n, {SIDE}, {SIDE}) uint8 (from copies.fingerprint), not "
                         f"{arr.shape} {arr.dtype}")
    return arr


def to_arrays(prints, names) -> dict[str, np.ndarray]:
    """The state of a set as arrays for ``np.savez``: the prints in image order and the names (a str array:
    it loads with ``allow_pickle=False``)."""
    p = stack(prints)
    n = np.asarray([str(x) for x in names], dtype=str)
    if len(n) != len(p):
        raise InputError(f"copy check: {len(p)} prints but {len(n)} names")
    return {PRINTS_KEY: p, NAMES_KEY: n}


def from_arrays(arrays) -> tuple[np.ndarray, list[str]]:
    """(prints, names) from ``to_arrays``'s dict or a loaded ``.npz``; InputError when they are missing
    (saved without the copy check, or by another version of the print)."""
    if PRINTS_KEY not in arrays or NAMES_KEY not in arrays:
        raise InputError(f"copy check: these arrays hold no prints of this version ({PRINTS_KEY}); compute the "
                         "set's prints again")
    p, n = stack(np.asarray(arrays[PRINTS_KEY])), [str(x) for x in np.asarray(arrays[NAMES_KEY])]
    if len(n) != len(p):
        raise InputError(f"copy check: {len(p)} prints but {len(n)} names")
    return p, n


def merge(*parts: tuple[np.ndarray, list[str]]) -> tuple[np.ndarray, list[str]]:
    """Shards of one set, in order, as one state: prints concatenated, names concatenated."""
    prints = [stack(p) for p, _ in parts]
    names = [str(x) for _, n in parts for x in n]
    return (np.concatenate(prints) if prints else stack([])), names


# --- the score --------------------------------------------------------------------------------------

def _box(n_in: int, n_out: int, start: float, stop: float) -> np.ndarray:
    """(n_out, n_in): output cell k = the area average of [start, stop) cut in n_out equal parts, over
    input pixels [i, i + 1)."""
    edges = start + (stop - start) * np.arange(n_out + 1) / n_out
    lo, hi, i = edges[:-1, None], edges[1:, None], np.arange(n_in)[None, :]
    return np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None) / (hi - lo)


def _plane_basis(rows: int, cols: int, y0: int, y1: int, x0: int, x1: int, ramp: bool = True) -> np.ndarray:
    """(3, rows * cols): orthonormal constant, vertical and horizontal ramp over the rectangle, zero outside
    (a rectangle of one row or column has no ramp that way, and without ``ramp`` neither: those are zero)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    inside = np.zeros((rows, cols))
    inside[y0:y1, x0:x1] = 1.0
    out = []
    ramps = ((yy - (y0 + y1 - 1) / 2) * inside, (xx - (x0 + x1 - 1) / 2) * inside) if ramp else (0 * yy, 0 * xx)
    for v in (inside, *ramps):
        norm = np.linalg.norm(v)
        out.append((v / norm if norm > 0 else v).ravel())
    return np.stack(out)


@dataclass(frozen=True)
class _Geometry:
    """Everything the score needs that depends only on SIDE, GRID, COARSE, CUTS and SEARCH_CUTS (and whether
    the ramp is removed: always, but for the study's comparison)."""

    coarse: np.ndarray  # (COARSE, SIDE): print -> coarse grid
    grid: np.ndarray  # (GRID, SIDE): print -> compared cells
    coarse_plane: np.ndarray  # (3, COARSE²)
    windows: np.ndarray  # (A, GRID, SIDE): per axis and (cut, cut) pair, a generated print onto r's cells
    axis_range: np.ndarray  # (A,): the cell range (index into ranges) each axis window keeps
    axis_cut: np.ndarray  # (A, 2): its cuts (top, bottom) or (left, right)
    search: np.ndarray  # the axis windows of the first search (both cuts in SEARCH_CUTS)
    ranges: list  # the distinct (first, end) cell ranges
    rect_plane: np.ndarray  # (R², 3, GRID²): plane basis per rectangle (ranges y * R + x)
    rect_mask: np.ndarray  # (R², GRID²)
    # the plane basis is separable: constant = a_y a_x^T, vertical ramp b_y a_x^T, horizontal a_y b_x^T
    range_a: np.ndarray  # (R, GRID): per range, its constant of unit length
    range_b: np.ndarray  # (R, GRID): per range, its centred ramp of unit length
    wtw: np.ndarray  # (A, SIDE²): W_a^T W_a, flattened (the squared length of a resampled grid)
    wta: np.ndarray  # (A, SIDE): W_a^T a (a: the constant of the window's range)
    wtb: np.ndarray  # (A, SIDE): W_a^T b


def _geometry(side: int, grid: int, coarse: int, cuts: tuple, search_cuts: tuple, ramp: bool) -> _Geometry:
    windows, ranges, axis_range, axis_cut = [], [], [], []
    for t in cuts:
        for b in cuts:
            first, end = math.ceil(t * grid - 1e-9), math.floor((1 - b) * grid + 1e-9)
            m = np.zeros((grid, side))
            for i in range(first, end):  # r's cell i covers [i, i+1) / grid of r: in g, (that - t) / (1 - t - b)
                u0, u1 = (i / grid - t) / (1 - t - b), ((i + 1) / grid - t) / (1 - t - b)
                m[i] = _box(side, 1, u0 * side, u1 * side)[0]
            if (first, end) not in ranges:
                ranges.append((first, end))
            windows.append(m)
            axis_range.append(ranges.index((first, end)))
            axis_cut.append((t, b))
    n_r = len(ranges)
    planes = [_plane_basis(grid, grid, *ranges[ry], *ranges[rx], ramp) for ry in range(n_r) for rx in range(n_r)]
    search = [a for a, (t, b) in enumerate(axis_cut) if any(abs(t - c) < 1e-9 for c in search_cuts)
              and any(abs(b - c) < 1e-9 for c in search_cuts)]
    if (0, grid) not in ranges or len(search) != len(search_cuts) ** 2:
        raise ValueError("the cuts must include 0 and every search cut")
    range_a, range_b = np.zeros((n_r, grid)), np.zeros((n_r, grid))
    for k, (first, end) in enumerate(ranges):
        range_a[k, first:end] = 1 / math.sqrt(end - first)
        cells = np.arange(first, end) - (first + end - 1) / 2
        range_b[k, first:end] = cells / np.linalg.norm(cells) if ramp and end - first > 1 else 0.0
    w = np.stack(windows)
    wa, wb = range_a[axis_range], range_b[axis_range]
    return _Geometry(coarse=_box(side, coarse, 0, side), grid=_box(side, grid, 0, side),
                     coarse_plane=_plane_basis(coarse, coarse, 0, coarse, 0, coarse, ramp),
                     windows=np.stack(windows).astype(np.float32), axis_range=np.array(axis_range),
                     axis_cut=np.array(axis_cut, np.float32), search=np.array(search), ranges=ranges,
                     rect_plane=np.stack(planes).astype(np.float32),
                     rect_mask=np.stack([p[0] > 0 for p in planes]).astype(np.float64),
                     range_a=range_a, range_b=range_b,
                     wtw=np.einsum("ais,ait->ast", w, w).reshape(len(w), -1),
                     wta=np.einsum("ais,ai->as", w, wa), wtb=np.einsum("ais,ai->as", w, wb))


_GEOMETRY: dict[tuple, _Geometry] = {}


def _geo(side: int, grid: int, coarse: int, cuts, search_cuts, ramp: bool = True) -> _Geometry:
    key = (side, grid, coarse, tuple(cuts), tuple(search_cuts), ramp)
    if key not in _GEOMETRY:
        _GEOMETRY[key] = _geometry(*key)
    return _GEOMETRY[key]


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-6 * np.sqrt(x.shape[-1]))


def _coarse_prints(p: np.ndarray, geo: _Geometry, mirrored: bool) -> np.ndarray:
    """(n, COARSE²) or, with the mirror image, (n, 2, COARSE²): mean and ramp removed, unit length."""
    c = geo.coarse @ p @ geo.coarse.T  # (n, C, C)
    c = np.stack([c, c[:, :, ::-1]], 1) if mirrored else c
    c = c.reshape(c.shape[:-2] + (-1,))
    c = c - (c @ geo.coarse_plane.T) @ geo.coarse_plane
    return _unit(c).astype(np.float32)


def _reference_norms(cells: np.ndarray, geo: _Geometry) -> np.ndarray:
    """(n, R²): the length of each reference grid over each rectangle with the rectangle's plane removed (0
    where nothing is left but rounding)."""
    sq = (cells ** 2) @ geo.rect_mask.T  # (n, R²)
    proj = np.einsum("nd,rjd->nrj", cells, geo.rect_plane.astype(np.float64))
    norm2 = sq - np.sum(proj ** 2, axis=-1)
    return np.where(norm2 > 1e-10 * np.maximum(sq, 1e-300), np.sqrt(np.maximum(norm2, 0.0)), 0.0)


def _structure(cells: np.ndarray, geo: _Geometry) -> np.ndarray:
    """(n,): how many of the GRID² cells the structure of each grid fills (the participation ratio of the
    squared residual after removing the mean and ramp: 1 for a single bright cell, GRID² for an even
    spread); 0 for a flat grid."""
    full = geo.ranges.index((0, geo.grid.shape[0]))
    plane = geo.rect_plane[full * len(geo.ranges) + full].astype(np.float64)
    e = (cells - (cells @ plane.T) @ plane) ** 2
    total, peak = e.sum(axis=1), (e ** 2).sum(axis=1)
    return np.divide(total ** 2, peak, out=np.zeros_like(total), where=peak > 1e-12 * np.maximum(total, 1e-300) ** 2)


def _score_block(g, cand, s, geo, ref_cells, ref_norms, nearest, score, mirrored, crop) -> None:
    """The full score of generated prints ``g`` (rows s.. of the set) against their candidates ``cand``; writes
    the best into the output arrays. First every candidate over the SEARCH_CUTS windows (and mirrored); then
    the REFINE best, each from its best window, window by window along each axis over all CUTS (ROUNDS
    times): the score is the best found."""
    n, m, d = len(g), cand.shape[1], geo.grid.shape[0] ** 2
    n_r = len(geo.ranges)
    both = np.stack([g, g[:, :, ::-1]], 1)  # (n, 2, S, S)
    # the search: (n, 2, As², D) grids against every candidate
    w = geo.windows[geo.search]  # (As, G, S)
    a_s, grid = len(w), w.shape[1]
    rows = (w.reshape(a_s * grid, -1) @ both).reshape(n, 2, a_s, grid, -1)
    cells = (rows @ w.reshape(a_s * grid, -1).T).reshape(n, 2, a_s, grid, a_s, grid)
    cells = cells.transpose(0, 1, 2, 4, 3, 5).reshape(n, 2, a_s * a_s, d)
    rng_s = geo.axis_range[geo.search]
    rect = (rng_s[:, None] * n_r + rng_s[None, :]).ravel()  # (As²,)
    plane = geo.rect_plane[rect]
    cells = _unit(cells - np.einsum("nfhj,hjd->nfhd", np.einsum("nfhd,hjd->nfhj", cells, plane), plane))
    dots = np.matmul(cells.reshape(n, 2 * a_s * a_s, d), ref_cells[cand].transpose(0, 2, 1))  # (n, 2H, m)
    norms = ref_norms[cand][:, :, rect]  # (n, m, H)
    sc = np.divide(dots.reshape(n, 2, a_s * a_s, m).transpose(0, 3, 1, 2), norms[:, :, None],
                   out=np.zeros((n, m, 2, a_s * a_s), np.float32), where=norms[:, :, None] > 0).reshape(n, m, -1)
    first = sc.argmax(axis=2)  # (n, m): first maximum: not mirrored, smallest cuts
    first_score = np.take_along_axis(sc, first[:, :, None], 2)[:, :, 0]
    # the refinement of the REFINE best candidates (ties: the smaller reference index, candidates ascend)
    k = min(REFINE, m)
    pick = np.argsort(-first_score, axis=1, kind="stable")[:, :k]  # (n, k)
    pairs_gen = np.repeat(np.arange(n), k)
    pick = pick.ravel()
    best_h = first[pairs_gen, pick]
    flip = best_h // (a_s * a_s)
    iy = geo.search[(best_h % (a_s * a_s)) // a_s]
    ix = geo.search[best_h % a_s]
    ref_idx = cand[pairs_gen, pick]
    gp = both[pairs_gen, flip].astype(np.float64)  # (P, S, S)
    r_cells = ref_cells[ref_idx].astype(np.float64).reshape(-1, grid, grid)  # (P, G, G)
    r_norms = ref_norms[ref_idx]  # (P, R²)
    best = first_score[pairs_gen, pick]
    for _ in range(ROUNDS):
        for axis in (0, 1):
            fixed = ix if axis == 0 else iy
            at, best = _refine_axis(gp, r_cells, r_norms, fixed, axis, geo)
            if axis == 0:
                iy = at
            else:
                ix = at
    best = best.reshape(n, k)
    win = best.argmax(axis=1)  # first maximum: the better start, then the smaller reference index
    rows_n = np.arange(n)
    chosen = rows_n * k + win
    nearest[s:s + n] = ref_idx[chosen]
    score[s:s + n] = np.clip(best[rows_n, win], -1.0, 1.0)
    mirrored[s:s + n] = flip[chosen] == 1
    crop[s:s + n] = np.concatenate([geo.axis_cut[iy[chosen]], geo.axis_cut[ix[chosen]]], axis=1)


def _refine_axis(gp, r_cells, r_norms, fixed, axis, geo):
    """Every window along one axis (0: top/bottom cuts, the left/right window ``fixed``; 1: the other way
    round) for P pairs (generated print ``gp`` (P, S, S), reference grid ``r_cells`` (P, G, G)): the best
    window's index and score per pair.

    Without resampling the generated print for each window: with C_a = W_a g W^T (axis 0) the grid of
    window a, C_a . r, |C_a|² and C_a's plane coefficients are dot products of W_a (or W_a^T W_a) with small
    per-pair matrices, and the score is (C.r - sum_j c_j (q_j.r)) / (|C - sum_j c_j q_j| |r's residual|).
    """
    n_r = len(geo.ranges)
    w_fixed = geo.windows[fixed].astype(np.float64)  # (P, G, S)
    r_fixed = geo.axis_range[fixed]  # (P,)
    fa, fb = geo.range_a[r_fixed], geo.range_b[r_fixed]  # (P, G): the fixed axis's constant and ramp
    if axis == 0:
        h = gp @ w_fixed.transpose(0, 2, 1)  # g W_x^T: (P, S, G); C_a = W_a h
        z = h @ r_cells.transpose(0, 2, 1)  # (P, S, G_y): C_a . r = sum W_a[i, s] z[s, i]
        z = z.transpose(0, 2, 1)
        gram = h @ h.transpose(0, 2, 1)  # (P, S, S)
        hu, hv = np.einsum("psg,pg->ps", h, fa), np.einsum("psg,pg->ps", h, fb)
        c0, cy, cx = hu @ geo.wta.T, hu @ geo.wtb.T, hv @ geo.wta.T  # (P, A)
        ra, rb = np.einsum("pij,pj->pi", r_cells, fa), np.einsum("pij,pj->pi", r_cells, fb)
        q0, qy, qx = ra @ geo.range_a[geo.axis_range].T, ra @ geo.range_b[geo.axis_range].T, \
            rb @ geo.range_a[geo.axis_range].T
        rect = geo.axis_range[None, :] * n_r + r_fixed[:, None]
    else:
        h = w_fixed @ gp  # W_y g: (P, G, S); C_a = h W_a^T
        z = r_cells.transpose(0, 2, 1) @ h  # (P, G_x, S): C_a . r = sum W_a[j, s] z[j, s]
        gram = h.transpose(0, 2, 1) @ h
        hu, hv = np.einsum("pgs,pg->ps", h, fa), np.einsum("pgs,pg->ps", h, fb)
        c0, cy, cx = hu @ geo.wta.T, hv @ geo.wta.T, hu @ geo.wtb.T
        ra, rb = np.einsum("pg,pgj->pj", fa, r_cells), np.einsum("pg,pgj->pj", fb, r_cells)
        q0, qy, qx = ra @ geo.range_a[geo.axis_range].T, rb @ geo.range_a[geo.axis_range].T, \
            ra @ geo.range_b[geo.axis_range].T
        rect = r_fixed[:, None] * n_r + geo.axis_range[None, :]
    w = geo.windows.reshape(len(geo.windows), -1).astype(np.float64)  # (A, G*S)
    dot = z.reshape(len(z), -1) @ w.T  # (P, A)
    sq = gram.reshape(len(gram), -1) @ geo.wtw.T
    res2 = sq - c0 ** 2 - cy ** 2 - cx ** 2
    num = dot - c0 * q0 - cy * qy - cx * qx
    den = np.sqrt(np.maximum(res2, 0.0)) * np.take_along_axis(r_norms, rect, axis=1)
    ok = (den > 0) & (res2 > 1e-9 * np.maximum(sq, 1e-300))
    sc = np.divide(num, den, out=np.zeros(num.shape), where=ok)
    at = sc.argmax(axis=1)
    return at, sc[np.arange(len(at)), at].astype(np.float32)


@dataclass
class CopyCheck:
    """The copy check of a generated set against a reference set.

    Per generated image, in the order given: ``nearest`` (index into the reference set) and
    ``nearest_names``, ``score`` (float32, -1..1; 1 = an exact copy), ``mirrored`` (the best match was
    the generated image mirrored), ``crop`` (the share left out of the reference at its top, bottom,
    left and right sides in the best match, to a few percent of the side) and ``plain`` (too plain to
    check: its structure fills fewer than MIN_CELLS cells, a blank or nearly blank image; score 0).
    ``reference_plain``: how many reference images are too plain to be matched. ``copies``: the
    generated images scoring at or above ``threshold``, as ``{"generated", "reference", "score",
    "mirrored"}``, worst (highest score) first; ``share``: their fraction of the generated set."""

    method: str
    threshold: float
    generated: list[str]
    reference_count: int
    nearest: np.ndarray
    nearest_names: list[str]
    score: np.ndarray
    mirrored: np.ndarray
    crop: np.ndarray
    plain: np.ndarray
    reference_plain: int
    copies: list[dict] = field(default_factory=list)

    @property
    def share(self) -> float:
        return len(self.copies) / len(self.generated)

    def to_dict(self, per_image: bool = False) -> dict:
        """JSON-ready: the summary and the flagged copies; with ``per_image``, every image's nearest too."""
        out = {"method": self.method, "threshold": self.threshold, "generated": len(self.generated),
               "reference": self.reference_count, "copies": len(self.copies), "share": self.share,
               "flagged": self.copies, "plain": {"generated": int(self.plain.sum()), "reference": self.reference_plain}}
        if per_image:
            out["nearest"] = [{"generated": g, "reference": r, "score": float(s), "mirrored": bool(m)}
                              for g, r, s, m in zip(self.generated, self.nearest_names, self.score, self.mirrored)]
        return out


def find_copies(ref_prints, ref_names, gen_prints, gen_names, threshold: float = THRESHOLD, *,
                block: int = 1024, ref_block: int = 4096, candidates: int = CANDIDATES, ramp: bool = True) -> CopyCheck:
    """Every generated image's nearest reference image and score, and the copies (module docstring).

    ``ref_prints``, ``gen_prints``: (n, SIDE, SIDE) uint8 (``fingerprint`` of each image, stacked, or a
    list of them); the names in the same order. ``block`` generated and ``ref_block`` reference images
    are compared at a time (the result does not depend on them). ``candidates`` and ``ramp`` (remove the
    linear ramp) are the search's settings: other values than the defaults are for studies (the threshold
    was chosen with these).
    Raises InputError when a set is empty or prints and names do not match.
    """
    with _one_blas_thread():
        return _find_copies(ref_prints, ref_names, gen_prints, gen_names, threshold, block, ref_block, candidates, ramp)


def _one_blas_thread():
    """The search's matrix products are many and small: on one BLAS thread they do not wait for each other's
    threads. On the 2-core machine shared with other work (load average 5), 10,000 x 10,000 took 10 s on one
    thread and 50 s on two (threadpoolctl, an engine dependency, sets it for the search only)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _find_copies(ref_prints, ref_names, gen_prints, gen_names, threshold, block, ref_block, candidates,
                 ramp) -> CopyCheck:
    geo = _geo(SIDE, GRID, COARSE, CUTS, SEARCH_CUTS, ramp)
    ref, gen = stack(ref_prints), stack(gen_prints)
    ref_names, gen_names = [str(x) for x in ref_names], [str(x) for x in gen_names]
    for what, p, n in (("reference", ref, ref_names), ("generated", gen, gen_names)):
        if len(p) != len(n):
            raise InputError(f"copy check: {len(p)} {what} prints but {len(n)} names")
        if len(p) == 0:
            raise InputError(f"copy check: the {what} set has no images")
    if block < 1 or ref_block < 1 or candidates < 1:
        raise InputError("copy check: block, ref_block and candidates must be at least 1")
    m = min(candidates, len(ref))
    ref_coarse = np.empty((len(ref), COARSE * COARSE), np.float32)  # kept per reference image: 1.6 KB in all
    ref_cells = np.empty((len(ref), GRID * GRID), np.float32)
    ref_norms = np.empty((len(ref), len(geo.ranges) ** 2), np.float32)
    ref_plain = np.empty(len(ref), bool)
    for r in range(0, len(ref), ref_block):
        f = ref[r:r + ref_block].astype(np.float32)
        cells = (geo.grid @ f @ geo.grid.T).reshape(len(f), -1)  # float64 (geo)
        ref_coarse[r:r + len(f)] = _coarse_prints(f, geo, mirrored=False)
        ref_norms[r:r + len(f)] = _reference_norms(cells, geo)
        ref_plain[r:r + len(f)] = _structure(cells, geo) < MIN_CELLS
        ref_cells[r:r + len(f)] = cells
    ref_coarse[ref_plain] = 0.0  # a plain reference image is never a candidate's match: score 0
    ref_norms[ref_plain] = 0.0

    nearest = np.zeros(len(gen), np.int64)
    score = np.zeros(len(gen), np.float32)
    mirrored = np.zeros(len(gen), bool)
    crop = np.zeros((len(gen), 4), np.float32)
    gen_plain = np.zeros(len(gen), bool)
    for s in range(0, len(gen), block):
        g = gen[s:s + block].astype(np.float32)
        gen_plain[s:s + len(g)] = _structure((geo.grid @ g @ geo.grid.T).reshape(len(g), -1), geo) < MIN_CELLS
        cand = _candidates(_coarse_prints(g, geo, mirrored=True), ref_coarse, m, ref_block)  # (n, m) ascending
        for q in range(0, len(g), _HYP_BLOCK):
            _score_block(g[q:q + _HYP_BLOCK], cand[q:q + _HYP_BLOCK], s + q, geo, ref_cells, ref_norms,
                         nearest, score, mirrored, crop)
    score[gen_plain] = 0.0
    flagged = np.flatnonzero(score >= threshold)
    flagged = flagged[np.lexsort((flagged, -score[flagged]))]
    copies = [{"generated": gen_names[i], "reference": ref_names[nearest[i]], "score": float(score[i]),
               "mirrored": bool(mirrored[i])} for i in flagged]
    method = METHOD if (candidates, ramp, threshold) == (CANDIDATES, True, THRESHOLD) else (
        f"{METHOD} (study settings: {candidates} candidates, ramp {'removed' if ramp else 'kept'}, threshold "
        f"{threshold})")
    return CopyCheck(method, float(threshold), gen_names, len(ref), nearest, [ref_names[i] for i in nearest], score,
                     mirrored, crop, gen_plain, int(ref_plain.sum()), copies)


_HYP_BLOCK = 64  # generated images scored at a time: the search's grids are (64, 2, 81, 256) float32, 11 MB

def _candidates(gen_coarse: np.ndarray, ref_coarse: np.ndarray, m: int, ref_block: int) -> np.ndarray:
    """(n, m): for each generated image the m reference images nearest on the coarse prints (the better of
    as is and mirrored), exactly, ties to the smaller index; in ascending index order."""
    n = len(gen_coarse)
    best_s = np.full((n, 0), -np.inf, np.float32)
    best_i = np.zeros((n, 0), np.int64)
    flat = gen_coarse.reshape(2 * n, -1)
    for r in range(0, len(ref_coarse), ref_block):
        sim = (flat @ ref_coarse[r:r + ref_block].T).reshape(n, 2, -1).max(axis=1)  # (n, b)
        keep = _top(sim, np.arange(sim.shape[1]), m)  # the block's best, then merged with the best so far
        s_all = np.concatenate([best_s, np.take_along_axis(sim, keep, 1)], axis=1)
        i_all = np.concatenate([best_i, keep + r], axis=1)
        keep = _top(s_all, i_all, m)
        best_s, best_i = np.take_along_axis(s_all, keep, 1), np.take_along_axis(i_all, keep, 1)
    return np.sort(best_i, axis=1)


def _top(s: np.ndarray, idx: np.ndarray, m: int) -> np.ndarray:
    """Columns of the m largest values per row, ties to the smaller ``idx`` (one index per column, or per
    element), so that the choice does not depend on how the reference set was cut into blocks."""
    if s.shape[1] <= m:
        return np.broadcast_to(np.arange(s.shape[1]), s.shape).copy()
    part = np.argpartition(-s, m - 1, axis=1)[:, :m]
    kth = np.take_along_axis(s, part, 1).min(axis=1)
    tied = np.flatnonzero(np.sum(s >= kth[:, None], axis=1) > m)  # rows where the cut falls inside a tie
    for row in tied:
        order = np.lexsort((idx if idx.ndim == 1 else idx[row], -s[row]))
        part[row] = order[:m]
    return part
