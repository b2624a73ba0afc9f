"""Fixed intensity windows for wide-range images (16-bit PNG/TIFF, DICOM): one stored value gives one
network input in every image, as radiology compares images, instead of each image's own min..max
stretch; and the report says which mapping each set went through."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.support import ROOT
from trustfid import score
from trustfid.inputs import open_images
from trustfid.schemas import ScoreOptions

pytestmark = pytest.mark.engine

OPTS = {"passes": 0, "bootstrap_resamples": 0, "device": "cpu"}


def _png16(path, lo: int, hi: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(lo, hi + 1, size=(40, 40)).astype(np.uint16)
    x[0, 0], x[0, 1], x[0, 2] = lo, hi, 1500  # the range's ends, and one value both images hold
    Image.fromarray(x).save(path)


@pytest.fixture
def scans(tmp_path):
    """Two 12-bit 'scans' of different ranges, both holding the stored value 1500 at pixel (0, 2)."""
    d = tmp_path / "scans"
    d.mkdir()
    _png16(d / "a.png", 1000, 2000, 1)
    _png16(d / "b.png", 1000, 4000, 2)
    return d


def test_a_window_maps_one_stored_value_to_one_input_in_every_image(scans):
    stretched = dict(open_images(scans))
    assert stretched["a.png"][0, 2, 0] != stretched["b.png"][0, 2, 0]  # the per-image stretch: 127.5 vs 42.5
    s = open_images(scans, window=(0, 4095))
    windowed = dict(s)
    expected = np.float32(1500 * 255 / 4095)
    assert windowed["a.png"][0, 2, 0] == windowed["b.png"][0, 2, 0] == pytest.approx(expected, rel=1e-6)
    assert s.intensity == {"fixed window [0, 4095] to 0..255, clipped": 2}
    clipped = dict(open_images(scans, window=(1200, 1800)))
    assert clipped["b.png"][0, 1, 0] == 255 and clipped["a.png"][0, 0, 0] == 0  # outside the window: clipped


def test_a_dicom_window_reads_modality_values_instead_of_the_files_own_display(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    s = open_images(src, window=(-160, 240))  # a soft-tissue window in Hounsfield units
    [(_, image)] = list(s)
    expected = np.clip((hu + 160) * 255 / 400, 0, 255).astype(np.float32)
    assert np.allclose(image[..., 0], expected, atol=1e-4)
    assert list(s.intensity) == ["fixed window [-160, 240] to 0..255, clipped"]


def test_the_report_says_which_mapping_each_set_used_and_the_window_changes_the_statistics(scans, image_sets):
    plain = score(image_sets["real"], scans, OPTS)
    assert plain.intensity == {"real": {"8-bit: as stored": 4},
                               "generated": {"wider than 8 bits: each image's own min..max to 0..255": 2}}
    (finding,) = [f for f in plain.trust.findings if f.startswith("intensities were mapped")]
    assert finding.startswith("intensities were mapped to 0..255 differently: the real set was read as 'values as "
                              "given (8-bit, or float in [0, 1])' (4 images) and the generated set as 'wider than 8 "
                              "bits: each image's own min..max to 0..255' (2 images)") and "--window" in finding
    windowed = score(image_sets["real"], scans, {**OPTS, "window": [0, 4095]})
    assert windowed.intensity["generated"] == {"fixed window [0, 4095] to 0..255, clipped": 2}
    assert windowed.intensity["real"] == {"8-bit: as stored": 4}  # 8-bit data is never windowed
    assert windowed.fid != pytest.approx(plain.fid, rel=1e-3)
    assert windowed.config.window == (0, 4095)


def test_sets_read_alike_raise_no_intensity_finding_and_a_mixed_set_does():
    from trustfid.report import intensity_finding

    as_given = {"8-bit: as stored": 3, "float in [0, 1]: times 255": 2}  # uint8 and float arrays: values as given
    assert intensity_finding(as_given, {"8-bit: as stored": 5}) is None
    assert intensity_finding({"DICOM: the file's VOI LUT or window": 4}, {"DICOM: the file's VOI LUT or window": 2}) is None
    mixed = intensity_finding({"8-bit: as stored": 9, "wider than 8 bits: each image's own min..max to 0..255": 1},
                              {"8-bit: as stored": 10})
    assert "the real set mixes 'values as given (8-bit, or float in [0, 1])' (9 images) and 'wider than 8 bits: " \
           "each image's own min..max to 0..255' (1 image)" in mixed


def test_statistics_remember_their_window(scans, tmp_path):
    from trustfid import compute_stats, load_stats
    from trustfid.errors import IncompatibleStatsError

    compute_stats(scans, {**OPTS, "window": [0, 4095]}).save(tmp_path / "ref.npz")
    assert load_stats(tmp_path / "ref.npz").provenance["window"] == [0, 4095]
    with pytest.raises(IncompatibleStatsError, match="window"):
        score(tmp_path / "ref.npz", scans, OPTS)  # scored without the window: refused, not mixed


def test_bad_windows_are_clear_errors(scans):
    with pytest.raises(ValueError, match="LOW < HIGH"):
        ScoreOptions(window=(100, 100))
    r = subprocess.run([sys.executable, "-m", "app.cli", "score", str(scans), str(scans), "--window", "0-4095"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "LOW,HIGH" in r.stderr


def test_the_cli_scores_with_a_window_and_a_saved_reference_keeps_it(scans, tmp_path):
    ref = tmp_path / "ref.npz"
    common = ["--passes", "0", "--bootstrap", "0", "--device", "cpu", "-q"]
    r = subprocess.run([sys.executable, "-m", "app.cli", "stats", str(scans), "-o", str(ref), "--window", "0,4095",
                        *common], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "app.cli", "score", str(ref), str(scans), "--json", str(out), *common],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["config"]["window"] == [0, 4095]  # taken from the saved statistics
    assert report["intensity"]["generated"] == {"fixed window [0, 4095] to 0..255, clipped": 2}
