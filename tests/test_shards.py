"""Sharded extraction in the engine (no service): shards of a set, extracted on their own and saved
to .npz as a worker saves them, merge to the report one pass over the whole sets gives."""

import numpy as np
import pytest

from tests.support import realimages
from tests.support.engine import merge_set
from trustfid import extract
from trustfid.inputs import SetShard, open_images
from trustfid.job import open_job
from trustfid.pipeline import report_from_stats as build_report
from trustfid.schemas import ScoreOptions
from trustfid.shards import extract_shard, plan
from trustfid.stats import load_stats

pytestmark = pytest.mark.engine

# per-image masks and a feature-row cap below the set sizes: both depend on each image's index in its set
OPTIONS = dict(passes=2, bootstrap_resamples=5, top_k=3, batch_size=4, device="cpu", seed=7, mask_mode="per_image",
               max_feature_rows=4, dropout_at=["Mixed_7a"])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    real = realimages.write_folder(root / "real", realimages.crops(realimages.NATURAL, 6, size=64, seed=3))
    gen = realimages.write_folder(root / "gen", realimages.crops(realimages.MEDICAL, 5, size=64, seed=4))
    # an unreadable file in the first shard of the real set: the images after it move up one index
    (real / sorted(p.name for p in real.iterdir())[1].replace(".png", "b.png")).write_bytes(b"\x89PNG broken")
    return real, gen


def _numbers(report) -> dict:
    d = report.model_dump()
    d.pop("timing")
    return d


def test_shards_merge_to_the_unsharded_report(sets, tmp_path):
    job = open_job(ScoreOptions(**OPTIONS))
    one_pass = {name: extract(folder, name, job) for name, folder in zip(("real", "generated"), sets)}
    whole = build_report(one_pass["real"], one_pass["generated"], job, load_s=0, extract_s=1)
    merged = {}
    for set_name, folder in zip(("real", "generated"), sets):
        shards = plan(len(open_images(folder)), 3)
        assert len(shards) >= 2
        for k, (start, stop) in enumerate(shards):  # each shard on its own, through its .npz
            extract_shard(folder, set_name, job, start, stop).save(
                tmp_path / f"{set_name}-{k}.npz", thumbnails=True)
        merged[set_name] = merge_set(folder, set_name, job, shards,
                                     lambda k, s=set_name: load_stats(tmp_path / f"{s}-{k}.npz"))
    sharded = build_report(merged["real"], merged["generated"], job, load_s=0, extract_s=1)

    assert [s.name for s in sharded.counts.real.skipped] == [s.name for s in whole.counts.real.skipped] != []
    assert sharded.feature_rows.real.kept < sharded.feature_rows.real.used and len(merged["generated"].thumbnails) == 4
    assert sharded.fid == pytest.approx(whole.fid, rel=1e-9)
    assert sharded.fid_mc.samples == pytest.approx(whole.fid_mc.samples, rel=1e-9)
    for name in ("real", "generated"):
        assert np.array_equal(merged[name].latent_variance, one_pass[name].latent_variance)
        assert merged[name].names == one_pass[name].names
    assert _numbers(sharded) == _numbers(whole)  # the whole report, bar timing
    # its timing: the report's own stages; the sets were extracted in their shards
    assert sharded.timing.sets == {} and list(sharded.timing.metrics)[:2] == ["fid", "kid"]
    assert sharded.timing.frechet_plain_s is not None and sharded.timing.total_s > 0


def test_a_shard_reads_only_its_candidates_and_the_skipped_files_before_them(sets):
    real = sets[0]
    names = [n for n, _ in open_images(real)]
    parts = [[n for n, _ in open_images(SetShard(real, a, b))] for a, b in plan(len(open_images(real)), 3)]
    assert sum(parts, []) == names and all(len(p) <= 3 for p in parts)
    skipped = [open_images(SetShard(real, a, b)) for a, b in plan(len(open_images(real)), 3)]
    for s in skipped:
        list(s)
    assert [x.name for s in skipped for x in s.skipped] == [x.name for x in _skips(real)]


def _skips(folder):
    images = open_images(folder)
    list(images)
    return images.skipped


@pytest.mark.parametrize("kind", ["memory", "npy", "npz", "npz_compressed"])
def test_array_shards_read_their_rows_named_as_in_the_whole_array(kind, tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    source = {"memory": lambda: x, "npy": lambda: (np.save(tmp_path / "a.npy", x), tmp_path / "a.npy")[1],
              "npz": lambda: (np.savez(tmp_path / "a.npz", images=x), tmp_path / "a.npz")[1],
              "npz_compressed": lambda: (np.savez_compressed(tmp_path / "a.npz", images=x), tmp_path / "a.npz")[1]}[kind]()
    whole = list(open_images(source))
    parts = [list(open_images(SetShard(source, a, b))) for a, b in plan(7, 3)]
    assert [n for p in parts for n, _ in p] == [n for n, _ in whole]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip([i for p in parts for i in p], whole))
