"""The copy check through the product (trustfid/memorization.py on copies.py): hidden copies of reference
images among honest generated ones, scored as a user scores them; the report's ``memorization`` section,
the trust finding, the page's side-by-side prints, a saved reference and a sharded set. The copy check's
own detection and false-positive rates, on the validation study's held-out sources, are tests/test_copies.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.support import realimages
from trustfid import score
from trustfid.pipeline import compute_stats

pytestmark = pytest.mark.engine

OPTS = {"passes": 0, "device": "cpu", "bootstrap_resamples": 5, "seed": 7}


def jpeg(im: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert(im.ndim == 3 and "RGB" or "L"))


def cropped(im: np.ndarray, share: float = 0.06) -> np.ndarray:
    h, w = im.shape[:2]
    dy, dx = int(h * share), int(w * share)
    return np.asarray(Image.fromarray(im[dy:h - dy, dx:w - dx]).resize((w, h), Image.Resampling.BICUBIC))


def noised(im: np.ndarray, rng) -> np.ndarray:
    return np.clip(im + rng.normal(0, 5, im.shape), 0, 255).astype(np.uint8)


KINDS = {"exact": lambda im, rng: im.copy(), "jpeg": lambda im, rng: jpeg(im),
         "mirrored": lambda im, rng: im[:, ::-1].copy(), "noised": noised, "cropped": lambda im, rng: cropped(im)}


def hidden_copies(reference: list[np.ndarray], honest: list[np.ndarray], seed: int = 0):
    """The generated set: the honest images with one copy of each kind of a different reference image put in
    among them; and {generated file name: (kind, reference file name)}."""
    rng = np.random.default_rng(seed)
    generated, planted = list(honest), {}
    for k, (kind, make) in enumerate(KINDS.items()):
        at = 2 * k + 1
        generated.insert(at, make(reference[3 * k + 1], rng))
        planted[at] = (kind, 3 * k + 1)
    return generated, {f"img_{at:04d}.png": (kind, f"img_{r:04d}.png") for at, (kind, r) in planted.items()}


@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("copies")
    reference = realimages.mixed_crops(realimages.NATURAL, 24, sizes=(96, 160), seed=11)
    honest = realimages.mixed_crops(realimages.NATURAL, 16, sizes=(96, 160), seed=12)
    generated, planted = hidden_copies(reference, honest)
    return (realimages.write_folder(root / "real", reference), realimages.write_folder(root / "generated", generated),
            planted)


def test_hidden_copies_are_named_with_their_reference_and_honest_images_are_not(photo_sets):
    real, generated, planted = photo_sets
    report = score(real, generated, OPTS)
    m = report.memorization
    found = {c.generated: c.reference for c in m.copies}
    assert found == {g: r for g, (_, r) in planted.items()}, (found, planted)
    assert m.copies_found == len(KINDS) and m.generated == 16 + len(KINDS) and m.reference == 24
    assert m.share == pytest.approx(len(KINDS) / m.generated)
    assert [c.score for c in m.copies] == sorted((c.score for c in m.copies), reverse=True)
    mirrored = next(c for c in m.copies if planted[c.generated][0] == "mirrored")
    assert mirrored.mirrored and m.median_score < m.threshold
    # a finding, not a trust level: the FID is right, the generator is the problem
    assert any(f.startswith(f"copies found: {len(KINDS)} of") for f in report.trust.findings)
    assert all("cop" not in r for r in report.trust.reasons)
    # the worst pairs side by side, for the page a person reads
    shown = [c for c in m.copies if c.generated_print]
    assert len(shown) == OPTS.get("thumbnails", 4) and all(c.reference_print for c in shown)

    from app.report_html import render
    from trustfid.records import InputInfo, JobOptions, JobRecord

    job = JobRecord(id="job-c", created_at=0.0, finished_at=1.0, state="succeeded", options=JobOptions(),
                    real=InputInfo(kind="upload", files=24, bytes=1),
                    generated=InputInfo(kind="upload", files=21, bytes=1))
    html = render(job, report).split('id="memorization"')[1].split("</section>")[0]
    assert f"{len(KINDS)} of {m.generated} generated images" in html
    assert html.count('<figure class="atypical pair"><img src="data:image/png;base64,') == len(shown)


def test_a_saved_reference_keeps_the_prints_and_the_check_can_be_turned_off(photo_sets, tmp_path):
    real, generated, planted = photo_sets
    compute_stats(real, OPTS).save(tmp_path / "ref.npz")
    saved = score(str(tmp_path / "ref.npz"), generated, OPTS).memorization
    assert {c.generated: c.reference for c in saved.copies} == {g: r for g, (_, r) in planted.items()}
    off = score(str(tmp_path / "ref.npz"), generated, {**OPTS, "copy_check": False})
    assert off.memorization is None and not any(f.startswith("copies found") for f in off.trust.findings)


def test_medical_copies_are_found_in_16_bit_grayscale(tmp_path):
    """A held-out medical source (never fitted on), written as 16-bit grayscale PNGs as a scanner's export."""
    from bench.validation import domain_sets as DS

    held = DS.heldout(24)
    images = [np.asarray(Image.fromarray(im).convert("L")) for im in held.sets["medical_a"].images]
    reference, honest = images[:16], images[16:24]
    generated, planted = hidden_copies(reference, honest, seed=3)
    for folder, ims in (("real", reference), ("generated", generated)):
        (tmp_path / folder).mkdir()
        for i, im in enumerate(ims):
            Image.fromarray(im.astype(np.uint16) * 257).save(tmp_path / folder / f"img_{i:04d}.png")
    m = score(tmp_path / "real", tmp_path / "generated", OPTS).memorization
    assert {c.generated: c.reference for c in m.copies} == {g: r for g, (_, r) in planted.items()}
