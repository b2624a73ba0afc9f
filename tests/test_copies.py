"""The copy check (trustfid/copies.py): near-copies of reference images hidden among honest generated
images are found with the right reference, honest images are not flagged, and every input a decode
process can hand it gives a print or a clear error.

The set tests use the copy study's images (bench/validation/copy_study.py) from the held-out sources
(split.py), which nothing in the check was chosen on: photos, and the medical scans (CT, MR, CR,
ultrasound, fundus, histology, microscopy; DICOM files through the engine's own reader).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from bench.validation import copy_study as CS
from trustfid import copies as TC
from trustfid.errors import InputError

pytestmark = pytest.mark.engine

ROOT = CS.ROOT


@pytest.fixture(scope="module")
def heldout():
    frames, notes = CS.study_frames(heldout=True)
    assert not [n for n in notes if "not found" in n or "not decoded" in n], \
        f"held-out sources missing (scripts/setup.sh installs them): {notes}"
    return CS.build(frames)


def _hidden_copies(split: CS.Split, seed: int):
    """A generated set: every honest image, and one copy of each reference image (the kinds in turn),
    shuffled; names that do not tell which is which. Returns the set and the truth."""
    kinds = list(CS.KINDS)
    images, truth = [], []  # truth: (kind, reference index) or None
    for i, im in enumerate(split.ref):
        kind = kinds[i % len(kinds)]
        images.append(CS.make_copies([im], kind, seed=seed + i)[0])
        truth.append((kind, i))
    images += split.honest
    truth += [None] * len(split.honest)
    order = np.random.default_rng(seed).permutation(len(images))
    return [images[k] for k in order], [truth[k] for k in order]


def _check_set(split: CS.Split, seed: int):
    ref_names = [f"{src}#{i}" for i, src in enumerate(split.ref_src)]
    images, truth = _hidden_copies(split, seed)
    gen_names = [f"gen_{k:04d}.png" for k in range(len(images))]
    result = TC.find_copies([TC.fingerprint(im) for im in split.ref], ref_names,
                            [TC.fingerprint(im) for im in images], gen_names)
    flagged = {c["generated"]: c["reference"] for c in result.copies}
    copies = [(g, ref_names[t[1]], t[0]) for g, t in zip(gen_names, truth) if t is not None]
    found = [g for g, ref, _ in copies if flagged.get(g) == ref]
    missed = [(kind, g) for g, ref, kind in copies if flagged.get(g) != ref]
    honest = [g for g, t in zip(gen_names, truth) if t is None]
    false = [g for g in honest if g in flagged]
    return result, copies, found, missed, honest, false


@pytest.mark.parametrize("domain", ["photos", "medical"])
def test_hidden_copies_are_found_with_their_reference_and_honest_images_are_not(heldout, domain):
    """Copies of every kind the check claims (exact, JPEG 75, mirrored, noise σ 5, cropped up to 10% per
    side, half size, another intensity window, and combinations) hidden among honest images of the same
    held-out sources: at least 95% found with the right reference, at most 2% of the honest images flagged.
    Tiles (honest images cut beside the reference tiles of the same photo or scan) and whole frames (other
    slices and frames of the same scans, other scans of the modality) both."""
    for form in CS.FORMS:
        split = heldout[domain][form]
        assert len(split.ref) >= 10 and len(split.honest) >= 10, (form, len(split.ref), len(split.honest))
        result, copies, found, missed, honest, false = _check_set(split, seed={"tiles": 1, "frames": 2}[form])
        assert len(found) >= 0.95 * len(copies), f"{domain} {form}: missed {len(missed)} of {len(copies)}: {missed}"
        assert len(false) <= 0.02 * len(honest), f"{domain} {form}: {len(false)} of {len(honest)} honest flagged"
        scores = [c["score"] for c in result.copies]
        assert scores == sorted(scores, reverse=True) and all(s >= TC.THRESHOLD for s in scores)
        assert result.share == pytest.approx(len(result.copies) / (len(copies) + len(honest)))


def test_every_generated_image_gets_its_nearest_reference_and_a_score(heldout):
    split = heldout["medical"]["frames"]
    ref = np.stack([TC.fingerprint(im) for im in split.ref])
    names = [f"r{i}" for i in range(len(ref))]
    gen = [split.honest[0], split.ref[3], np.ascontiguousarray(split.ref[5][:, ::-1])]
    r = TC.find_copies(ref, names, [TC.fingerprint(im) for im in gen], ["honest", "copy", "mirrored"])
    assert r.nearest.shape == r.score.shape == r.mirrored.shape == (3,) and r.crop.shape == (3, 4)
    assert r.nearest_names[1:] == ["r3", "r5"] and r.score[1] == pytest.approx(1.0, abs=1e-5)
    assert not r.mirrored[1] and r.mirrored[2] and r.score[2] == pytest.approx(1.0, abs=1e-5)
    assert r.score[0] < TC.THRESHOLD
    assert [c["generated"] for c in r.copies] == ["copy", "mirrored"] or \
        [c["generated"] for c in r.copies] == ["mirrored", "copy"]
    d = json.loads(json.dumps(r.to_dict(per_image=True)))
    assert d["copies"] == 2 and d["threshold"] == TC.THRESHOLD and d["method"] == TC.METHOD
    assert [x["reference"] for x in d["nearest"]] == r.nearest_names


def test_a_cropped_copy_says_how_much_was_cut(heldout):
    im = heldout["photos"]["tiles"].ref[0]
    h, w = im.shape[:2]
    cut = im[round(0.06 * h):h - round(0.02 * h), 0:w - round(0.08 * w)]
    copy = np.asarray(Image.fromarray(np.ascontiguousarray(cut)).resize((w, h), Image.Resampling.BICUBIC))
    r = TC.find_copies([TC.fingerprint(im)], ["ref"], [TC.fingerprint(copy)], ["gen"])
    assert r.score[0] >= TC.THRESHOLD and r.copies[0]["reference"] == "ref"
    assert np.abs(r.crop[0] - [0.06, 0.02, 0.0, 0.08]).max() <= 0.04, r.crop[0]  # a few percent of the side


# --- the print: whatever the decoder hands over ----------------------------------------------------------

def _scene(h=90, w=120, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    im = np.stack([128 + 60 * np.sin(xx / (7 + 3 * c) + rng.uniform(0, 6)) * np.cos(yy / (9 + c)) for c in range(3)], -1)
    return np.clip(im + rng.normal(0, 8, im.shape), 0, 255).astype(np.uint8)


def test_the_print_is_1024_bytes_and_ignores_the_intensity_scale():
    im = _scene()
    p = TC.fingerprint(im)
    assert p.dtype == np.uint8 and p.shape == (TC.SIDE, TC.SIDE) and p.nbytes == 1024
    assert p.min() == 0 and p.max() == 255
    as_read = im.astype(np.float32)  # what the engine's reader hands to decode_worker.prepare
    assert np.array_equal(TC.fingerprint(as_read), p)
    assert np.abs(TC.fingerprint(as_read / 255.0).astype(int) - p).max() <= 1  # a Metric's float in [0, 1]
    assert np.abs(TC.fingerprint(as_read * 0.5 + 40).astype(int) - p).max() <= 1  # another window and level


def test_the_print_of_a_file_as_the_engine_reads_it_matches_the_array(tmp_path):
    from trustfid.inputs import open_images

    im = _scene()
    Image.fromarray(im).save(tmp_path / "a.png")
    (name, decoded), = [e for e in open_images(tmp_path)]
    assert decoded.dtype == np.float32 and decoded.shape == im.shape
    assert np.array_equal(TC.fingerprint(decoded), TC.fingerprint(im))


def test_grayscale_in_every_layout_gives_one_print():
    g = _scene()[..., 1]
    p = TC.fingerprint(g)
    assert np.array_equal(TC.fingerprint(g[:, :, None]), p)
    assert np.abs(TC.fingerprint(np.repeat(g[:, :, None], 3, axis=2)).astype(int) - p).max() <= 1


def test_a_16_bit_scan_and_its_8_bit_rendering_are_one_image_to_the_check():
    """A CT-like 12-bit image stored in uint16 and the same image mapped to 8 bits by its min..max (the
    engine's rule for 16-bit files) are a copy of each other; a different scan is not."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256]
    body = ((yy - 128) ** 2 / 100 ** 2 + (xx - 128) ** 2 / 80 ** 2 < 1)
    organs = 400 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 300 * ((yy - 90) ** 2 + (xx - 150) ** 2 < 400)
    scan16 = np.clip(body * (1000 + organs) + rng.normal(0, 20, body.shape), 0, 4095).astype(np.uint16)
    scan8 = np.rint((scan16 - scan16.min()) / (scan16.max() - scan16.min()) * 255).astype(np.uint8)
    body2 = ((yy - 120) ** 2 / 90 ** 2 + (xx - 136) ** 2 / 95 ** 2 < 1)  # another patient: another outline
    other = np.clip(body2 * (1000 + 400 * np.sin(yy / 11.0) * np.cos(xx / 7.0)), 0, 4095).astype(np.uint16)
    r = TC.find_copies([TC.fingerprint(scan16)], ["patient"], [TC.fingerprint(scan8), TC.fingerprint(other)],
                       ["rendered", "other"])
    assert [c["generated"] for c in r.copies] == ["rendered"] and r.score[0] > 0.99 and r.score[1] < TC.THRESHOLD


def test_rgba_drops_the_alpha_channel():
    im = _scene()
    alpha = np.random.default_rng(1).integers(0, 256, im.shape[:2], dtype=np.uint8)
    assert np.array_equal(TC.fingerprint(np.dstack([im, alpha])), TC.fingerprint(im))


def test_tiny_and_constant_images_have_prints_and_match_nothing():
    for shape in [(1, 1), (1, 1, 3), (3, 5), (2, 2, 4)]:
        p = TC.fingerprint(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape))
        assert p.shape == (TC.SIDE, TC.SIDE) and p.dtype == np.uint8
    assert not TC.fingerprint(np.full((64, 64, 3), 200, np.uint8)).any()  # constant: all zeros
    assert not TC.fingerprint(np.zeros((1, 1), np.float32)).any()
    blank = TC.fingerprint(np.zeros((64, 64), np.uint8))
    scene = TC.fingerprint(_scene())
    r = TC.find_copies([blank, scene], ["blank", "scene"], [blank, scene], ["blank copy", "scene copy"])
    assert [c["generated"] for c in r.copies] == ["scene copy"]  # a blank image copies no one
    assert r.plain.tolist() == [True, False] and r.reference_plain == 1 and r.score[0] == 0.0
    assert r.to_dict()["plain"] == {"generated": 1, "reference": 1}


@pytest.mark.parametrize("bad, what", [
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "not finite"),
    (np.array([["a", "b"]]), "real numbers"),
])
def test_unusable_images_raise_a_clear_input_error(bad, what):
    with pytest.raises(InputError, match=what):
        TC.fingerprint(bad)


# --- the search ----------------------------------------------------------------------------------------

def _prints(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = _scene(200, 260, seed)
    out = []
    for _ in range(n):
        s = int(rng.integers(40, 120))
        y, x = int(rng.integers(0, 200 - s)), int(rng.integers(0, 260 - s))
        out.append(TC.fingerprint(base[y:y + s, x:x + s]))
    return np.stack(out)


def test_blocks_of_any_size_give_the_same_result():
    ref = _prints(60, 1)
    ref[5] = ref[9]  # a duplicate reference: ties go to the first
    gen = np.concatenate([_prints(30, 2), ref[::7], ref[[9]]])
    names_r, names_g = [f"r{i}" for i in range(len(ref))], [f"g{i}" for i in range(len(gen))]
    whole = TC.find_copies(ref, names_r, gen, names_g)
    cut = TC.find_copies(ref, names_r, gen, names_g, block=7, ref_block=5)
    one = TC.find_copies(ref, names_r, gen, names_g, block=1, ref_block=1)
    for r in (cut, one):
        assert np.array_equal(r.nearest, whole.nearest) and np.array_equal(r.mirrored, whole.mirrored)
        assert np.allclose(r.score, whole.score, atol=1e-5) and r.copies == whole.copies
    assert len(whole.copies) >= 10 and whole.nearest_names[30:] == [f"r{i}" for i in range(0, 60, 7)] + ["r5"]


def test_sets_saved_and_merged_as_arrays_give_the_same_check(tmp_path):
    ref = _prints(20, 1)
    names = [f"r{i}.png" for i in range(20)]
    first, second = TC.to_arrays(ref[:12], names[:12]), TC.to_arrays(ref[12:], names[12:])
    np.savez(tmp_path / "a.npz", **first)
    np.savez(tmp_path / "b.npz", **second)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as a, np.load(tmp_path / "b.npz", allow_pickle=False) as b:
        prints, merged_names = TC.merge(TC.from_arrays(a), TC.from_arrays(b))
    assert np.array_equal(prints, ref) and merged_names == names
    gen = ref[[3, 17]]
    assert TC.find_copies(prints, merged_names, gen, ["x", "y"]).nearest_names == ["r3.png", "r17.png"]
    with pytest.raises(InputError, match="no prints"):
        TC.from_arrays({"mu": np.zeros(3)})


@pytest.mark.parametrize("call, what", [
    (lambda p: TC.find_copies(p[:0], [], p, ["a", "b"]), "reference set has no images"),
    (lambda p: TC.find_copies(p, ["a", "b"], p[:0], []), "generated set has no images"),
    (lambda p: TC.find_copies(p, ["a"], p, ["a", "b"]), "2 reference prints but 1 names"),
    (lambda p: TC.find_copies(p.astype(np.float32), ["a", "b"], p, ["a", "b"]), "uint8"),
    (lambda p: TC.find_copies(p[:, :16], ["a", "b"], p, ["a", "b"]), "prints must be"),
])
def test_unusable_sets_raise_a_clear_input_error(call, what):
    with pytest.raises(InputError, match=what):
        call(_prints(2, 0))


def test_the_shipped_threshold_is_the_studys_choice():
    study = json.loads((ROOT / "docs" / "validation" / "copies.json").read_text())
    assert study["chosen"] == "aligned"
    assert study["candidates"]["aligned"]["threshold"] == TC.THRESHOLD
    assert study["candidates"]["aligned"]["bytes_per_image"] == TC.fingerprint(_scene()).nbytes


def test_a_jpeg_copy_saved_in_grayscale_still_names_its_reference(heldout):
    im = heldout["medical"]["frames"].ref[0]
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=75)
    copy = np.asarray(Image.open(buf).convert("L"))  # re-encoded and saved as grayscale
    r = TC.find_copies([TC.fingerprint(im)], ["scan"], [TC.fingerprint(copy)], ["gen"])
    assert r.copies and r.copies[0]["reference"] == "scan"
