"""The extractor seam: a user's own network scored like the FID Inception — plain FID by hand, MC
dropout at its declared stages, its name and weights in the report, its statistics kept apart."""

from collections import OrderedDict

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn

from tests.support import realimages
from tests.support.engine import tiny_network
from trustfid import Extractor, Metric, compute_stats, load_stats, register_extractor, score
from trustfid.errors import IncompatibleStatsError, InputError
from trustfid.mc import MCDropout
from trustfid.registry import _REGISTRY, extractor_names, get_extractor
from trustfid.schemas import DEFAULT_EXTRACTOR, ScoreOptions

pytestmark = pytest.mark.engine

SIZE = (32, 32)
FAST = {"bootstrap_resamples": 0, "device": "cpu"}


def tiny(**kw) -> Extractor:
    return Extractor(tiny_network(), name="tiny", input_size=SIZE, **kw)


@pytest.fixture(scope="module")
def sets():
    """20 crops per set (more images than the 8 feature dimensions: full-rank covariances)."""
    return (np.stack(realimages.crops(realimages.NATURAL, 20, size=48, seed=21)),
            np.stack(realimages.crops(realimages.MEDICAL, 20, size=48, seed=22)))


def _by_hand(module: nn.Module, images: np.ndarray) -> np.ndarray:
    """clean-fid's resize with PIL itself, [0, 1] input, the module's own outputs averaged over space."""
    x = np.stack([[np.asarray(Image.fromarray(im[..., c].astype(np.float32)).resize(SIZE[::-1], Image.BICUBIC))
                   for c in range(3)] for im in images]).clip(0, 255) / 255
    with torch.no_grad():
        return module(torch.from_numpy(x).float()).mean(dim=(2, 3)).double().numpy()


def test_plain_fid_equals_a_hand_computation_on_the_modules_own_features(sets):
    """scipy's sqrtm Fréchet distance on the module's outputs: equal within 1e-6 relative (measured
    1e-7: the hand computation scales to [0, 1] in float64, the engine in float32)."""
    module = tiny_network()
    f1, f2 = _by_hand(module, sets[0]), _by_hand(module, sets[1])
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    diff = f1.mean(0) - f2.mean(0)
    expected = diff @ diff + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = score(sets[0], sets[1], {**FAST, "passes": 0}, extractor=tiny())
    assert expected > 0.01
    assert got.fid == pytest.approx(expected, rel=1e-6)


def test_mc_dropout_at_a_declared_stage_changes_the_passes(sets):
    ex = tiny()
    r = score(sets[0], sets[1], {**FAST, "passes": 3, "dropout_at": ["b2"], "dropout_rate": 0.3}, extractor=ex)
    assert len(set(r.fid_mc.samples)) == 3 and r.fid not in r.fid_mc.samples
    assert r.latent_variance.real.mean > 0 and r.config.dropout_at == ["b2"]
    model = MCDropout(ex, ex.options_for(ScoreOptions(extractor="tiny", dropout_at=["b3", "b2"])), torch.device("cpu"))
    assert model.points == [1, 2] and model.split == 2  # trunk = b1, b2; tail = b3 and the head
    # left unset, dropout_at is the extractor's default (its last stage unless it declares one)
    assert ex.options_for(ScoreOptions(extractor="tiny")).dropout_at == ["b3"]
    assert tiny(default_dropout_at=["b1"]).options_for(ScoreOptions(extractor="tiny")).dropout_at == ["b1"]


def test_the_report_names_the_extractor_and_its_weights(sets):
    r = score(sets[0][:4], sets[1][:4], {**FAST, "passes": 2}, extractor=tiny())
    assert r.model.extractor == r.config.extractor == "tiny"
    assert r.model.name == "tiny (8-d)" and r.model.feature_dim == 8 and r.model.input_size == SIZE
    assert len(r.model.weights_sha256) == 64 and r.model.weights_source == "in-process module"
    assert "32x32" in r.preprocessing and "[0, 1]" in r.preprocessing
    other = Extractor(tiny_network(seed=1), name="tiny", input_size=SIZE)
    assert other.weights_sha256 != tiny().weights_sha256 == tiny().weights_sha256  # the numbers decide


def test_statistics_of_different_extractors_never_combine(sets, tmp_path):
    mine = compute_stats(sets[0][:4], {**FAST, "passes": 2}, extractor=tiny())
    inception = compute_stats(sets[0][:2], {**FAST, "passes": 2})
    assert mine.provenance["extractor"] == "tiny" and inception.provenance["extractor"] == DEFAULT_EXTRACTOR
    with pytest.raises(IncompatibleStatsError, match="extractor: 'tiny' vs 'inception"):
        mine.merge(inception)
    mine.save(tmp_path / "tiny.npz")
    inception.save(tmp_path / "inception.npz")
    assert load_stats(tmp_path / "tiny.npz").provenance == mine.provenance
    with pytest.raises(IncompatibleStatsError, match="weights_sha256"):
        score(str(tmp_path / "tiny.npz"), str(tmp_path / "inception.npz"), {**FAST, "passes": 2})
    with pytest.raises(IncompatibleStatsError, match="extractor"):
        score(str(tmp_path / "inception.npz"), str(tmp_path / "tiny.npz"), {**FAST, "passes": 2}, extractor=tiny())


def test_dropout_at_is_checked_against_the_extractors_own_stages():
    with pytest.raises(InputError, match=r"Mixed_7a.*'tiny'.*\['b1', 'b2', 'b3'\]"):
        Metric({"dropout_at": ["Mixed_7a"]}, extractor=tiny())
    with pytest.raises(InputError, match=r"choose from \['b2'\]"):
        Metric({"dropout_at": ["b1"]}, extractor=tiny(dropout_stages=["b2"]))
    with pytest.raises(InputError, match="options name the extractor 'other'"):
        tiny().options_for(ScoreOptions(extractor="other", dropout_at=["b2"]))
    with pytest.raises(ValidationError, match="unknown block"):  # the default extractor: checked at once
        ScoreOptions(dropout_at=["b2"])


def test_a_module_and_the_names_of_its_stages():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            inner = tiny_network()
            self.first, self.second, self.unused = inner.b1, inner.b2, nn.Linear(3, 3)

        def forward(self, x):  # not used by the extractor
            raise AssertionError

    ex = Extractor.from_module(Net(), ["first", "second"], input_size=SIZE)
    assert ex.name == "Net" and ex.stage_names == ("first", "second") and ex.feature_dim == 10
    with pytest.raises(InputError, match=r"no child module\(s\) \['third'\].*'first', 'second', 'unused'"):
        Extractor.from_module(Net(), ["first", "third"])
    with pytest.raises(InputError, match="from_module"):
        score(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8), FAST, extractor=Net())


def test_the_registry_finds_extractors_by_name(sets):
    assert extractor_names()[0] == DEFAULT_EXTRACTOR
    net = get_extractor(DEFAULT_EXTRACTOR)
    assert net.feature_dim == 2048 and net.input_size == (299, 299) and net.stage_names[-1] == "Mixed_7c"
    with pytest.raises(InputError, match=f"unknown extractor 'nope'; registered: \\['{DEFAULT_EXTRACTOR}'"):
        get_extractor("nope")
    register_extractor("tiny-registered", lambda device, settings: Extractor(
        tiny_network(), name="tiny-registered", input_size=SIZE).to(device))
    try:
        r = score(sets[0][:3], sets[1][:3], ScoreOptions(extractor="tiny-registered", dropout_at=["b2"], passes=2,
                                                         **FAST))
        assert r.model.extractor == "tiny-registered" and r.model.feature_dim == 8
    finally:
        del _REGISTRY["tiny-registered"]


def test_metric_with_its_own_network_equals_score(sets, tmp_path):
    options = {**FAST, "passes": 3, "dropout_at": ["b1", "b3"], "mask_mode": "per_image", "bootstrap_resamples": 5}
    expected = score(sets[0], sets[1], options, extractor=tiny())
    metric = Metric(options, extractor=tiny())
    for i, n in enumerate([3, 1, 5, 2, 9]):
        start = sum([3, 1, 5, 2, 9][:i])
        metric.update(torch.from_numpy(sets[0][start:start + n]), real=True)
        metric.update(sets[1][start:start + n], real=False)
    got = metric.compute()
    assert got.fid == pytest.approx(expected.fid, rel=1e-6)
    assert got.fid_mc.samples == pytest.approx(expected.fid_mc.samples, rel=1e-6)
    assert got.latent_variance.generated.mean == pytest.approx(expected.latent_variance.generated.mean, rel=1e-5)
    metric.stats(real=True).save(tmp_path / "real.npz")  # a reference for later scores
    again = score(str(tmp_path / "real.npz"), sets[1], options, extractor=tiny())
    assert again.fid == pytest.approx(expected.fid, rel=1e-6)


def test_the_network_runs_in_eval_mode_and_gets_its_mode_back(sets):
    """A network with its own dropout, left in training mode by a training loop: deterministic
    features, and it is in training mode again afterwards."""
    net = nn.Sequential(OrderedDict(b1=tiny_network().b1, drop=nn.Dropout(0.5), b2=tiny_network().b2)).train()
    ex = Extractor(net, name="with-dropout", input_size=SIZE)
    a = score(sets[0][:3], sets[1][:3], {**FAST, "passes": 0}, extractor=ex)
    b = score(sets[0][:3], sets[1][:3], {**FAST, "passes": 0}, extractor=ex)
    assert a.fid == b.fid and net.training and net.drop.training
