"""The Fréchet Radiomics Distance (trustfid/frd.py, radiomics.py) against frd-score itself (its own command,
``python -m frd_score``, run here), through the CLI, the library, the Metric and saved statistics; the
service's side is in tests/test_service_frd.py.

Tolerance: 1e-6 relative between our FRD and frd-score's (measured: about 1e-7; the rest is frd-score's
float32 z-scoring and scipy's sqrtm against our float64 moments and exact Fréchet core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests.support import ROOT
from tests.support.images import write_images
from tests.support.oracles import frd_score
from tests.support.presets import FAST_OPTIONS
from trustfid import Metric, score
from trustfid.decode_worker import FrdLimits, prepare
from trustfid.errors import IncompatibleStatsError, InputError
from trustfid.job import open_job
from trustfid.pipeline import compute_stats, extract
from trustfid.settings import EngineSettings
from trustfid.shards import extract_shard, merge_set
from trustfid.stats import load_stats

pytestmark = pytest.mark.engine

FRD_TOLERANCE = 1e-6
FRD_ONLY = {"metrics": ["frd"], "bootstrap_resamples": 20, "seed": 3}


def _close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= FRD_TOLERANCE * abs(theirs)


def test_cli_fid_and_frd_in_one_report_equal_the_published_tools(frd_sets, tmp_path):
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "app.cli", "score", str(frd_sets["real"]), str(frd_sets["generated"]),
                        "--metrics", "fid,frd", "--passes", "2", "--bootstrap", "20", "--device", "cpu", "-q",
                        "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    frd = report["frd"]
    assert _close(frd["value"], frd_sets["frd_score"]), (frd["value"], frd_sets["frd_score"])
    assert report["schema_version"] == "1.9" and report["fid"] > 0 and frd["log"] == "log(d²)"
    assert all(report["timing"]["sets"][side]["radiomics_s"] > 0 for side in ("real", "generated"))  # the decoders'
    assert frd["version"] == "v1" and frd["real"]["used"] == 12 and frd["generated"]["used"] == 12
    assert 300 < frd["features"] <= frd["features_extracted"]
    lo, hi = frd["sampling_ci95"]
    assert lo <= frd["value"] <= hi and frd["resamples"] == 20
    assert report["headline"]["frd"] == frd["value"] and "FRD " in report["headline"]["text"]
    assert f"FRD {frd['value']:.3f}" in r.stdout  # the summary a person reads leads with both distances


def test_frd_alone_skips_the_fid_network_and_still_equals_frd_score(frd_sets):
    events = []
    report = score(frd_sets["real"], frd_sets["generated"], FRD_ONLY, progress=events.append)
    assert _close(report.frd.value, frd_sets["frd_score"])
    # the radiomics' progress moves every few images, not once per batch of 32 (12 images a set)
    for side in ("real", "generated"):
        moving = {e.fraction_done for e in events if e.stage == "extracting" and e.set == side}
        assert len(moving - {0.0, 1.0}) >= 2, moving
    assert report.fid is None and report.trust is None and report.model.weights_sha256 == ""
    assert report.headline.text.startswith("FRD ") and report.counts.real.used == 12
    # 12 images against hundreds of features: the headline says what that does to the FRD
    assert any(w.startswith(f"the FRD rests on 12 real images against {report.frd.features} radiomic features")
               for w in report.headline.warnings), report.headline.warnings
    paper = score(frd_sets["real"], frd_sets["generated"], {**FRD_ONLY, "frd_paper_log": True}).frd
    assert paper.log == "log(d)" and paper.value == pytest.approx(report.frd.value / 2, rel=1e-12)


def test_an_frd_only_job_never_imports_torch_and_gives_the_frd_of_a_fid_job(frd_sets, tmp_path):
    """score(), compute_stats() and `trustfid score` with metrics frd, in a fresh process whose radiomics run in
    spawned decode processes: no process imports torch (a stand-in torch first on the path writes down every
    process that imports it), and the FRD equals the one of a job that runs the FID network beside it."""
    stand_in = tmp_path / "path" / "torch"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("import os\nwith open(os.environ['TORCH_IMPORTED'], 'a') as f:\n"
                                          "    f.write(f'{os.getpid()}\\n')\n"
                                          "raise ImportError('a job of metrics frd imported torch')\n")
    imported, ref, out = tmp_path / "torch-imported", tmp_path / "real.npz", tmp_path / "cli.json"
    real, generated = str(frd_sets["real"]), str(frd_sets["generated"])
    code = textwrap.dedent(f"""
        import json, sys
        from trustfid import compute_stats, score
        report = score({real!r}, {generated!r}, {FRD_ONLY!r})
        compute_stats({real!r}, {FRD_ONLY!r}).save({str(ref)!r})
        from app.cli import main
        code = main(["score", {str(ref)!r}, {generated!r}, "--metrics", "frd", "-q", "--json", {str(out)!r}])
        print(json.dumps({{"frd": report.frd.value, "ci": report.frd.sampling_ci95, "device": report.device,
                           "cli": code, "torch": "torch" in sys.modules}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stand_in.parent), str(ROOT)]),
           "TORCH_IMPORTED": str(imported)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not imported.exists(), f"processes {imported.read_text().split()} imported torch"
    alone = json.loads(r.stdout.strip().splitlines()[-1])
    assert alone["torch"] is False and alone["cli"] == 0 and alone["device"] == "cpu"

    with_fid = score(frd_sets["real"], frd_sets["generated"], {**FAST_OPTIONS, **FRD_ONLY, "metrics": ["fid", "frd"]})
    assert with_fid.fid is not None
    assert alone["frd"] == pytest.approx(with_fid.frd.value, rel=1e-9, abs=0)
    assert alone["ci"] == pytest.approx(with_fid.frd.sampling_ci95, rel=1e-9, abs=0)
    cli = json.loads(out.read_text())  # the reference from compute_stats, saved: the same FRD
    assert cli["frd"]["value"] == pytest.approx(with_fid.frd.value, rel=1e-9, abs=0)
    assert cli["device"] == "cpu" and cli["frd"]["real"]["used"] == 12 and cli["frd"]["generated"]["used"] == 12


def test_reading_the_decoded_images_is_an_option_and_moves_the_frd(frd_sets):
    """frd-score reads JPEGs with SimpleITK (its decoder, the dpi header as spacing) and multiplies by alpha;
    frd_reading "decoded" uses the images the FID sees instead (docs/IMAGES.md)."""
    decoded = score(frd_sets["real"], frd_sets["generated"], {**FRD_ONLY, "frd_reading": "decoded"}).frd
    assert not _close(decoded.value, frd_sets["frd_score"])


def test_a_saved_reference_serves_later_jobs_and_is_refused_with_other_settings(frd_sets, tmp_path):
    ref = tmp_path / "ref.npz"
    r = subprocess.run([sys.executable, "-m", "app.cli", "stats", str(frd_sets["real"]), "-o", str(ref),
                        "--metrics", "fid,frd", "--passes", "2", "--seed", "7", "--device", "cpu", "-q"],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0 and "radiomic features of 12 images" in r.stdout, r.stderr
    opts = {**FAST_OPTIONS, "metrics": ["fid", "frd"], "bootstrap_resamples": 20}
    direct = score(frd_sets["real"], frd_sets["generated"], opts)
    saved = score(str(ref), frd_sets["generated"], opts)
    assert saved.frd.value == pytest.approx(direct.frd.value, rel=1e-12)
    assert saved.frd.sampling_ci95 == pytest.approx(direct.frd.sampling_ci95, rel=1e-12)
    assert saved.fid == pytest.approx(direct.fid, rel=1e-12)
    assert _close(saved.frd.value, frd_sets["frd_score"])

    with pytest.raises(IncompatibleStatsError, match="reading"):  # radiomics of another reading
        score(str(ref), frd_sets["generated"], {**opts, "frd_reading": "decoded"})
    fid_only = tmp_path / "fid-only.npz"
    compute_stats(frd_sets["real"], FAST_OPTIONS).save(fid_only)
    with pytest.raises(InputError, match="hold no radiomic features.*--metrics fid,frd") as e:
        score(str(fid_only), frd_sets["generated"], opts)
    assert e.value.code == "no_radiomics"


def test_shards_merge_to_the_unsharded_frd(frd_sets):
    opts = {**FRD_ONLY, "max_feature_rows": 8}  # a capped bootstrap sample must merge exactly too
    from trustfid.job import open_job

    job = open_job(opts)
    whole = score(frd_sets["real"], frd_sets["generated"], opts)
    shards = [(0, 5), (5, 10), (10, 12)]
    parts = {name: merge_set(frd_sets[name], name, job, shards,
                             [extract_shard(frd_sets[name], name, job, a, b) for a, b in shards])
             for name in ("real", "generated")}
    merged = score(parts["real"], parts["generated"], opts)
    assert merged.frd.value == pytest.approx(whole.frd.value, rel=1e-9, abs=0)
    assert merged.frd.sampling_ci95 == pytest.approx(whole.frd.sampling_ci95, rel=1e-9)
    assert merged.frd.real.kept_rows == 8


def test_16_bit_images_give_frd_on_their_stored_values_as_frd_score_reads_them(tmp_path):
    """A 12-bit range in 16-bit PNGs: the FID network gets each image's min..max on 0..255, the radiomics
    the stored values, which is what frd-score's SimpleITK read gives."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:80, 0:80] / 80.0
    for side, shift in (("a", 0.0), ("b", 0.3)):
        (tmp_path / side).mkdir()
        for i in range(8):
            f = rng.uniform(1, 4, 2)
            img = 1500 + 900 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + shift) + rng.normal(0, 60, xx.shape)
            Image.fromarray(np.clip(img, 0, 4095).astype(np.uint16)).save(tmp_path / side / f"{i}.png")
    theirs = frd_score(tmp_path / "a", tmp_path / "b")
    report = score(tmp_path / "a", tmp_path / "b", FRD_ONLY)
    assert _close(report.frd.value, theirs), (report.frd.value, theirs)
    assert report.intensity["real"] == {"wider than 8 bits: each image's own min..max to 0..255": 8}


def test_the_metric_gives_score_s_frd_on_the_same_arrays(tmp_path):
    rng = np.random.default_rng(9)
    real = rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    gen = np.clip(real.astype(int) + rng.integers(-40, 40, real.shape), 0, 255).astype(np.uint8)
    opts = {**FAST_OPTIONS, "metrics": ["fid", "frd"], "bootstrap_resamples": 10}
    m = Metric(opts)
    m.update(real[:4], real=True)
    m.update(real[4:], real=True)
    m.update(gen, real=False)
    streamed = m.compute()
    whole = score(real, gen, opts)
    assert streamed.frd.value == pytest.approx(whole.frd.value, rel=1e-12)
    assert streamed.fid == pytest.approx(whole.fid, rel=1e-9)
    with pytest.raises(InputError, match="frd:auto"):
        Metric({"metrics": ["fid", "frd:auto"]})


def test_without_pyradiomics_an_frd_request_says_what_to_install(frd_sets, tmp_path):
    """An engine without the medical extra (pyradiomics not importable here): exit code 2 and one line
    naming the extra, before anything is extracted; FID alone still works."""
    code = ("import sys; sys.modules['radiomics'] = None; from app.cli import main; "
            f"sys.exit(main(['score', {str(frd_sets['real'])!r}, {str(frd_sets['generated'])!r}, '--metrics', 'fid,frd', "
            "'--passes', '0', '--device', 'cpu', '-q']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "medical" in r.stderr and "pyradiomics" in r.stderr and "Traceback" not in r.stderr


def test_a_set_of_one_usable_radiomics_row_is_a_clear_error(tmp_path):
    from trustfid.stats import RadiomicsStats

    stats = RadiomicsStats(10, 0, provenance={"frd_version": "v1"})
    stats.add(["a.png", "b.png"], ["f1", "f2"], np.array([[1.0, np.nan], [2.0, 3.0]]), 0)
    assert stats.n == 1 and stats.skipped[0].name == "a.png" and "NaN" in stats.skipped[0].reason
    from trustfid.frd import check_frd_stats

    with pytest.raises(InputError, match="1 image.*at least 2.*1 gave NaN"):
        check_frd_stats(stats, "real", "ref.npz", {"frd_version": "v1"})


def test_a_blank_image_is_left_out_of_the_frd_as_blank_not_with_pyradiomics_error():
    limits = FrdLimits(pixels=2**22, seconds=120.0)
    for value in (0, 200):
        reason = prepare("blank.png", np.full((48, 48, 3), value, np.uint8), None, None, limits)[2]
        assert reason == (f"FRD: a blank image (every pixel {value}): no texture for the radiomics: left out of "
                          "the FRD"), reason
    names, values = prepare("noise.png", np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8), None,
                            None, limits)[2]
    assert len(names) == len(values) > 100  # an image with texture gets its features


BUDGET_REASON = ("FRD: radiomics took over the FRD's budget of 0.001 s per image: left out of the FRD (downscale it, "
                 "or raise TRUSTFID_MAX_FRD_SECONDS)")


@pytest.mark.parametrize("workers", [0, 2], ids=["prefetch-thread", "decode-processes"])
def test_an_image_over_the_frd_time_budget_is_left_out_of_the_frd_by_name_and_the_fid_still_uses_it(
        tmp_path, monkeypatch, workers):
    """TRUSTFID_MAX_FRD_SECONDS: an image whose radiomics take longer (at 1 ms, every image) is named in the
    FRD's skipped list with the budget's reason, and the job goes on: the FID uses every image. The radiomics
    run in the prefetch thread, or in decode processes (no signal can time them there)."""
    folder = write_images(tmp_path / "set", 3, seed=4)
    monkeypatch.setenv("TRUSTFID_MAX_FRD_SECONDS", "0.001")
    settings = EngineSettings(decode_workers=workers)
    assert settings.max_frd_seconds == 0.001
    stats = extract(folder, "real", open_job({**FAST_OPTIONS, "metrics": ["fid", "frd"]}, settings=settings))
    assert stats.plain.n == 3 and stats.skipped == []  # the FID's
    assert stats.radiomics.n == 0
    assert [(s.name, s.reason) for s in stats.radiomics.skipped] == [(f"img_{i:03d}.png", BUDGET_REASON)
                                                                     for i in range(3)]
    # the pixel limit is checked first, before pyradiomics runs: an image over both is named for its pixels
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8)
    reason = prepare("big.png", image, None, None, FrdLimits(pixels=1000, seconds=0.001))[2]
    assert reason.startswith("FRD: 48 x 48 = 2,304 pixels, over the FRD's limit of 1,000 per image"), reason


def test_radiomics_within_the_time_budget_are_pyradiomics_own_to_the_last_bit():
    """A budget the radiomics stay within changes nothing: the features are those of pyradiomics' own extractor
    (not the budgeted one) on the same inputs, bit for bit, and those computed with no budget at all."""
    import SimpleITK as sitk
    from radiomics import featureextractor

    from trustfid.radiomics import LOG_SIGMA, config_path, features, gray

    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)
    names, values = prepare("noise.png", image, None, None, FrdLimits(pixels=2**22, seconds=3600.0))[2]
    stock = featureextractor.RadiomicsFeatureExtractor(str(config_path()))
    stock.enableImageTypeByName("LoG", customArgs={"sigma": list(LOG_SIGMA)})
    volume = gray(image)[np.newaxis]
    mask = np.ones(volume.shape, np.uint8)
    mask[0, 0, 0] = 0
    expected = []
    for name, value in stock.execute(sitk.GetImageFromArray(volume), sitk.GetImageFromArray(mask)).items():
        try:
            expected.append(float(value))
        except (TypeError, ValueError):
            assert "diagnostics" in name  # the string and tuple diagnostics, which features() leaves out
    assert len(names) == len(expected) > 100
    assert np.array_equal(values, expected, equal_nan=True)
    unbudgeted_names, unbudgeted = features(image)
    assert unbudgeted_names == names and np.array_equal(unbudgeted, values, equal_nan=True)


def test_saved_frd_only_statistics_load_without_fid_statistics(frd_sets, tmp_path):
    stats = compute_stats(frd_sets["real"], FRD_ONLY)
    stats.save(tmp_path / "frd.npz")
    back = load_stats(tmp_path / "frd.npz")
    assert back.n == 12 and back.plain.n == 0 and back.radiomics.n == 12
    assert back.radiomics.names == stats.radiomics.names
    report = score(str(tmp_path / "frd.npz"), frd_sets["generated"], FRD_ONLY)
    assert _close(report.frd.value, frd_sets["frd_score"])
    with pytest.raises(InputError, match="hold no FID statistics") as e:  # before the other side is extracted
        score(str(tmp_path / "frd.npz"), frd_sets["generated"], {**FAST_OPTIONS, "metrics": ["fid", "frd"]})
    assert e.value.code == "no_fid_stats"


def test_a_medical_reference_gets_the_frd_in_the_same_report_and_the_reason_points_to_it():
    """frd:auto on the study's held-out medical crops (never fitted on): the reference is outside the FID
    network's domain, so the FRD is computed in the same job and the "low" reason names it; against a
    natural reference frd:auto computes no FRD."""
    from bench.validation import domain_sets as DS

    held = DS.heldout(16)  # 16 a set: enough for a significant "outside", and the FRD on 32 images
    assert not held.notes, held.notes
    medical, natural_a, natural_b = (np.stack(held.sets[k].images) for k in ("medical_a", "natural_full_a",
                                                                               "natural_64_b"))
    opts = {"metrics": ["fid", "frd:auto"], "passes": 0, "device": "cpu", "bootstrap_resamples": 10}
    rep = score(medical, natural_b, opts)
    assert rep.trust.level == "low" and rep.trust.reference_domain == "outside", rep.trust.reasons
    assert rep.frd is not None and rep.frd.real.used == len(medical)
    assert "Fréchet Radiomics Distance" in rep.trust.reasons[0] and f"FRD {rep.frd.value:.3f}" in rep.trust.reasons[0]
    plain = score(natural_a, natural_b, opts)
    assert plain.frd is None and plain.trust.reference_domain == "natural", plain.trust.reasons
    asked = score(medical, natural_b, {**opts, "metrics": ["fid"]})
    assert asked.frd is None and "add frd to metrics" in asked.trust.reasons[0]
    # a reference saved with frd:auto (trustfid stats) carries the radiomics when it is outside, and serves
    # later jobs with the same FRD; a natural one does not
    saved = compute_stats(medical, opts)
    assert saved.radiomics is not None and compute_stats(natural_a, opts).radiomics is None
    # the same FRD within the FRD's tolerance, not to the last digit: the radiomics are recomputed for the generated
    # set, and the float64 linear algebra's threads may split its sums otherwise (4e-8 measured once, loaded machine)
    assert _close(score(saved, natural_b, opts).frd.value, rep.frd.value)


def test_an_8000_px_image_is_left_out_of_the_frd_by_name_within_a_stated_memory(frd_sets, tmp_path):
    """pyradiomics' filters hold about 90 bytes a pixel (an 8000 x 8000 PNG took 5.6 GB): an image over
    TRUSTFID_MAX_FRD_PIXELS (default 2048 x 2048) is left out of the FRD and named, before they run; the FID
    still uses it. The whole command, its decode processes included, stays under the 2.5 GB docs/IMAGES.md
    states for such an image."""
    real = tmp_path / "real"
    real.mkdir()
    for f in sorted(frd_sets["real"].iterdir())[:3]:
        (real / f.name).write_bytes(f.read_bytes())
    yy, xx = np.ogrid[:8000, :8000]
    Image.fromarray((128 + 100 * np.sin(xx / 300) * np.cos(yy / 500)).astype(np.uint8)).save(real / "huge.png")
    out = tmp_path / "r.json"
    # the largest resident set of the command and every process under it, from a fresh parent
    measure = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "app.cli", "score", str(real),
                        str(frd_sets["generated"]), "--metrics", "fid,frd", "--passes", "0", "--bootstrap", "0",
                        "--device", "cpu", "-q", "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    peak_mb = int(r.stdout.split()[-1])
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["counts"]["real"]["used"] == 4  # the FID uses it
    frd = report["frd"]
    assert frd["real"]["used"] == 3 and [s["name"] for s in frd["real"]["skipped"]] == ["huge.png"], frd["real"]
    assert frd["real"]["skipped"][0]["reason"].startswith(
        "FRD: 8000 x 8000 = 64,000,000 pixels, over the FRD's limit of 4,194,304 per image")
    assert peak_mb < 2560, f"peak {peak_mb} MB"  # about 2.1 GB measured: the decode process that resizes it
