"""The parallel input pipeline (loader.py): N decode processes give the statistics of one process,
image for image, whatever the source's kind, with skips, limits and intensity tallies unchanged."""

import zipfile

import numpy as np
import pytest

from tests.support.images import write_images
from trustfid.errors import InputError, TooLargeError
from trustfid.job import open_job
from trustfid.pipeline import extract
from trustfid.settings import EngineSettings

pytestmark = pytest.mark.engine

FAST = {"passes": 2, "batch_size": 3, "device": "cpu", "seed": 5, "mask_mode": "per_image", "max_feature_rows": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = write_images(tmp_path_factory.mktemp("loader") / "set", 7, seed=3)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # skipped, with its reason
    return d


def _stats(source, workers, **kw):
    return extract(source, "real", open_job({**FAST, **kw}, settings=EngineSettings(decode_workers=workers)))


def _same(a, b):
    assert a.names == b.names and a.skipped == b.skipped and a.intensity == b.intensity
    assert np.array_equal(a.plain.gaussian().mu, b.plain.gaussian().mu)
    assert np.array_equal(a.plain.gaussian().covariance(), b.plain.gaussian().covariance())
    for m1, m2 in zip(a.mc, b.mc):
        assert np.array_equal(m1.gaussian().mu, m2.gaussian().mu)
    assert np.array_equal(a.latent_variance, b.latent_variance)
    assert np.array_equal(a.per_image["domain_inputs"], b.per_image["domain_inputs"])


def test_three_processes_equal_one_thread_on_a_folder_and_a_zip(folder, tmp_path):
    one = _stats(folder, 0)
    assert one.n == 7 and [s.name for s in one.skipped] == ["broken.png"]
    _same(_stats(folder, 3), one)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, p.name)
    _same(_stats(archive, 2), _stats(archive, 0))


def test_processes_read_one_shard_of_a_set_as_one_thread_does(folder):
    from trustfid.inputs import SetShard

    shard = SetShard(folder, 2, 6)
    one = extract(shard, "real", open_job(FAST, settings=EngineSettings(decode_workers=0)), first_index=2, min_images=0)
    assert one.n == 4
    _same(extract(shard, "real", open_job(FAST, settings=EngineSettings(decode_workers=2)), first_index=2, min_images=0),
          one)


def test_a_set_abandoned_part_way_leaves_the_processes_ready_for_the_next(folder):
    from trustfid.inputs import open_images
    from trustfid.loader import ParallelLoader, pool
    from trustfid.preprocess import TF_RANGE

    procs = pool(2).procs
    batches = iter(ParallelLoader(open_images(folder), folder, {}, 2, 1, ("clean", (299, 299), TF_RANGE)))
    next(batches)
    batches.close()  # e.g. a cancel after the first batch: its queued images are dropped
    _same(_stats(folder, 2), _stats(folder, 0))
    assert pool(2).procs == procs  # the same processes served both sets


def test_errors_from_a_decode_process_reach_the_caller_as_the_same_error(folder):
    with pytest.raises(InputError, match="broken.png"):  # strict: the skip is an error
        _stats(folder, 2, strict=True)
    settings = EngineSettings(decode_workers=2, max_pixels=100)  # every 64x64 image is too large
    with pytest.raises(TooLargeError) as e:
        extract(folder, "real", open_job(FAST, settings=settings))
    assert e.value.code == "too_large" and "pixels" in e.value.message


def test_the_decode_processes_report_their_own_seconds(folder):
    from trustfid.timing import recording

    with recording() as clock:
        _stats(folder, 2)
    s = clock.sets["real"]
    # each process lists the set for itself and decodes its share; the main thread waited for them
    assert s["decoder_listing_s"] > 0 and s["decode_s"] > 0 and s["decode_wait_s"] > 0
    assert s["network_s"] > 0 and s["radiomics_s"] == 0
