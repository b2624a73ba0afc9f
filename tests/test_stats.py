"""Streaming statistics: batch-size independence, exact shard merges, pickle-free .npz."""

import json

import numpy as np
import pytest

from trustfid.errors import IncompatibleStatsError, InputError
from trustfid.frechet import frechet_distance
from trustfid.schemas import ScoreOptions, SkippedFile
from trustfid.stats import CHUNK, Moments, SetStats, check_compatible, load_stats, provenance


def _rows(n, d=16, seed=0, offset=0.0):
    return (np.random.default_rng(seed).normal(size=(n, d)) * 3 + offset).astype(np.float32)


def _feed(rows, batch, keep_rows=False):
    m = Moments(rows.shape[1], keep_rows=keep_rows)
    for i in range(0, len(rows), batch):
        m.add(rows[i:i + batch])
    return m


@pytest.mark.parametrize("n", [10, 16, 17, CHUNK * 3 + 5])
def test_mean_and_covariance_match_numpy_and_do_not_depend_on_batch_size(n):
    x = _rows(n)
    g1, g7, gall = (_feed(x, b).gaussian() for b in (1, 7, n))
    for g in (g7, gall):
        assert np.array_equal(g.mu, g1.mu) and np.array_equal(g.covariance(), g1.covariance())
    assert np.allclose(g1.mu, x.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    assert np.allclose(g1.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12, atol=1e-12)


def test_small_sets_keep_rows_large_sets_keep_a_matrix():
    assert _feed(_rows(16), 4).gaussian().rows is not None  # n <= d: rank-(n-1) factor
    big = _feed(_rows(CHUNK * 2), 50).gaussian()
    assert big.rows is None and big.sigma is not None


def test_float64_accumulation_survives_a_large_offset():
    """float32 sums drift with many images far from zero; ours stay exact to ~1e-9."""
    x = _rows(CHUNK * 4, offset=1e4)
    g = _feed(x, 100).gaussian()
    assert np.allclose(g.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("na,nb", [(5, 7), (300, 600), (10, 900)])
def test_shards_merge_exactly(na, nb):
    x = _rows(na + nb, seed=4)
    whole = _feed(x, 64).gaussian()
    merged = _feed(x[:na], 64).merge(_feed(x[na:], 64)).gaussian()
    assert merged.n == whole.n
    assert np.allclose(merged.mu, whole.mu, rtol=0, atol=1e-12)
    assert np.allclose(merged.covariance(), whole.covariance(), rtol=1e-10, atol=1e-12)


def _setstats(n, seed, passes=3, options=None):
    options = options or ScoreOptions(passes=passes)
    x = _rows(n, d=2048, seed=seed)
    return SetStats(plain=_feed(x, 32, keep_rows=True),
                    mc=[_feed(x + 0.01 * t, 32) for t in range(passes)],
                    names=[f"img{i}.png" for i in range(n)],
                    latent_variance=np.linspace(0, 1, n),
                    skipped=[SkippedFile(name="bad.png", reason="cannot identify image file")],
                    provenance=provenance("abc", options), source="test")


def test_npz_roundtrip_keeps_everything_and_pytorch_fid_can_read_it(tmp_path):
    s = _setstats(40, seed=1)
    path = tmp_path / "ref.npz"
    s.save(path)
    with np.load(path, allow_pickle=False) as z:  # what pytorch-fid / clean-fid do with our file
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048)
        assert np.allclose(z["mu"], s.plain.gaussian().mu)
    back = load_stats(path)
    assert back.n == 40 and back.names == s.names and back.provenance == s.provenance
    assert back.skipped == s.skipped and len(back.mc) == 3
    other = _setstats(30, seed=2)
    for t in range(3):
        assert frechet_distance(back.mc[t].gaussian(), other.mc[t].gaussian()) == pytest.approx(
            frechet_distance(s.mc[t].gaussian(), other.mc[t].gaussian()), rel=1e-12)


def test_pytorch_fid_statistics_are_read(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8))
    np.savez(tmp_path / "theirs.npz", mu=np.ones(8), sigma=a @ a.T)
    s = load_stats(tmp_path / "theirs.npz")
    assert s.provenance is None and s.mc == []
    assert np.allclose(s.plain.gaussian().covariance(), a @ a.T)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    import zipfile
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as z:
        z.write(tmp_path / "x.npy", "mu.npy")
        z.write(tmp_path / "x.npy", "sigma.npy")
    with pytest.raises(InputError):
        load_stats(tmp_path / "evil.npz")


def test_npz_without_mu_sigma_names_the_keys(tmp_path):
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(InputError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "x.npz")


def test_incompatible_provenances_name_the_difference():
    a = provenance("abc", ScoreOptions(seed=1))
    b = provenance("abc", ScoreOptions(seed=2, resize="legacy_pytorch"))
    with pytest.raises(IncompatibleStatsError) as e:
        check_compatible(a, b)
    assert "seed: 1 vs 2" in e.value.message and "resize" in e.value.message
    with pytest.raises(IncompatibleStatsError):
        _setstats(10, 1).merge(_setstats(10, 2, options=ScoreOptions(passes=3, dropout_rate=0.5)))


def test_setstats_shards_merge():
    a, b = _setstats(20, 1), _setstats(25, 2)
    m = a.merge(b)
    assert m.n == 45 and m.names == a.names + b.names and len(m.latent_variance) == 45
    json.dumps(m.provenance)


def test_a_small_feature_dimension_saves_and_loads(tmp_path):
    """d < n < CHUNK (a custom extractor's few dimensions): the rows are what is kept and saved."""
    s = SetStats(plain=_feed(_rows(40), 8, keep_rows=True), mc=[_feed(_rows(40, seed=t), 8) for t in range(2)],
                 names=[f"{i}" for i in range(40)], latent_variance=np.zeros(40),
                 provenance=provenance("abc", ScoreOptions(passes=2)))
    s.save(tmp_path / "small.npz")
    back = load_stats(tmp_path / "small.npz")
    for a, b in zip([s.plain, *s.mc], [back.plain, *back.mc]):
        assert np.allclose(a.gaussian().covariance(), b.gaussian().covariance(), rtol=1e-12, atol=0)


def test_format_1_files_with_a_fingerprint_key_are_still_read(tmp_path):
    """Statistics saved before the extractor seam: key 'fingerprint', no extractor (always the FID
    Inception's). They load as today's and combine with statistics made now."""
    s = _setstats(12, seed=3)
    s.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    old = json.loads(str(arrays.pop("provenance")))
    old.pop("extractor")
    arrays.update(format=np.array("trustfid-stats-1"), fingerprint=np.array(json.dumps({**old, "format": "trustfid-stats-1"})))
    np.savez(tmp_path / "old.npz", **arrays)
    back = load_stats(tmp_path / "old.npz")
    assert back.provenance == s.provenance
    back.merge(s)  # compatible


def test_kept_rows_and_per_image_arrays_survive_the_npz_and_a_cap_never_fakes_the_covariance(tmp_path):
    from trustfid.rows import KeptRows

    s = _setstats(40, seed=1)
    s.rows = KeptRows(2048, 16, seed=3)
    s.rows.add(_rows(40, d=2048, seed=1), 0)
    s.per_image["domain_inputs"] = np.arange(40 * 21, dtype=np.float64).reshape(40, 21)
    s.save(tmp_path / "capped.npz")
    back = load_stats(tmp_path / "capped.npz")
    assert np.array_equal(back.rows.index(), s.rows.index()) and np.array_equal(back.feature_rows(), s.feature_rows())
    assert back.rows.capped and back.rows.seen == 40
    assert np.array_equal(back.per_image["domain_inputs"], s.per_image["domain_inputs"])
    # 16 kept rows of 40 images are a sample, not the covariance's factor: mu/sigma come from the file
    g, g0 = back.plain.gaussian(), s.plain.gaussian()
    assert back.n == 40 and np.allclose(g.covariance(), g0.covariance(), rtol=1e-10, atol=1e-12)


def test_shards_past_a_chunk_and_the_dimension_merge_through_their_npz_as_one_pass(tmp_path):
    """Shards with more rows than dimensions are saved as mean and covariance (not rows) and merged with
    Chan's formula: the merged statistics equal one pass over all rows within round-off (the sharded
    job's 1e-9 guarantee for sets past 2048 images rests on this)."""
    n, size, d = 3 * CHUNK + 40, CHUNK + 60, 16
    plain, mc = _rows(n, d, seed=1, offset=3.0), [_rows(n, d, seed=10 + t) for t in range(3)]

    def stats(a, b):
        return SetStats(plain=_feed(plain[a:b], 64), mc=[_feed(x[a:b], 64) for x in mc],
                        names=[str(i) for i in range(a, b)], latent_variance=np.arange(a, b, dtype=np.float64),
                        provenance=provenance("abc", ScoreOptions(passes=3)))

    whole, merged = stats(0, n), None
    for k, a in enumerate(range(0, n, size)):
        b = min(a + size, n)
        stats(a, b).save(tmp_path / f"{k}.npz", thumbnails=True)
        part = load_stats(tmp_path / f"{k}.npz")
        assert (part.plain.gaussian().sigma is not None) == (b - a > d + CHUNK)  # mean and covariance, else rows
        merged = part if merged is None else merged.merge(part)
    assert merged.n == n and merged.names == whole.names
    assert np.array_equal(merged.latent_variance, whole.latent_variance)
    ref = _rows(n, d, seed=99)
    other = _feed(ref, 64).gaussian()
    for a, b in zip([merged.plain, *merged.mc], [whole.plain, *whole.mc]):
        assert frechet_distance(a.gaussian(), other) == pytest.approx(frechet_distance(b.gaussian(), other), rel=1e-9)


def test_shards_below_the_dimension_merge_through_their_npz_to_the_one_pass_report_numbers(tmp_path):
    """Issue 18's shape: 100 images in shards of 30 (the last of 10), every shard and the whole set below
    the 2048 dimensions, saved and loaded as a worker does. The merged statistics are the one-pass
    ones: the same rows, so the Fréchet step takes the same route (the cross-Gram matrix of the two
    row factors, never a covariance matrix) and fid and every fid_mc sample are identical."""
    from trustfid.report import fid_mc
    from trustfid.rows import KeptRows
    from trustfid.shards import plan

    n, d, passes = 100, 2048, 4
    options = ScoreOptions(passes=passes)

    def stats(x, a, b):  # as the pipeline builds a set's (or a shard's) statistics
        rows = KeptRows(d, options.max_feature_rows, options.seed)
        rows.add(x[0][a:b], a)
        return SetStats(plain=_feed(x[0][a:b], 32), mc=[_feed(m[a:b], 32) for m in x[1:]],
                        names=[str(i) for i in range(a, b)], latent_variance=np.arange(a, b, dtype=np.float64),
                        provenance=provenance("abc", options), rows=rows)

    sets = {side: [_rows(n, d, seed=10 * k + t, offset=k) for t in range(1 + passes)] for k, side in enumerate("rg")}
    whole, merged = {}, {}
    for side, x in sets.items():
        whole[side] = stats(x, 0, n)
        for k, (a, b) in enumerate(plan(n, 30)):
            stats(x, a, b).save(tmp_path / f"{side}{k}.npz", thumbnails=True)
            part = load_stats(tmp_path / f"{side}{k}.npz")
            merged[side] = part if side not in merged else merged[side].merge(part)
        for m, w in zip([merged[side].plain, *merged[side].mc], [whole[side].plain, *whole[side].mc]):
            gm, gw = m.gaussian(), w.gaussian()
            assert gm.sigma is None and gm.factor_rows() == gw.factor_rows() == n  # the rows route, both
            assert np.array_equal(gm.rows, gw.rows) and np.array_equal(gm.mu, gw.mu)
    assert [a.n for a in map(load_stats, sorted(tmp_path.glob("r*.npz")))] == [30, 30, 30, 10]

    fid = [frechet_distance(s["r"].plain.gaussian(), s["g"].plain.gaussian()) for s in (merged, whole)]
    mc = [fid_mc(s["r"], s["g"]).samples for s in (merged, whole)]
    assert fid[0] == pytest.approx(fid[1], rel=1e-9) and mc[0] == pytest.approx(mc[1], rel=1e-9)
    assert fid[0] == fid[1] and mc[0] == mc[1] and len(mc[0]) == passes  # below 2048 images: identical
