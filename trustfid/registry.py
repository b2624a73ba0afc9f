"""The extractors by name: ``get_extractor(name)`` builds a registered extractor (extractor.py) on a
device. The FID Inception (inception.py, its weights from weights.py) is the first entry and the
default; ``register_extractor`` adds another network, so adding one touches one place.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from .errors import InputError
from .extractor import Extractor
from .inception import FIDInceptionV3
from .schemas import DEFAULT_EXTRACTOR
from .settings import get_engine_settings
from .weights import load_weights

Factory = Callable[[torch.device, object], Extractor]  # (device, EngineSettings) -> a loaded Extractor
_REGISTRY: dict[str, Factory] = {}


def register_extractor(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``get_extractor(name)`` (and ``ScoreOptions(extractor=name)``) build ``factory(device,
    settings)``. The factory should cache what it loads; the extractor's ``name`` must be ``name``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"an extractor named '{name}' is already registered")
    _REGISTRY[name] = factory


def extractor_names() -> list[str]:
    return list(_REGISTRY)


def get_extractor(name: str = DEFAULT_EXTRACTOR, device: torch.device | str = "cpu", settings=None) -> Extractor:
    if name not in _REGISTRY:
        raise InputError(f"unknown extractor '{name}'; registered: {extractor_names()}", code="bad_options")
    return _REGISTRY[name](torch.device(device), settings or get_engine_settings())


def as_extractor(extractor, device: torch.device | str = "cpu", settings=None) -> Extractor:
    """An Extractor from what a caller gave: None (the default), a registry name, an Extractor, or
    stages (a list / nn.Sequential / mapping of modules)."""
    if extractor is None or isinstance(extractor, str):
        return get_extractor(extractor or DEFAULT_EXTRACTOR, device, settings)
    if isinstance(extractor, Extractor):
        return extractor
    return Extractor(extractor, name="custom")


@lru_cache(maxsize=4)
def load_fid_inception(weights_path: str | None, cache_dir: str, device: str):
    """(FIDInceptionV3 on ``device``, Weights), loaded once per process (a worker keeps it between jobs)."""
    weights = load_weights(weights_path, cache_dir)
    # channels_last: ~1.7x faster convolutions on CPU (bench/RESULTS.md), same features within 1e-5
    net = FIDInceptionV3().load_canonical(weights.tensors).to(torch.device(device))
    net = net.to(memory_format=torch.channels_last).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.weights_sha256, net.weights_source = weights.sha256, Path(weights.source).name
    return net, weights


def _fid_inception(device: torch.device, settings) -> Extractor:
    return load_fid_inception(str(settings.weights) if settings.weights else None, str(settings.cache_dir),
                              str(device))[0]


register_extractor(DEFAULT_EXTRACTOR, _fid_inception)
