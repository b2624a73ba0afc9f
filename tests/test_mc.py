"""MC dropout: the split network, masks that do not depend on batching, and what each mode means."""

import pytest
import torch

from tests.support.engine import network_inputs as _x
from tests.support.engine import our_net
from trustfid.mc import MCDropout
from trustfid.schemas import ScoreOptions

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return our_net(str(tmp_path_factory.mktemp("w")))


def _mc(net, **kw):
    return MCDropout(net, ScoreOptions(**kw), torch.device("cpu"))


def test_trunk_then_tail_without_dropout_is_the_whole_network(net):
    x = _x(3)
    model = _mc(net, passes=2, dropout_at=["Mixed_6e", "Mixed_7b"])
    with torch.inference_mode():
        assert torch.equal(model.tail(model.trunk(x), None), net(x.contiguous(memory_format=torch.channels_last)))


def test_passes_differ_from_each_other_and_from_the_plain_pass(net):
    plain, mc = _mc(net, passes=3, dropout_at=["Mixed_7a"]).features(_x(2))
    assert mc.shape == (3, 2, 2048)
    assert not torch.equal(mc[0], mc[1])
    assert (mc.mean(0) - plain).abs().mean() < (mc[0] - plain).abs().mean() * 3  # same scale as plain


@pytest.mark.parametrize("mask_mode", ["shared", "per_image"])
def test_features_are_bit_identical_whatever_the_batch_size(net, mask_mode):
    x = _x(5, seed=1)
    model = _mc(net, passes=2, dropout_at=["Mixed_7a", "Mixed_7b"], mask_mode=mask_mode, seed=7)
    plain5, mc5 = model.features(x, set_tag=1, first_index=0)
    parts = [model.features(x[i:i + 2], set_tag=1, first_index=i) for i in range(0, 5, 2)]
    assert torch.equal(plain5, torch.cat([p for p, _ in parts]))
    assert torch.equal(mc5, torch.cat([m for _, m in parts], dim=1))



def test_features_are_bit_identical_whatever_the_batch_size_with_one_thread_too(net):
    # With one thread torch sent a 1x1 convolution of fewer than 16 images another way than a larger
    # batch (numerics.py): a sharded job's last shard, in a batch of 10, differed from the unsharded job.
    x = torch.rand(16, 3, 96, 96, generator=torch.Generator().manual_seed(5)) * 1.99 - 1  # small: fast
    model = _mc(net, passes=2, dropout_at=["Mixed_7a"], seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plain16, mc16 = model.features(x)
        parts = [model.features(x[i:i + 5], first_index=i) for i in range(0, 16, 5)]  # 5, 5, 5, 1
        torch.set_num_threads(2)
        plain2, mc2 = model.features(x[:3])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(plain16, torch.cat([p for p, _ in parts]))
    assert torch.equal(mc16, torch.cat([m for _, m in parts], dim=1))
    assert torch.equal(plain2, plain16[:3]) and torch.equal(mc2, mc16[:, :3])

def test_shared_masks_make_pass_t_one_network_for_every_image(net):
    """The same image gets the same pass-t features in either set and at any position."""
    x = _x(2, seed=2)
    model = _mc(net, passes=2, dropout_at=["Mixed_7b"], mask_mode="shared")
    _, a = model.features(x, set_tag=0, first_index=0)
    _, b = model.features(x.flip(0), set_tag=1, first_index=100)
    assert torch.equal(a, b.flip(1))


def test_per_image_masks_differ_between_images(net):
    x = _x(1, seed=3).repeat(2, 1, 1, 1)  # the same image twice
    _, mc = _mc(net, passes=1, dropout_at=["Mixed_7b"], mask_mode="per_image").features(x)
    assert not torch.equal(mc[0, 0], mc[0, 1])


def test_seed_changes_the_sampled_networks(net):
    x = _x(1, seed=4)
    _, a = _mc(net, passes=1, dropout_at=["Mixed_7b"], seed=1).features(x)
    _, b = _mc(net, passes=1, dropout_at=["Mixed_7b"], seed=1).features(x)
    _, c = _mc(net, passes=1, dropout_at=["Mixed_7b"], seed=2).features(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_channel_dropout_zeroes_whole_feature_maps(net):
    model = _mc(net, passes=1, dropout_at=["Mixed_7c"], dropout_kind="channel", dropout_rate=0.5)
    h = torch.ones(1, 2048, 8, 8)
    mask = model._mask(0, net.stage_index("Mixed_7c"), h, 0, 0)
    assert mask.shape == (1, 2048, 1, 1)
    assert set(mask.unique().tolist()) == {0.0, 2.0}  # inverted dropout keeps the expectation


def test_channels_last_network_gives_the_same_features(net):
    """The pipeline runs the network in channels_last memory format (faster on CPU)."""
    import copy

    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = _x(3, seed=5)
    plain, _ = MCDropout(fast, ScoreOptions(passes=1), torch.device("cpu")).features(x)
    with torch.inference_mode():
        assert (plain - net(x)).abs().max().item() < 1e-4


@pytest.fixture()
def eager(monkeypatch):
    """Switch off the fused oneDNN convolution + ReLU (inception.ConvBN) for one test."""
    from trustfid import inception

    return lambda: monkeypatch.setattr(inception, "_FUSED", False)


def test_fused_convolutions_give_the_eager_features_to_the_bit(net, eager):
    """The engine's CPU path (channels_last, fused conv + ReLU on reordered weights) against the plain
    relu(conv(x)): the same oneDNN convolution, so the plain and the MC features are equal, for the
    deterministic pass and for dropout passes, whatever the batch (the weights are reordered for the
    first shape seen)."""
    import copy

    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = _x(5, seed=3)
    options = {"passes": 2, "dropout_at": ["Mixed_6e", "Mixed_7b"], "seed": 1}
    fused = _mc(fast, **options).features(x)
    fused_small = _mc(fast, **options).features(x[:2])
    assert all(m._packed is not None for m in fast.modules() if hasattr(m, "_packed"))  # the fused path ran
    eager()
    plain = _mc(fast, **options).features(x)
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
    assert torch.equal(fused_small[0], plain[0][:2]) and torch.equal(fused_small[1], plain[1][:, :2])


def test_a_hook_on_a_convolution_sees_every_call_with_the_fused_path(net):
    """domain.py hooks the convolutions: a hooked convolution takes the eager call, so the hook fires."""
    import copy

    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    seen = []
    conv = fast.stages.Mixed_7c.branch_pool.conv
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        plain, _ = _mc(fast, passes=0).features(_x(2))
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 192, 8, 8])]
    assert torch.equal(plain, _mc(fast, passes=0).features(_x(2))[0])
