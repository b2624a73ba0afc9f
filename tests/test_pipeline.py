"""The engine end to end from plain Python: paths and arrays in, report out."""

import numpy as np
import pytest

from tests.support import realimages
from trustfid import compute_stats, inspect, load_stats, score
from trustfid.errors import CancelledError, IncompatibleStatsError, InputError
from trustfid.schemas import Report, ScoreOptions

pytestmark = pytest.mark.engine

FAST = dict(passes=3, bootstrap_resamples=8, dropout_at=["Mixed_7a", "Mixed_7b"])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    real = realimages.write_folder(root / "real", realimages.crops(realimages.NATURAL, 7, size=80, seed=1))
    gen = realimages.write_folder(root / "gen", realimages.crops(realimages.MEDICAL, 6, size=80, seed=2))
    (gen / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (gen / "notes.txt").write_text("not an image, ignored")
    return real, gen


@pytest.fixture(scope="module")
def report(sets):
    return score(str(sets[0]), str(sets[1]), ScoreOptions(**FAST))


def _numbers(r: Report) -> dict:
    d = r.model_dump()
    d.pop("timing")
    d["config"].pop("batch_size")
    return d


def test_report_has_every_part(report):
    assert report.fid > 0 and report.schema_version
    assert report.fid_mc.passes == 3 and len(report.fid_mc.samples) == 3
    lo, hi = report.fid_mc.ci95
    assert lo <= report.fid_mc.mean <= hi and report.fid_mc.std > 0
    assert report.fid_bootstrap.resamples == 8 and report.fid_bootstrap.ci95[0] < report.fid_bootstrap.ci95[1]
    assert report.counts.real.used == 7 and report.counts.generated.used == 6
    assert [s.name for s in report.counts.generated.skipped] == ["broken.png"]
    assert report.latent_variance.generated.mean > 0
    top = report.latent_variance.generated.most_uncertain
    assert len(top) == 6 and top[0].latent_variance >= top[-1].latent_variance
    assert report.trust.level in ("high", "medium", "low") and report.trust.reasons
    assert report.preprocessing.startswith("clean")
    assert len(report.model.weights_sha256) == 64
    Report.model_validate_json(report.model_dump_json())  # the JSON is the contract


def test_same_seed_gives_a_bit_identical_report_whatever_the_batch_size(sets, report):
    other = score(str(sets[0]), str(sets[1]), ScoreOptions(**FAST, batch_size=2))
    assert _numbers(other) == _numbers(report)


def test_identical_sets_score_zero_under_every_sampled_network(sets):
    """With shared masks pass t is one network applied to both sets, so FID_t of a set with itself is 0."""
    r = score(str(sets[0]), str(sets[0]), ScoreOptions(**FAST))
    assert r.fid < 1e-6
    assert max(r.fid_mc.samples) < 1e-6


def test_saved_statistics_score_like_the_images(sets, report, tmp_path):
    stats = compute_stats(str(sets[0]), ScoreOptions(**FAST))
    stats.save(tmp_path / "real.npz")
    again = score(str(tmp_path / "real.npz"), str(sets[1]), ScoreOptions(**FAST))
    assert again.fid == pytest.approx(report.fid, rel=1e-12)
    assert again.fid_mc.samples == pytest.approx(report.fid_mc.samples, rel=1e-12)
    assert load_stats(tmp_path / "real.npz").names == stats.names


def test_statistics_made_with_other_settings_are_refused(sets, tmp_path):
    compute_stats(str(sets[0]), ScoreOptions(**{**FAST, "seed": 5})).save(tmp_path / "s5.npz")
    with pytest.raises(IncompatibleStatsError, match="seed: 5 vs 0"):
        score(str(tmp_path / "s5.npz"), str(sets[1]), ScoreOptions(**FAST))


def test_arrays_in_memory_are_accepted():
    a = np.stack(realimages.crops(realimages.NATURAL, 4, size=64, seed=3))
    b = np.stack(realimages.crops(realimages.NATURAL, 4, size=64, seed=4)).astype(np.float32) / 255
    r = score(a, b, ScoreOptions(passes=0, bootstrap_resamples=0))
    assert r.fid > 0 and r.counts.real.used == 4 and r.fid_mc.passes == 0


def _not_images(folder):
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text("a caption, not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("text saved under an image name")
    return folder


@pytest.mark.parametrize("strict", [False, True])
def test_a_bad_generated_set_fails_before_any_image_is_extracted(tmp_path, sets, strict):
    # The real set comes first and would take the time: nothing of it may be extracted before the
    # mistake in the second argument is found (issue 17: it used to fail only after the first set).
    seen = []
    bad = _not_images(tmp_path / "bad")
    with pytest.raises(InputError) as e:
        score(str(sets[0]), str(bad), ScoreOptions(passes=0, strict=strict), progress=seen.append)
    assert seen == [] and e.value.code == "too_few_images"
    message = e.value.message
    assert "the generated set has 0 usable images in" in message
    assert "empty.png (empty file)" in message and "notes.png (not a PNG file" in message
    assert "3 files skipped: a.txt, b.txt, c.txt — not images" in message and "PNG, JPEG" in message
    for missing in (tmp_path / "missing", tmp_path / "empty"):
        if missing.name == "empty":
            missing.mkdir()
        with pytest.raises(InputError, match=str(missing)):
            score(str(sets[0]), str(missing), ScoreOptions(passes=0), progress=seen.append)
    assert seen == []


def test_a_single_dicom_file_may_hold_the_set(tmp_path):
    # A multi-frame DICOM counts once in the listing and gives many images: the early check lets it in.
    from pydicom.data import get_testdata_file

    one = tmp_path / "one"
    one.mkdir()
    (one / "rtdose.dcm").write_bytes(open(get_testdata_file("rtdose.dcm", download=False), "rb").read())  # 15 frames
    r = score(str(one), str(one), ScoreOptions(passes=0, bootstrap_resamples=0, kid_subsets=0))
    assert r.counts.real.used == 15


def test_fewer_than_two_images_is_a_clear_error(tmp_path, sets):
    one = realimages.write_folder(tmp_path / "one", realimages.crops(realimages.NATURAL, 1, size=64))
    with pytest.raises(InputError, match="1 usable image") as e:
        score(str(one), str(sets[1]), ScoreOptions(passes=0))
    assert e.value.code == "too_few_images"


def test_progress_is_reported_and_cancel_stops_at_the_next_batch(sets):
    seen = []
    score(str(sets[0]), str(sets[1]), ScoreOptions(passes=0, bootstrap_resamples=0, batch_size=3), progress=seen.append)
    real = [p.images_done for p in seen if p.set == "real" and p.stage == "extracting"]
    assert real == [0, 3, 6, 7] and seen[-1].stage == "done"
    calls = []
    with pytest.raises(CancelledError):
        score(str(sets[0]), str(sets[1]), ScoreOptions(passes=0, batch_size=3),
              should_cancel=lambda: calls.append(1) or len(calls) > 1)


def test_inspect_lists_every_image(sets):
    r = inspect(str(sets[1]), ScoreOptions(**FAST))
    assert len(r.images) == 6 and r.summary.mean > 0
    assert {i.name for i in r.images} == {f"img_{i:04d}.png" for i in range(6)}


# --- schema 1.1: headline, KID, FID∞, feature-row cap, domain check (issue 9) ---------------------

def test_headline_leads_with_the_plain_fid_and_both_intervals_contain_it(report):
    h = report.headline
    assert report.schema_version == "1.9" and report.config.precision == "fp32"
    assert h.fid == report.fid and h.text.startswith(f"FID {report.fid:.2f}, 95% interval")
    lo, hi = h.sampling_ci95
    assert lo <= report.fid <= hi and h.resamples == 8
    nlo, nhi = h.network_ci95
    assert nlo <= report.fid <= nhi and h.passes == 3
    # the raw per-pass FIDs centre elsewhere; the network interval is about the plain FID
    assert h.network_relative_std == pytest.approx(report.fid_mc.std / report.fid_mc.mean)
    assert any("only 8 resamples" in w for w in h.warnings) and any("only 3 dropout passes" in w for w in h.warnings)


def test_kid_and_fid_infinity_come_from_the_same_feature_rows(sets, report):
    from trustfid.kid import kid

    real = compute_stats(str(sets[0]), ScoreOptions(**FAST))
    gen = compute_stats(str(sets[1]), ScoreOptions(**FAST), set_name="generated")
    expected = kid(real.feature_rows(), gen.feature_rows(), 100, 1000, seed=0)
    assert report.kid == expected and report.kid.subset_size == 6
    assert report.fid_infinity is None  # 7 and 6 images: no subset size reaches 10 rows
    assert report.feature_rows.capped is False and report.feature_rows.generated.kept == 6


def test_the_feature_row_cap_applies_and_the_report_says_so(sets):
    r = score(str(sets[0]), str(sets[1]), ScoreOptions(**FAST, max_feature_rows=4))
    assert r.feature_rows.capped and (r.feature_rows.real.kept, r.feature_rows.generated.kept) == (4, 4)
    assert r.kid.subset_size == 4
    assert any("4 of 6 generated and 4 of 7 real images" in w for w in r.headline.warnings)


def test_a_sharded_set_merges_to_the_whole_sets_rows_and_domain_inputs():
    from trustfid import extract, open_job

    x = np.stack(realimages.crops(realimages.NATURAL, 9, size=64, seed=8))
    opts = open_job(ScoreOptions(passes=2, bootstrap_resamples=0, max_feature_rows=5, batch_size=4))
    whole = extract(x, "real", opts)
    merged = extract(x[:4], "real", opts).merge(extract(x[4:], "real", opts, first_index=4))
    assert np.array_equal(merged.rows.index(), whole.rows.index()) and len(whole.rows) == 5
    assert np.allclose(merged.feature_rows(), whole.feature_rows(), rtol=0, atol=1e-5)
    assert np.allclose(merged.per_image["domain_inputs"], whole.per_image["domain_inputs"], rtol=1e-5)


def test_domain_hooks_are_removed_after_extraction(sets):
    from trustfid.inception import ConvBN
    from trustfid.job import network

    inspect(str(sets[1]), ScoreOptions(**FAST))
    net, _, _ = network(ScoreOptions(**FAST))
    assert not any(m.conv._forward_hooks for m in net.modules() if isinstance(m, ConvBN))


def test_inspect_gives_every_image_a_domain_score(sets):
    r = inspect(str(sets[1]), ScoreOptions(**FAST))
    scores = [i.domain_score for i in r.images]
    assert all(isinstance(s, float) for s in scores)
    assert r.domain.images == 6 and r.domain.median == pytest.approx(float(np.median(scores)))
    assert r.domain.most_atypical[0].domain_score == max(scores)


# --- schema 1.9: where the time goes (issue 27) ----------------------------------------------------

MAIN_THREAD = ("listing_s", "decode_wait_s", "network_s", "mc_s", "probe_s", "collect_s")


def test_timing_splits_the_job_into_its_stages(report):
    t = report.timing
    assert t.total_s == pytest.approx(t.load_s + t.extract_s + t.frechet_s)  # the fields of before keep their meaning
    assert t.startup_s is None  # a library call: the process's start is not the job's
    assert t.network_load_s is not None and 0 < t.network_load_s <= t.load_s
    assert {k: s.images for k, s in t.sets.items()} == {"real": 7, "generated": 6}
    for s in t.sets.values():
        assert s.network_s > 0 and s.mc_s > 0 and s.probe_s > 0 and s.listing_s > 0 and s.decode_s > 0
        assert s.decoder_listing_s == 0 and s.radiomics_s == 0  # the prefetch thread; no FRD
    # the main thread's stages follow one another within the job
    assert sum(getattr(s, k) for s in t.sets.values() for k in MAIN_THREAD) <= t.load_s + t.extract_s
    assert list(t.metrics) == ["fid", "kid", "frd", "prdc", "memorization"]  # every metric that ran, in order
    assert sum(t.metrics.values()) <= t.frechet_s
    assert t.frechet_plain_s + t.frechet_mc_s + t.bootstrap_s + t.domain_check_s <= t.metrics["fid"]
    assert t.report_s is not None and t.report_s + sum(t.metrics.values()) <= t.frechet_s


def test_a_side_given_as_statistics_has_its_reading_as_its_listing(sets, report, tmp_path):
    path = tmp_path / "real.npz"
    compute_stats(str(sets[0]), ScoreOptions(**FAST)).save(path)
    t = score(str(path), str(sets[1]), ScoreOptions(**FAST)).timing
    assert t.sets["real"].images == 7 and t.sets["real"].listing_s > 0
    assert t.sets["real"].network_s == 0 and t.sets["real"].decode_s is None  # nothing decoded for it
    assert t.sets["generated"].network_s > 0
