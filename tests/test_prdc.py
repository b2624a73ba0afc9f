"""Precision, recall, density and coverage (trustfid/prdc.py) against the prdc package's ``compute_prdc``
(0.2, Naeem et al.'s own code) on the same rows, the features a user exports with `trustfid features`,
what the four numbers tell a user about a generator, and their intervals.

Tolerance: 1e-6 absolute (the values are shares of images; both compute the distances in float64 and
compare them in float32, so in practice they are equal)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from prdc import compute_prdc

from tests.support import ROOT
from trustfid import prdc as P
from trustfid.cli import main

pytestmark = pytest.mark.engine

TOL = 1e-6


def reference(real: np.ndarray, generated: np.ndarray, k: int) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        return {name: float(v) for name, v in compute_prdc(real, generated, k).items()}


def mixture(rng, n: int, centres: np.ndarray, spread: float = 1.0) -> np.ndarray:
    """``n`` float32 rows around randomly chosen ``centres``."""
    pick = rng.integers(len(centres), size=n)
    return (centres[pick] + rng.normal(0, spread, (n, centres.shape[1]))).astype(np.float32)


@pytest.mark.parametrize("n_real,n_gen,dim,k", [(40, 31, 16, 5), (1100, 900, 64, 5), (300, 300, 2048, 3)])
def test_values_equal_the_prdc_package(n_real, n_gen, dim, k):
    rng = np.random.default_rng(n_real)
    centres = rng.normal(0, 4, (8, dim))
    real, gen = mixture(rng, n_real, centres), mixture(rng, n_gen, centres * 1.1, 1.2)
    gen[:3] = real[:3]  # exact copies: distance 0
    real[5] = real[4]  # a duplicate inside a set: its own neighbour at distance 0, as in prdc
    ours, theirs = P.values(real, gen, k), reference(real, gen, k)
    for name in P.NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=TOL), (name, ours, theirs)


def test_the_four_numbers_tell_mode_collapse_from_artefacts():
    """What a training loop reads from them: a generator that lost modes keeps precision and loses recall
    and coverage; one that makes artefacts loses precision and density, and its spread-out images inflate
    recall, which coverage (the robust one) does not fall for."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (10, 32))
    real = mixture(rng, 400, centres)
    honest = P.values(real, mixture(rng, 400, centres), 5)
    collapsed = P.values(real, mixture(rng, 400, centres[:2]), 5)
    artefacts = P.values(real, mixture(rng, 400, centres) + rng.normal(0, 1.5, (400, 32)).astype(np.float32), 5)
    assert honest["precision"] > 0.8 and honest["recall"] > 0.8 and honest["coverage"] > 0.9
    assert 0.8 < honest["density"] < 1.2
    assert collapsed["precision"] > 0.8 and collapsed["recall"] < 0.3 and collapsed["coverage"] < 0.3
    assert artefacts["precision"] < 0.1 and artefacts["density"] < 0.1
    assert artefacts["recall"] > 0.9 and artefacts["coverage"] < 0.1


def test_intervals_hold_the_value_and_narrow_with_more_images():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (6, 16))

    def section(n):
        return P.prdc(mixture(rng, n, centres), mixture(rng, n, centres * 1.2), k=5, resamples=40, seed=0,
                      features="network", exact=True)

    small, large = section(40), section(800)
    for p in (small, large):
        assert p.resamples == 40 and p.note is None
        for name in P.NAMES:
            v = getattr(p, name)
            assert v.ci95[0] <= v.value <= v.ci95[1], (name, v)
            assert v.ci95[0] >= 0 and (name == "density" or v.ci95[1] <= 1)
    width = {n: sum(getattr(p, n).ci95[1] - getattr(p, n).ci95[0] for n in ("precision", "recall", "coverage"))
             for n, p in (("small", small), ("large", large))}
    assert width["large"] < width["small"] / 2
    rows = mixture(np.random.default_rng(2), 60, centres), mixture(np.random.default_rng(3), 60, centres)
    first = P.prdc(*rows, k=5, resamples=20, seed=9, features="network", exact=True)  # same seed, same report
    assert first == P.prdc(*rows, k=5, resamples=20, seed=9, features="network", exact=True)


def test_above_the_interval_limit_the_values_stay_and_the_report_says_why_no_interval(monkeypatch):
    monkeypatch.setattr(P, "BOOT_LIMIT", 50)
    rng = np.random.default_rng(4)
    real, gen = rng.normal(size=(80, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    p = P.prdc(real, gen, k=5, resamples=20, seed=0, features="network", exact=True)
    assert p.resamples == 0 and p.precision.ci95 is None and "more than 50 rows" in p.note
    assert p.precision.value == pytest.approx(reference(real, gen, 5)["precision"], abs=TOL)
    assert P.prdc(real[:5], gen, k=5, resamples=20, seed=0, features="network", exact=True) is None  # too few rows


def test_the_report_equals_prdc_on_the_features_trustfid_exports(tmp_path, capsys):
    """The check a user can make: `trustfid features` writes every image's plain-pass features; the prdc
    package on those gives the report's precision, recall, density and coverage."""
    real, gen = ROOT / "samples" / "real", ROOT / "samples" / "generated"
    for name, folder in (("r", real), ("g", gen)):
        assert main(["features", str(folder), "-o", str(tmp_path / f"{name}.npz"), "--device", "cpu", "-q"]) == 0
    assert "24 images x 2048 features" in capsys.readouterr().out
    out = tmp_path / "report.json"
    assert main(["score", str(real), str(gen), "--passes", "0", "--bootstrap", "20", "--device", "cpu", "-q",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    with np.load(tmp_path / "r.npz") as r, np.load(tmp_path / "g.npz") as g:
        assert r["features"].dtype == np.float32 and r["features"].shape == (24, 2048)
        assert list(g["names"]) == sorted(p.name for p in gen.glob("*.png"))
        assert str(r["weights_sha256"]) == report["model"]["weights_sha256"]
        theirs = reference(r["features"], g["features"], 5)
    section = report["prdc"]
    assert section["features"] == "network" and section["exact"] and section["k"] == 5
    for name in P.NAMES:
        assert section[name]["value"] == pytest.approx(theirs[name], abs=TOL), name
        lo, hi = section[name]["ci95"]
        assert lo <= section[name]["value"] <= hi
        assert report["headline"][name] == section[name]["value"]
    assert "precision" in report["headline"]["text"] and "recall" in printed
    assert P.MEANING["coverage"] in printed  # one plain sentence per number, in the summary a person reads


def test_prdc_k_zero_leaves_them_out_and_a_saved_reference_keeps_them(tmp_path):
    from trustfid import score
    from trustfid.pipeline import compute_stats

    real, gen = ROOT / "samples" / "real", ROOT / "samples" / "generated"
    opts = {"passes": 0, "bootstrap_resamples": 10, "device": "cpu"}
    compute_stats(real, opts).save(tmp_path / "ref.npz")
    saved = score(str(tmp_path / "ref.npz"), gen, opts)
    direct = score(real, gen, opts)
    assert saved.prdc == direct.prdc and saved.prdc is not None
    off = score(str(tmp_path / "ref.npz"), gen, {**opts, "prdc_k": 0})
    assert off.prdc is None and off.headline.precision is None and "precision" not in off.headline.text


def test_with_the_frd_they_are_computed_on_the_radiomic_features_too(frd_sets, tmp_path):
    """For a medical reference the network's features are weak: when the FRD runs, the four numbers come
    from the radiomic features as well, z-scored against the reference as the FRD does, and say so."""
    from trustfid import score
    from trustfid.pipeline import compute_stats

    opts = {"metrics": ["frd"], "bootstrap_resamples": 10, "seed": 3}
    stats = {}
    for name in ("real", "generated"):
        stats[name] = compute_stats(frd_sets[name], opts)
        stats[name].save(tmp_path / f"{name}.npz")
    report = score(str(tmp_path / "real.npz"), str(tmp_path / "generated.npz"), opts)
    assert report.prdc is None  # no network ran
    p = report.prdc_radiomics
    assert p.features == "radiomics" and p.exact and (p.real_rows, p.generated_rows) == (12, 12)
    r, g = (stats[name].radiomics.kept.rows().astype(np.float64) for name in ("real", "generated"))
    mean, std = r.mean(axis=0), r.std(axis=0)  # frd-score's z-scoring: the reference's mean and std (ddof 0)
    keep = np.isfinite(r).all(0) & np.isfinite(g).all(0) & (std > 0)
    assert keep.sum() == report.frd.features
    theirs = reference(((r - mean) / np.where(std > 0, std, 1))[:, keep].astype(np.float32),
                       ((g - mean) / np.where(std > 0, std, 1))[:, keep].astype(np.float32), 5)
    for name in P.NAMES:
        assert getattr(p, name).value == pytest.approx(theirs[name], abs=TOL), name
    from trustfid.cli import summary

    assert "the FRD's radiomic features" in summary(report)
