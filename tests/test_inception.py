"""Our FID InceptionV3 must give the features of the established implementations."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import realimages
from tests.support.engine import our_net, pytorch_fid_model, torchscript_net, weights
from trustfid.errors import InputError
from trustfid.inception import FIDInceptionV3
from trustfid.weights import FID_HELPER_SHA1, _sha1, fid_helper_archive, load_weights

pytestmark = pytest.mark.engine

TOL = 1e-4  # max abs difference of 2048-d features (values up to ~10); float32 conv order differs


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("weights-cache"))


def _tf_input(images):
    """uint8 HxWx3 -> TF range [-1, 1-1/128] at 299x299 (PIL bicubic on float, clean-fid style)."""
    out = []
    for im in images:
        chans = [np.asarray(Image.fromarray(im[..., c].astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
                 for c in range(3)]
        out.append(np.stack(chans).clip(0, 255) / 128.0 - 1.0)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def test_archive_is_the_published_one():
    assert _sha1(fid_helper_archive()) == FID_HELPER_SHA1


def test_features_equal_torchscript_on_random_inputs(cache):
    x = torch.rand(4, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * (2 - 1 / 128) - 1
    with torch.inference_mode():
        ours, ref = our_net(cache)(x), torchscript_net()(x)
    assert ours.shape == (4, 2048)
    assert (ours - ref).abs().max().item() < TOL
    assert ref.abs().max().item() > 0.5  # the comparison is not between two zero vectors


def test_features_equal_torchscript_on_real_images(cache):
    x = _tf_input(realimages.crops(realimages.NATURAL + realimages.MEDICAL, 6, size=160))
    with torch.inference_mode():
        ours, ref = our_net(cache)(x), torchscript_net()(x)
    assert (ours - ref).abs().max().item() < TOL


def test_weights_are_cached_as_safetensors_and_reused(tmp_path):
    first = load_weights(None, tmp_path)
    cached = list(tmp_path.glob("*.safetensors"))
    assert len(cached) == 1
    second = load_weights(None, tmp_path)
    assert second.sha256 == first.sha256
    cached[0].write_bytes(b"torn file")  # a broken cache is rebuilt, not trusted
    third = load_weights(None, tmp_path)
    assert third.sha256 == first.sha256


def test_pytorch_fid_weights_file_is_accepted_and_gives_the_same_network(tmp_path, cache):
    """TRUSTFID_WEIGHTS may name pytorch-fid's .pth: same tensors => same hash and features,
    and pytorch-fid's own classes with these weights agree with ours."""
    model, state = pytorch_fid_model(weights(cache).tensors)
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, pth)
    loaded = load_weights(pth, tmp_path / "c")
    assert loaded.sha256 == weights(cache).sha256

    import pytorch_fid.inception as pf
    from pytorch_fid.inception import InceptionV3

    orig = pf.fid_inception_v3
    pf.fid_inception_v3 = lambda: model
    try:
        ref_model = InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    finally:
        pf.fid_inception_v3 = orig
    x01 = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(2))
    net = FIDInceptionV3().load_canonical(loaded.tensors)
    with torch.inference_mode():
        ref = ref_model(x01)[0].flatten(1)
        ours = net(2 * x01 - 1)
    assert (ours - ref).abs().max().item() < TOL


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_weights(tmp_path / "nope.pth", tmp_path)


def test_foreign_state_dict_is_rejected_with_the_missing_tensor(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="missing"):
        load_weights(tmp_path / "other.pth", tmp_path)
